"""Annotators (control image makers): which file each needs, where it lives, how to build and run it.

Weights live in ``models/annotators`` in the layout controlnet_aux / comfyui_controlnet_aux use
(``lllyasviel/Annotators/sk_model.pth``), so users can copy an existing ``ckpts`` folder; a
file placed directly in ``models/annotators`` is found too. The networks are controlnet_aux's
own classes, built here and filled with our ``weights_only`` loader: nothing is downloaded.
Loaded networks sit in a small ``ModelCache`` (ModelPatchers, so ComfyUI's memory manager can
offload them) and are reused by every later call.

Each annotator maps an RGB batch ``[B,H,W,3]`` (0..1) to a control image batch of the same
height and width (networks run at ``resolution`` rounded to what they need, then resized back).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import comfy.model_management

from ..ops import control as control_ops
from ..ops.optional import MissingPackageError, install_hint
from . import ModelCache, ModelFileError, file_key, load_state_dict, model_path
from . import pose as pose_models

FOLDER = "annotators"
HF = "https://huggingface.co/lllyasviel/Annotators/resolve/main/"


@dataclass(frozen=True)
class Annotator:
    name: str
    description: str
    filename: str | None = None  # path inside models/annotators, controlnet_aux layout
    source: str = ""  # where to get the file
    build: Callable[[], torch.nn.Module] | None = None  # empty network of the right architecture
    prepare: Callable[[dict], dict] = field(default=lambda sd: sd)  # checkpoint -> state dict
    multiple: int = 64  # input sides are rounded to this

    def where_to_get(self) -> str:
        return f"download {self.source} and save it as models/{FOLDER}/{self.filename}"


# --------------------------------------------------------------------------- network builders
# controlnet_aux's package __init__ imports every detector it has, among them mediapipe_face, which
# reads ``mp.solutions`` at import and so fails with mediapipe >= 0.10.30. The networks are taken
# from its submodules instead, imported under a private package name whose __init__ never runs;
# the real ``controlnet_aux`` module (other packs' copy) is left alone.
_PRIVATE_PACKAGE = f"{__package__}._controlnet_aux"


def _require_controlnet_aux() -> None:
    """Register the private package (once), or say how to install controlnet_aux."""
    if _PRIVATE_PACKAGE not in sys.modules:
        found = importlib.util.find_spec("controlnet_aux")
        if found is None or not found.submodule_search_locations:
            raise MissingPackageError(install_hint("controlnet_aux", "The neural annotators (line art, HED, PiDi, "
                                                                     "MiDaS, normal BAE)"))
        spec = importlib.util.spec_from_file_location(
            _PRIVATE_PACKAGE, found.origin, submodule_search_locations=list(found.submodule_search_locations))
        sys.modules[_PRIVATE_PACKAGE] = importlib.util.module_from_spec(spec)  # a namespace only: not executed


def _controlnet_aux(submodule: str) -> types.ModuleType:
    """``controlnet_aux.<submodule>`` without running ``controlnet_aux/__init__.py``."""
    _require_controlnet_aux()
    return importlib.import_module(f"{_PRIVATE_PACKAGE}.{submodule}")


def _lineart() -> torch.nn.Module:
    return _controlnet_aux("lineart").Generator(3, 1, 3)


def _hed() -> torch.nn.Module:
    return _controlnet_aux("hed").ControlNetHED_Apache2()


def _pidi() -> torch.nn.Module:
    return _controlnet_aux("pidi.model").pidinet()


def _midas() -> torch.nn.Module:
    return _controlnet_aux("midas.midas.dpt_depth").DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def _normal_bae() -> torch.nn.Module:
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)
    return _controlnet_aux("normalbae.nets.NNET").NNET(args)


def _strip_module(sd: dict, inner: str | None = None) -> dict:
    sd = sd.get(inner, sd) if inner else sd
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _midas_sd(sd: dict) -> dict:
    return sd["model"] if "optimizer" in sd and "model" in sd else sd


ANNOTATORS: dict[str, Annotator] = {
    "canny": Annotator("canny", "OpenCV Canny edges; no weights needed"),
    "lineart": Annotator("lineart", "realistic line art (controlnet_aux LineartDetector)",
                         "lllyasviel/Annotators/sk_model.pth", HF + "sk_model.pth", _lineart),
    "lineart_coarse": Annotator("lineart_coarse", "coarse line art (controlnet_aux LineartDetector coarse)",
                                "lllyasviel/Annotators/sk_model2.pth", HF + "sk_model2.pth", _lineart),
    "softedge_hed": Annotator("softedge_hed", "soft edges, HED (controlnet_aux HEDdetector)",
                              "lllyasviel/Annotators/ControlNetHED.pth", HF + "ControlNetHED.pth", _hed, multiple=16),
    "softedge_pidi": Annotator("softedge_pidi", "soft edges, PiDiNet (controlnet_aux PidiNetDetector)",
                               "lllyasviel/Annotators/table5_pidinet.pth", HF + "table5_pidinet.pth", _pidi,
                               prepare=lambda sd: _strip_module(sd, "state_dict"), multiple=16),
    "depth_midas": Annotator("depth_midas", "depth, MiDaS DPT-Hybrid (controlnet_aux MidasDetector)",
                             "lllyasviel/Annotators/dpt_hybrid-midas-501f0c75.pt",
                             HF + "dpt_hybrid-midas-501f0c75.pt", _midas, prepare=_midas_sd, multiple=32),
    "normal_bae": Annotator("normal_bae", "surface normals, BAE (controlnet_aux NormalBaeDetector)",
                            "lllyasviel/Annotators/scannet.pt", HF + "scannet.pt", _normal_bae,
                            prepare=lambda sd: _strip_module(sd, "model"), multiple=32),
    "openpose": Annotator("openpose", "OpenPose COCO-18 body skeleton from mediapipe pose (mediapipe < 0.10.30 carries its "
                                       "model; newer ones read models/mediapipe/pose_landmarker_full.task)"),
}
ANNOTATOR_NAMES: tuple[str, ...] = tuple(ANNOTATORS)

_cache = ModelCache(max_entries=2)


def get(name: str) -> Annotator:
    if name not in ANNOTATORS:
        raise ValueError(f"unknown annotator {name!r}; use one of {', '.join(ANNOTATORS)}")
    return ANNOTATORS[name]


def weights_path(annotator: Annotator) -> str:
    """The annotator's file in models/annotators (controlnet_aux layout, or just the file name)."""
    try:
        return model_path(FOLDER, annotator.filename, annotator.where_to_get())
    except ModelFileError as error:
        short = annotator.filename.rsplit("/", 1)[-1]
        try:
            return model_path(FOLDER, short, annotator.where_to_get())
        except ModelFileError:
            raise error from None


def load(annotator: Annotator) -> torch.nn.Module:
    """The annotator's network on ComfyUI's compute device, loaded once and cached."""
    _require_controlnet_aux()  # the package first: without it the weights file is of no use
    path = weights_path(annotator)

    def build() -> torch.nn.Module:
        state_dict = annotator.prepare(load_state_dict(path, annotator.where_to_get()))
        network = annotator.build()
        try:
            network.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ModelFileError(
                f"{path} is not a {annotator.name} annotator checkpoint ({str(error)[:300]}). "
                f"Where to get the right file: {annotator.where_to_get()}"
            ) from error
        logging.info("selective_control: loaded annotator %s from %s", annotator.name, path)
        return network.float()

    return ModelCache.use(_cache.get(file_key(path, annotator.name), build))


# --------------------------------------------------------------------------- running


def _run_network(annotator: Annotator, image: torch.Tensor, resolution: int,
                 forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Resize to the detect size, run ``forward`` per image (NCHW in, N1HW or N3HW out 0..1)."""
    network = load(annotator)
    device = next(network.parameters()).device
    height, width = image.shape[1:3]
    dh, dw = control_ops.detect_size(height, width, resolution, annotator.multiple)
    x = control_ops.resize_image(image, dh, dw).movedim(-1, 1)
    results = []
    with torch.inference_mode():
        for i in range(x.shape[0]):
            comfy.model_management.throw_exception_if_processing_interrupted()
            results.append(forward(network, x[i : i + 1].to(device)).float().clamp(0, 1).cpu())
    out = torch.cat(results).movedim(1, -1)
    if out.shape[-1] == 1:
        out = out.expand(*out.shape[:3], 3)
    return control_ops.resize_image(out, height, width).to(image.device)


def _lineart_forward(network, x):
    return 1.0 - network(x)  # white lines on black, as ControlNet lineart models expect


def _hed_forward(network, x):
    projections = network(x * 255.0)
    size = x.shape[-2:]
    edges = torch.stack([F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in projections])
    return torch.sigmoid(edges.mean(dim=0))


def _pidi_forward(network, x):
    return network(x.flip(1))[-1]  # PiDiNet was trained on BGR


def _midas_forward(network, x):
    depth = network(x * 2.0 - 1.0).unsqueeze(1)
    lo, hi = depth.amin(dim=(2, 3), keepdim=True), depth.amax(dim=(2, 3), keepdim=True)
    return (depth - lo) / (hi - lo).clamp_min(1e-6)


def _normal_forward(network, x):
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    normal = network((x - mean) / std)[0][-1][:, :3]
    return ((normal + 1.0) * 0.5).clamp(0, 1)


_FORWARDS = {"lineart": _lineart_forward, "lineart_coarse": _lineart_forward, "softedge_hed": _hed_forward,
             "softedge_pidi": _pidi_forward, "depth_midas": _midas_forward, "normal_bae": _normal_forward}


def annotate(name: str, image: torch.Tensor, resolution: int = 512, canny_low: int = 100, canny_high: int = 200,
             pose_confidence: float = 0.3) -> torch.Tensor:
    """Control image batch for an RGB batch, at the batch's own height and width."""
    annotator = get(name)
    if name == "canny":
        return control_ops.canny(image, canny_low, canny_high)
    if name == "openpose":
        poses = pose_models.detect_poses(control_ops.to_uint8(image), [[None]] * image.shape[0], pose_confidence)
        drawn = np.stack([control_ops.draw_pose(p, image.shape[1], image.shape[2], pose_confidence) for p in poses])
        return control_ops.from_uint8(drawn, image.device)
    return _run_network(annotator, image, resolution, _FORWARDS[name])
