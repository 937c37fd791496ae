"""Finding nodes (thin V3 wrappers)."""
from comfy_api.latest import io

FINDING_NODES: list[type[io.ComfyNode]] = []
