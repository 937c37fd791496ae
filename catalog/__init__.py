"""Catalog runner: one ComfyUI workflow over many images on several ComfyUI servers, on Ray.

Talks to ComfyUI over HTTP only and imports nothing of it; `python -m catalog --help`.
"""
