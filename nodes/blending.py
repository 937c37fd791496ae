"""Blending nodes (thin V3 wrappers)."""
from comfy_api.latest import io

BLENDING_NODES: list[type[io.ComfyNode]] = []
