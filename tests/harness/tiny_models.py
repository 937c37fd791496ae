"""Tiny randomly initialised models of the real SD1.5 / SDXL architectures, from ComfyUI's own classes.

No weights exist on this machine, so tests run the real code paths (UNet, ControlNet, VAE,
CLIP text encoders, ModelPatcher, samplers) on models small enough that a 4-step sample at
64x64 takes about a second on CPU, and check the numbers the pack computes, not pictures.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .fixture_nodes import choice, fixture_node

ARCHITECTURES = ("sd15", "sdxl")

_UNET_BASE = {
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "in_channels": 4,
    "out_channels": 4,
    "image_size": 32,
}

# Text encoders: SD1.5 has one CLIP-L (context 64 here); SDXL joins CLIP-L and CLIP-G hidden
# states (32 + 48 = 80) and feeds CLIP-G's projected pooled output (48) plus six 256-d size
# embeddings to the UNet's label embedding (adm 48 + 1536).
_CLIP_L = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3}
_SDXL_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}
_SDXL_CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3,
                "projection_dim": 48, "hidden_act": "gelu"}
SDXL_POOLED_DIM = 48
CONTEXT_DIM = {"sd15": 64, "sdxl": 80}


def _clip_config(overrides: dict) -> dict:
    base = {
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "vocab_size": 49408, "projection_dim": overrides.get("hidden_size"), "eos_token_id": 49407,
        "bos_token_id": 0, "pad_token_id": 1, "model_type": "clip_text_model",
    }
    return {**base, **overrides}


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ComfyUI layers skip weight init; give every parameter defined, seeded values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in ** 0.5)
            elif name.endswith("bias"):
                param.zero_()
            elif "norm" in name or name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return module


def _model_config(arch: str):
    import comfy.supported_models as sm

    if arch == "sd15":
        config = sm.SD15({**_UNET_BASE, "context_dim": CONTEXT_DIM["sd15"], "use_linear_in_transformer": False,
                          "adm_in_channels": None})
    elif arch == "sdxl":
        class TinySDXL(sm.SDXL):
            unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

        config = TinySDXL({**_UNET_BASE, "context_dim": CONTEXT_DIM["sdxl"], "use_linear_in_transformer": True,
                           "num_classes": "sequential", "adm_in_channels": SDXL_POOLED_DIM + 6 * 256})
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    config.set_inference_dtype(torch.float32, None)
    return config


def _normalise_output(diffusion_model: torch.nn.Module, arch: str, seed: int) -> None:
    """Scale the last conv so the predicted noise has unit variance, as a trained model's has;
    random weights otherwise give predictions ~100x too large and latents far out of range."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, CONTEXT_DIM[arch], generator=generator)
    extra = {}
    if arch == "sdxl":
        extra["y"] = torch.randn(2, SDXL_POOLED_DIM + 6 * 256, generator=generator)
    with torch.no_grad():
        out = diffusion_model(x, torch.tensor([500.0, 900.0]), context=context, **extra)
        diffusion_model.out[-1].weight.div_(out.std())
        diffusion_model.out[-1].bias.zero_()


@functools.cache
def unet(arch: str = "sd15", seed: int = 0):
    """A ModelPatcher around a tiny UNet of the given architecture."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model = _model_config(arch).get_model({})
    _randomize(model.diffusion_model, seed)
    _normalise_output(model.diffusion_model, arch, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


# The micro UNet of the real SD1.5 layout (4 levels, 2 res blocks, widths 32..128, cross-attention
# only in the middle block) that adapter training runs on: the tiny UNet above has two levels,
# which no T2I-Adapter file layout fits. Shared by the training tests and benchmark.
MICRO_SD15_UNET = {
    **_UNET_BASE, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [0] * 8, "transformer_depth_output": [0] * 12, "transformer_depth_middle": 1,
    "context_dim": 64, "use_linear_in_transformer": False, "adm_in_channels": None, "num_head_channels": 32,
    "num_heads": -1,
}


def micro_sd15(seed: int = 0, normalise: bool = True, config_class=None, **unet_overrides):
    """A new ModelPatcher around a micro SD1.5-layout UNet (``MICRO_SD15_UNET`` with
    ``unet_overrides``), built by ``config_class`` (default ``comfy.supported_models.SD15``)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = (config_class or sm.SD15)({**MICRO_SD15_UNET, **unet_overrides})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    _randomize(model.diffusion_model, seed)
    if normalise:
        _normalise_output(model.diffusion_model, "sd15", seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@functools.cache
def controlnet(arch: str = "sd15", seed: int = 1):
    """A comfy.controlnet.ControlNet of the shape matching ``unet(arch)``."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops

    unet_config = {k: v for k, v in _model_config(arch).unet_config.items() if k != "dtype"}
    control_model = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.manual_cast, dtype=torch.float32,
                                               device="cpu", **unet_config)
    _randomize(control_model, seed)
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device())


@functools.cache
def vae(seed: int = 2):
    """A comfy.sd.VAE with the SD KL architecture (downscale 8, 4 latent channels), tiny widths."""
    import comfy.sd

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    result = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": 4, "ddconfig": ddconfig}})
    _randomize(result.first_stage_model, seed)
    return result


def _sdxl_text_encoder_class():
    import comfy.sd1_clip
    import comfy.sdxl_clip

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=_clip_config(_SDXL_CLIP_L), model_options=model_options)
            self.clip_g = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=_clip_config(_SDXL_CLIP_G), return_projected_pooled=True,
                special_tokens={"start": 49406, "end": 49407, "pad": 0},
                model_options={**model_options, "model_name": "clip_g"})
            self.dtypes = {dtype}

    return TinySDXLClipModel


@functools.cache
def clip(arch: str = "sd15", seed: int = 3):
    """A comfy.sd.CLIP whose text encoder(s) have the real CLIP architecture and tokenizer files."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models_base

    if arch == "sd15":
        class TinyClipL(comfy.sd1_clip.SDClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                super().__init__(device=device, dtype=dtype, return_projected_pooled=False,
                                 textmodel_json_config=_clip_config(_CLIP_L), model_options=model_options)

        class TinySD1ClipModel(comfy.sd1_clip.SD1ClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
                super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=TinyClipL, **kwargs)

        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinySD1ClipModel)
    elif arch == "sdxl":
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, _sdxl_text_encoder_class())
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    result = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    _randomize(result.cond_stage_model, seed)
    return result


@dataclass(frozen=True)
class TinyCheckpoint:
    model: object
    clip: object
    vae: object


def checkpoint(arch: str = "sd15") -> TinyCheckpoint:
    return TinyCheckpoint(unet(arch), clip(arch), vae())


def _checkpoint_outputs(architecture: str) -> tuple:
    ckpt = checkpoint(architecture)
    return ckpt.model, ckpt.clip, ckpt.vae


TinyCheckpointLoader = fixture_node(
    "TinyCheckpointLoader", "Test-only node: MODEL, CLIP and VAE of a tiny SD1.5 or SDXL, in place of a checkpoint file.",
    ("MODEL", "CLIP", "VAE"), _checkpoint_outputs, {"architecture": choice(ARCHITECTURES)})
TinyControlNetLoader = fixture_node(
    "TinyControlNetLoader", "Test-only node: a tiny ControlNet matching the tiny UNet of the same architecture.",
    ("CONTROL_NET",), controlnet, {"architecture": choice(ARCHITECTURES)})


TEST_NODES = {"TinyCheckpointLoader": TinyCheckpointLoader, "TinyControlNetLoader": TinyControlNetLoader}


def register_test_nodes() -> None:
    """Make the tiny loaders available to prompts run through the executor."""
    import nodes

    from .doubles import TestColourMatcherLoader

    nodes.NODE_CLASS_MAPPINGS.update(TEST_NODES, TestColourMatcherLoader=TestColourMatcherLoader)
