"""Training nodes (thin V3 wrappers): a local-control adapter trained with the mask in the loop."""
from __future__ import annotations

from comfy_api.latest import io

TRAINING_NODES: list[type[io.ComfyNode]] = []
