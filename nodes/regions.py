"""Regional conditioning nodes (thin V3 wrappers): per-region prompts and per-instance control."""
from __future__ import annotations

from comfy_api.latest import io

REGION_NODES: list[type[io.ComfyNode]] = []
