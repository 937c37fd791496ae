"""Control nodes (thin V3 wrappers)."""
from comfy_api.latest import io

CONTROL_NODES: list[type[io.ComfyNode]] = []
