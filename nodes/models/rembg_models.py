"""rembg sessions from models/rembg, without downloads and without touching the process environment.

Files are named after rembg's models (``u2netp.onnx``, ``isnet-general-use.onnx``, ..., the
convention other packs follow): the name picks rembg's session class, which knows the model's
pre- and post-processing. rembg would look for the file under ``U2NET_HOME`` and download it when
absent; instead the session is made from a subclass whose ``download_models`` returns the file
found here, so a missing model is a clear error, nothing is downloaded and ``os.environ`` is never
written. (rembg's ``u2net_custom`` session also takes a path, but it always preprocesses like
U^2-Net at 320 px: right for u2net/u2netp, wrong for isnet, birefnet, bria and others.)

rembg needs an onnxruntime build and its ``[cpu]`` extra would force the CPU one over a user's
onnxruntime-gpu/-directml/-rocm: the requirements leave the choice to the user and
``new_session`` checks that one is installed.
"""
from __future__ import annotations

import os

import numpy as np

import comfy.model_management

from ..ops.optional import require, require_onnxruntime
from . import ModelFileError, list_models, model_path

FEATURE = "Remove Background (rembg)"

REMBG_WHERE = (
    "rembg's model releases, https://github.com/danielgatis/rembg/releases/tag/v0.0.0 (u2net.onnx, u2netp.onnx, "
    "isnet-general-use.onnx, silueta.onnx, ...); keep the file name, rembg tells the models apart by it"
)


def known_models() -> list[str]:
    """Names of rembg's local (offline-capable) models: the file stems it accepts."""
    return sorted(name for name, cls in _session_classes().items()
                  if cls.is_local() and name != "sam" and not name.endswith("_custom"))


def _session_classes() -> dict:
    require_onnxruntime(FEATURE)  # rembg imports onnxruntime at import time
    require("rembg", FEATURE)
    from rembg.sessions import sessions

    return sessions


def _session_class_for_file(session_class: type, path: str) -> type:
    """``session_class`` reading its weights from ``path`` (never from rembg's download folder)."""
    return type(f"File{session_class.__name__}", (session_class,),
                {"download_models": classmethod(lambda cls, *args, **kwargs: path)})


def list_choices() -> list[str]:
    return [name for name in list_models("rembg") if name.endswith(".onnx")]


def new_session(filename: str):
    """A rembg session for ``models/rembg/<filename>`` (file name = rembg model name + .onnx)."""
    sessions = _session_classes()  # the packages first: without them the file is of no use
    path = model_path("rembg", filename, REMBG_WHERE)
    name = os.path.splitext(os.path.basename(filename))[0]
    known = known_models()
    if name not in known:
        raise ModelFileError(
            f"models/rembg/{filename}: rembg has no model named '{name}'. Name the file after its model "
            f"({', '.join(n + '.onnx' for n in known[:12])}, ...). Where to get them: {REMBG_WHERE}"
        )
    import onnxruntime

    options = {}
    if comfy.model_management.get_torch_device().type == "cpu":
        options["providers"] = ["CPUExecutionProvider"]
    session_class = _session_class_for_file(sessions[name], path)
    try:
        return session_class(name, onnxruntime.SessionOptions(), **options)
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
