"""Selective Control: regional control for ComfyUI (masks, masked control, regions, blending)."""
from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./js"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
