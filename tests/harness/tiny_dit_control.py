"""Tiny random DiT ControlNets of the kinds ComfyUI loads, matching tiny_dit's Flux.1 and Qwen-Image.

Each is built the way ``comfy.controlnet``'s loader builds it from a file (same model class, same
``comfy.controlnet.ControlNet`` wrapper arguments), from tiny_dit's model config:

- ``flux_xlabs``: XLabs Flux ControlNet (hint image through its own conv stem);
- ``flux_union``: InstantX Flux Union ControlNet (VAE-encoded hint, control-type embedding);
- ``qwen_instantx``: InstantX Qwen-Image ControlNet (VAE-encoded hint);
- ``qwen_fun``: Qwen-Image Fun ControlNet (control blocks on the base model's embeddings).

The VAE-based ones need a VAE whose latent has the model's layout: ``vae(kind)``.
"""
from __future__ import annotations

import functools

import torch

from . import tiny_dit
from .fixture_nodes import choice, fixture_node
from .tiny_models import _randomize

KINDS = {"flux_xlabs": "flux", "flux_union": "flux", "qwen_instantx": "qwen_image", "qwen_fun": "qwen_image"}
UNION_MODES = 10  # InstantX Union's control-type table (comfy.cldm.control_types)


def _unet_config(arch: str) -> dict:
    return {k: v for k, v in tiny_dit._model_config(arch).unet_config.items() if k not in ("dtype", "image_model")}


@functools.cache
def controlnet(kind: str = "flux_xlabs", seed: int = 5):
    """A ``comfy.controlnet.ControlNet`` of ``kind`` (one of KINDS) for tiny_dit's model of KINDS[kind]."""
    import comfy.controlnet
    import comfy.latent_formats
    import comfy.ldm.flux.controlnet
    import comfy.ldm.qwen_image.controlnet
    import comfy.model_management as mm
    import comfy.ops

    ops, device = comfy.ops.manual_cast, mm.get_torch_device()
    common = {"operations": ops, "device": "cpu", "dtype": torch.float32}
    if kind == "flux_xlabs":
        model = comfy.ldm.flux.controlnet.ControlNetFlux(**common, **_unet_config("flux"))
        result = comfy.controlnet.ControlNet(model, load_device=device, extra_conds=["y", "guidance"])
    elif kind == "flux_union":
        model = comfy.ldm.flux.controlnet.ControlNetFlux(latent_input=True, num_union_modes=UNION_MODES,
                                                         control_latent_channels=16, **common, **_unet_config("flux"))
        result = comfy.controlnet.ControlNet(model, compression_ratio=1, latent_format=comfy.latent_formats.Flux(),
                                             load_device=device, extra_conds=["y", "guidance"])
    elif kind == "qwen_instantx":
        model = comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel(**common, **_unet_config("qwen_image"))
        result = comfy.controlnet.ControlNet(model, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                             load_device=device, extra_conds=[])
    elif kind == "qwen_fun":
        model = comfy.ldm.qwen_image.controlnet.QwenImageFunControlNetModel(
            control_in_features=33 * 4, inner_dim=tiny_dit.HIDDEN, num_attention_heads=tiny_dit.HEADS,
            attention_head_dim=tiny_dit.HEAD_DIM, num_control_blocks=2, main_model_double=2, injection_layers=(0, 1),
            **common)
        result = comfy.controlnet.QwenFunControlNet(model, compression_ratio=1,
                                                    latent_format=comfy.latent_formats.Wan21(), load_device=device,
                                                    extra_conds=[])
    else:
        raise ValueError(f"unknown DiT ControlNet kind {kind!r}; expected one of {tuple(KINDS)}")
    _randomize(model, seed)
    return result


class _FrameAxisVAE:
    """tiny_dit's 2-D stand-in VAE with Qwen-Image's ``[B,C,1,h,w]`` latents (the real one is 3-D)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def encode(self, pixels):
        return self.inner.encode(pixels).unsqueeze(2)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@functools.cache
def vae(kind: str = "flux_union"):
    """The VAE a ``kind`` ControlNet encodes its hint with (Qwen-Image's with a frame axis)."""
    arch = KINDS[kind]
    return _FrameAxisVAE(tiny_dit.vae(arch)) if arch == "qwen_image" else tiny_dit.vae(arch)


TinyDiTControlNetLoader = fixture_node(
    "TinyDiTControlNetLoader", "Test-only node: a tiny DiT ControlNet and the VAE its hint needs.",
    ("CONTROL_NET", "VAE"), lambda kind: (controlnet(kind), vae(kind)), {"kind": choice(KINDS)})


def register_test_nodes() -> None:
    import nodes

    nodes.NODE_CLASS_MAPPINGS["TinyDiTControlNetLoader"] = TinyDiTControlNetLoader
