"""rembg sessions from models/rembg, without downloads and without lasting environment changes.

rembg picks its model by name and looks for ``<U2NET_HOME>/<name>.onnx`` (the convention
other packs follow). The file is checked here first, so a missing model is a clear error and
rembg never reaches its downloader; ``U2NET_HOME`` points at the file's folder only while the
session is created (``mock.patch.dict`` restores the environment afterwards).
"""
from __future__ import annotations

import os
from unittest import mock

import numpy as np

import comfy.model_management

from . import ModelFileError, list_models, model_path

REMBG_WHERE = (
    "rembg's model releases, https://github.com/danielgatis/rembg/releases/tag/v0.0.0 (u2net.onnx, u2netp.onnx, "
    "isnet-general-use.onnx, silueta.onnx, ...); keep the file name, rembg tells the models apart by it"
)


def known_models() -> list[str]:
    """Names of rembg's local (offline-capable) models: the file stems it accepts."""
    from rembg.sessions import sessions

    return sorted(name for name, cls in sessions.items() if cls.is_local() and name != "sam" and not name.endswith("_custom"))


def list_choices() -> list[str]:
    return [name for name in list_models("rembg") if name.endswith(".onnx")]


def new_session(filename: str):
    """A rembg session for ``models/rembg/<filename>`` (file name = rembg model name + .onnx)."""
    path = model_path("rembg", filename, REMBG_WHERE)
    name = os.path.splitext(os.path.basename(filename))[0]
    known = known_models()
    if name not in known:
        raise ModelFileError(
            f"models/rembg/{filename}: rembg has no model named '{name}'. Name the file after its model "
            f"({', '.join(n + '.onnx' for n in known[:12])}, ...). Where to get them: {REMBG_WHERE}"
        )
    from rembg import new_session as rembg_new_session

    options = {}
    if comfy.model_management.get_torch_device().type == "cpu":
        options["providers"] = ["CPUExecutionProvider"]
    try:
        with mock.patch.dict(os.environ, {"U2NET_HOME": os.path.dirname(path)}):
            return rembg_new_session(name, **options)
    except Exception as error:  # onnxruntime raises several types for unreadable models
        raise ModelFileError(
            f"Could not load rembg model {path} ({os.path.getsize(path)} bytes): {error}. The file is truncated "
            f"or corrupt; download it again. Where to get it: {REMBG_WHERE}"
        ) from error


def remove_background(
    session,
    pixels: np.ndarray,
    alpha_matting: bool = False,
    foreground_threshold: int = 240,
    background_threshold: int = 10,
    erode_size: int = 10,
    post_process: bool = False,
) -> np.ndarray:
    """Alpha ``[H,W]`` float 0..1 of the subject in an ``[H,W,3]`` uint8 RGB image."""
    from PIL import Image
    from rembg import remove

    cutout = remove(
        Image.fromarray(pixels),
        session=session,
        alpha_matting=alpha_matting,
        alpha_matting_foreground_threshold=foreground_threshold,
        alpha_matting_background_threshold=background_threshold,
        alpha_matting_erode_size=erode_size,
        post_process_mask=post_process,
    )
    alpha = np.asarray(cutout.convert("RGBA"))[..., 3]
    return alpha.astype(np.float32) / 255.0
