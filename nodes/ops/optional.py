"""The optional packages, imported where a node needs them, with the pip line that installs a missing one.

The pack loads and its mask, region, blending and evaluation nodes work with only ComfyUI's
own requirements (plus requirements.txt). The heavy or platform-specific packages below are
imported only inside the nodes that use them; when one is missing, the node fails with
``MissingPackageError`` naming the package and the command, and nothing else is affected.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# The pip line for each optional module (what a user pastes into ComfyUI's Python environment).
PIP = "python -m pip install"
INSTALL: dict[str, str] = {
    "cv2": f"{PIP} opencv-python-headless  (any OpenCV build you already have works: opencv-python, "
           "opencv-contrib-python, ...)",
    "mediapipe": f"{PIP} mediapipe",
    "controlnet_aux": f"{PIP} controlnet-aux",
    "rembg": f"{PIP} rembg  (plus one onnxruntime build, see below)",
    "onnxruntime": (
        f"{PIP} onnxruntime-gpu  (NVIDIA CUDA), or {PIP} onnxruntime-directml  (Windows DirectML), or "
        f"{PIP} onnxruntime-rocm  (AMD ROCm), or {PIP} onnxruntime-openvino  (Intel), or "
        f"{PIP} onnxruntime  (CPU only). Install one of them, not several: they share the module name"
    ),
}


class MissingPackageError(ImportError):
    """An optional package a node needs is not installed; the message says how to install it."""


def install_hint(module: str, feature: str) -> str:
    return (f"{feature} needs the Python package '{module}', which is not installed in ComfyUI's Python "
            f"environment. Install it with: {INSTALL[module]}. Then restart ComfyUI.")


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or a MissingPackageError naming the package and the pip line."""
    if importlib.util.find_spec(module) is None:
        raise MissingPackageError(install_hint(module, feature))
    return importlib.import_module(module)


def require_onnxruntime(feature: str) -> None:
    """Check that some onnxruntime build is importable; which one (CPU, CUDA, DirectML, ...) is the user's choice."""
    require("onnxruntime", feature)
