"""Tiny random model-patch ControlNets (Load Model Patch's MODEL_PATCH) from ComfyUI 0.33's own classes,
with a tiny base model each fits and the VAE its control image goes through.

Built the way core's ModelPatchLoader builds them from a file (same class, same ``CoreModelPatcher``):

- ``qwen_diffsynth``: Qwen-Image DiffSynth block-wise ControlNet (``QwenImageBlockWiseControlNet``), one
  control block per transformer block of tiny_dit's Qwen-Image;
- ``qwen_diffsynth_inpaint``: the same with the 4 extra inpaint-mask input channels;
- ``z_image_fun``: Z-Image Fun ControlNet Union 2.x (``ZImage_Control`` with noise-refiner control and the
  17 inpaint input channels). Core's patch maps the model's 30 blocks onto its 15 control layers and
  expects 2 noise-refiner blocks; the tiny Z-Image here has those 2 and 4 blocks, so control layers 0
  and 1 act (after blocks 0 and 2) and the patch's per-call state restarts at the next call, as on the
  real model.
"""
from __future__ import annotations

import functools

import torch

from . import tiny_dit, tiny_dit_control
from .fixture_nodes import choice, fixture_node
from .tiny_models import _randomize

KINDS = {"qwen_diffsynth": "qwen_image", "qwen_diffsynth_inpaint": "qwen_image", "z_image_fun": "z_image"}
Z_IMAGE_LAYERS = 4
Z_IMAGE_REFINER_LAYERS = 2  # what core's ZImageControlPatch counts on


def unavailable_reason() -> str | None:
    """Why these cannot be built on the running ComfyUI (Z-Image Fun's classes came after 0.3.75)."""
    import comfy_extras.nodes_model_patch as model_patch

    if not hasattr(model_patch, "ZImageControlPatch"):
        return "this ComfyUI has no Z-Image Fun ControlNet patch (model-patch tests need ComfyUI 0.33 or later)"
    return tiny_dit.unavailable_reason()


@functools.cache
def base_model(kind: str = "qwen_diffsynth", seed: int = 0):
    """The tiny base MODEL a ``kind`` control patches (Z-Image with 4 blocks and 2 noise-refiner blocks)."""
    arch = KINDS[kind]
    if arch != "z_image":
        return tiny_dit.model(arch, seed)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = {k: v for k, v in tiny_dit._model_config(arch).unet_config.items() if k != "dtype"}
    config = sm.ZImage({**config, "n_layers": Z_IMAGE_LAYERS, "n_refiner_layers": Z_IMAGE_REFINER_LAYERS})
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    _randomize(base.diffusion_model, seed)
    tiny_dit._normalise_output(base, arch, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


@functools.cache
def model_patch(kind: str = "qwen_diffsynth", seed: int = 11):
    """A MODEL_PATCH of ``kind`` (one of KINDS) for ``base_model(kind)``."""
    import comfy.ldm.lumina.controlnet
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    from comfy_extras.nodes_model_patch import QwenImageBlockWiseControlNet

    common = {"device": "cpu", "dtype": torch.float32, "operations": comfy.ops.manual_cast}
    if kind.startswith("qwen_diffsynth"):
        model = QwenImageBlockWiseControlNet(num_layers=2, in_dim=64, dim=tiny_dit.HIDDEN,
                                             additional_in_dim=4 if kind.endswith("inpaint") else 0, **common)
    elif kind == "z_image_fun":
        model = comfy.ldm.lumina.controlnet.ZImage_Control(
            dim=tiny_dit.Z_IMAGE_HEADS * tiny_dit.HEAD_DIM, n_heads=tiny_dit.Z_IMAGE_HEADS,
            n_kv_heads=tiny_dit.Z_IMAGE_HEADS, multiple_of=16, n_control_layers=15, additional_in_dim=17,
            refiner_control=True, **common)
    else:
        raise ValueError(f"unknown model-patch kind {kind!r}; expected one of {tuple(KINDS)}")
    _randomize(model, seed)
    return comfy.model_patcher.CoreModelPatcher(model, load_device=mm.get_torch_device(),
                                                offload_device=mm.unet_offload_device())


def vae(kind: str = "qwen_diffsynth"):
    """The VAE the ``kind`` control encodes its image with (Qwen-Image's with a frame axis)."""
    arch = KINDS[kind]
    return tiny_dit_control.vae("qwen_instantx") if arch == "qwen_image" else tiny_dit.vae(arch)


TinyModelPatchLoader = fixture_node(
    "TinyModelPatchLoader",
    "Test-only node: a tiny model-patch ControlNet, the tiny base model it fits and the VAE its image needs.",
    ("MODEL", "MODEL_PATCH", "VAE"), lambda kind: (base_model(kind), model_patch(kind), vae(kind)),
    {"kind": choice(KINDS)})


def register_test_nodes() -> None:
    import nodes

    nodes.NODE_CLASS_MAPPINGS["TinyModelPatchLoader"] = TinyModelPatchLoader
