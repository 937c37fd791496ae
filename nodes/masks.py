"""Mask operation nodes (thin V3 wrappers over ops.masks)."""
from comfy_api.latest import io

MASK_NODES: list[type[io.ComfyNode]] = []
