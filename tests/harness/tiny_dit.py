"""Tiny randomly initialised DiT models (Flux.1, Flux.2, Chroma, Qwen-Image, Z-Image) from ComfyUI's own classes.

Same idea as tiny_models.py for UNets: the real model classes (``comfy.supported_models`` config ->
``comfy.model_base`` -> ``comfy.ldm.*`` transformer), two heads of 16 channels, a couple of blocks,
wrapped in a ModelPatcher, so the pack's hooks run inside the real forwards on CPU in milliseconds.

Most of these models' text encoders need tokenizer files that are absent here, so conditioning is
built directly: ``conditioning(arch, text)`` gives a CONDITIONING list ``[[tensor, {...}]]`` with the
model's context width and the keys the model reads (``pooled_output``, ``guidance``). The tensor is a
deterministic function of the text, so two calls with the same text are the same prompt.

DiT builders need ComfyUI 0.33 (Flux.2 and Z-Image configs, the attention patch points);
``unavailable_reason()`` says why they cannot run on an older ComfyUI, for ``pytest.skip``.
"""
from __future__ import annotations

import functools
import hashlib

import torch

from .fixture_nodes import choice, fixture_node
from .tiny_models import _clip_config, _randomize

ARCHITECTURES = ("flux", "flux2", "chroma", "qwen_image", "z_image")

HEADS = 2
HEAD_DIM = 16
HIDDEN = HEADS * HEAD_DIM
Z_IMAGE_HEADS = 16        # see _model_config
CONTEXT_DIM = 32          # text-encoder hidden width every tiny DiT reads (txt_in / cap_embedder input)
FLUX_POOLED_DIM = 32      # Flux.1's pooled CLIP-L vector (768 in the real model)
TEXT_TOKENS = 8           # default prompt length of conditioning()

# Latent layout per architecture: channels, pixels per latent cell, and whether the latent is 5-D
# ([B, C, T, H, W], Qwen-Image's Wan 2.1 layout).
LATENT = {
    "flux": (16, 8, False),
    "flux2": (128, 16, False),
    "chroma": (16, 8, False),
    "qwen_image": (16, 8, True),
    "z_image": (16, 8, False),
}


def unavailable_reason() -> str | None:
    """Why the tiny DiTs cannot be built on the running ComfyUI, or None when they can."""
    import comfy.supported_models as sm

    missing = [name for name in ("Flux", "Flux2", "Chroma", "QwenImage", "ZImage") if not hasattr(sm, name)]
    if missing:
        return f"this ComfyUI has no {', '.join(missing)} model config (DiT tests need ComfyUI 0.33 or later)"
    import comfy.ldm.flux.layers as flux_layers

    if "attn1_patch" not in flux_layers.DoubleStreamBlock.forward.__code__.co_consts:
        return "this ComfyUI's Flux blocks have no attn1_patch hook (DiT tests need ComfyUI 0.33 or later)"
    return None


def _flux_common() -> dict:
    return {"in_channels": 16, "out_channels": 16, "hidden_size": HIDDEN, "num_heads": HEADS, "context_in_dim": CONTEXT_DIM,
            "mlp_ratio": 2.0, "depth": 2, "depth_single_blocks": 2, "axes_dim": [4, 6, 6], "theta": 10000,
            "patch_size": 2, "qkv_bias": True, "txt_ids_dims": []}


def _model_config(arch: str):
    import comfy.supported_models as sm

    if arch == "flux":
        config = sm.Flux({**_flux_common(), "image_model": "flux", "guidance_embed": True, "vec_in_dim": FLUX_POOLED_DIM})
    elif arch == "flux2":
        config = sm.Flux2({**_flux_common(), "image_model": "flux2", "in_channels": 128, "out_channels": 128,
                           "patch_size": 1, "axes_dim": [4, 4, 4, 4], "theta": 2000, "global_modulation": True,
                           "mlp_silu_act": True, "qkv_bias": False, "ops_bias": False, "guidance_embed": True,
                           "vec_in_dim": None, "default_ref_method": "index", "ref_index_scale": 10.0,
                           "txt_ids_dims": [3]})
    elif arch == "chroma":
        config = sm.Chroma({**_flux_common(), "image_model": "chroma", "in_channels": 64, "out_channels": 64,
                            "in_dim": 64, "out_dim": HIDDEN, "hidden_dim": 32, "n_layers": 2, "vec_in_dim": None})
    elif arch == "qwen_image":
        config = sm.QwenImage({"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2,
                               "attention_head_dim": HEAD_DIM, "num_attention_heads": HEADS,
                               "joint_attention_dim": CONTEXT_DIM, "axes_dims_rope": (4, 6, 6)})
    elif arch == "z_image":
        # Z-Image's adaLN reads a 256-wide timestep embedding, so its width cannot go below 256.
        config = sm.ZImage({"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": Z_IMAGE_HEADS * HEAD_DIM,
                            "cap_feat_dim": CONTEXT_DIM, "n_layers": 2, "n_refiner_layers": 1, "qk_norm": True,
                            "n_heads": Z_IMAGE_HEADS, "n_kv_heads": Z_IMAGE_HEADS, "axes_dims": [4, 6, 6], "axes_lens": [1536, 512, 512],
                            "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "multiple_of": 16,
                            "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32})
    else:
        raise ValueError(f"unknown DiT architecture {arch!r}; expected one of {ARCHITECTURES}")
    config.set_inference_dtype(torch.float32, None)
    return config


def _final_linear(diffusion_model: torch.nn.Module, arch: str) -> torch.nn.Module:
    if arch == "qwen_image":
        return diffusion_model.proj_out
    return diffusion_model.final_layer.linear


def empty_latent(arch: str, width: int = 64, height: int = 64, batch: int = 1) -> dict:
    """A LATENT of zeros in the architecture's own layout for an image of ``width`` x ``height`` pixels."""
    channels, scale, five_d = LATENT[arch]
    shape = (batch, channels, 1, height // scale, width // scale) if five_d else (batch, channels, height // scale, width // scale)
    return {"samples": torch.zeros(shape)}


def text_embedding(text: str, tokens: int = TEXT_TOKENS) -> torch.Tensor:
    """[1, tokens, CONTEXT_DIM] hidden states standing in for an encoded prompt: a fixed function of the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return torch.randn(1, tokens, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def conditioning(arch: str, text: str, tokens: int = TEXT_TOKENS, guidance: float | None = None) -> list:
    """CONDITIONING for the tiny ``arch`` model: the text's hidden states plus the keys the model reads."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown DiT architecture {arch!r}; expected one of {ARCHITECTURES}")
    extra: dict = {}
    if arch == "flux":
        seed = int.from_bytes(hashlib.sha256(("pooled:" + text).encode("utf-8")).digest()[:8], "little")
        extra["pooled_output"] = torch.randn(1, FLUX_POOLED_DIM, generator=torch.Generator().manual_seed(seed))
    if arch in ("flux", "flux2") and guidance is not None:
        extra["guidance"] = guidance
    return [[text_embedding(text, tokens), extra]]


def _normalise_output(model, arch: str, seed: int) -> None:
    """Scale the final projection so the prediction has unit variance, as a trained model's has;
    random weights otherwise give predictions far out of range and samplers diverge."""
    generator = torch.Generator().manual_seed(seed)
    latent = empty_latent(arch, 64, 64, 2)["samples"]
    x = torch.randn(latent.shape, generator=generator)
    cond = conditioning(arch, "normalise", guidance=3.5)[0]
    kwargs = {"cross_attn": cond[0].repeat(2, 1, 1), "noise": x, "device": x.device, **cond[1]}
    if "pooled_output" in kwargs:
        kwargs["pooled_output"] = kwargs["pooled_output"].repeat(2, 1)
    extra = {k: v.cond if hasattr(v, "cond") else v for k, v in model.extra_conds(**kwargs).items()}
    if "guidance" in extra and torch.is_tensor(extra["guidance"]):
        extra["guidance"] = extra["guidance"].repeat(2)
    with torch.no_grad():
        out = model.apply_model(x, torch.tensor([0.5, 0.9]), **extra)
        linear = _final_linear(model.diffusion_model, arch)
        linear.weight.div_(out.std())
        if linear.bias is not None:
            linear.bias.zero_()


@functools.cache
def model(arch: str = "flux", seed: int = 0):
    """A ModelPatcher around a tiny DiT of ``arch`` (one of ARCHITECTURES)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    base = _model_config(arch).get_model({})
    _randomize(base.diffusion_model, seed)
    _normalise_output(base, arch, seed)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


@functools.cache
def vae(arch: str = "flux", seed: int = 2):
    """A comfy.sd.VAE whose latent matches ``arch`` (16 channels, downscale 8; Flux.2: 128 channels, downscale 16).

    Qwen-Image's real VAE is the 3-D Wan one; this 2-D stand-in is for workflow plumbing only."""
    import comfy.sd

    channels, scale, _ = LATENT[arch]
    levels = {8: 4, 16: 5}[scale]
    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1] * levels, "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    result = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": channels, "ddconfig": ddconfig}})
    result.latent_channels = channels
    result.downscale_ratio = result.upscale_ratio = scale
    _randomize(result.first_stage_model, seed)
    return result


@functools.cache
def clip(arch: str = "flux", seed: int = 3):
    """A comfy.sd.CLIP (real CLIP architecture and tokenizer files) whose hidden states have the tiny DiT's
    context width, so CLIPTextEncode in a shipped workflow feeds the tiny DiT. Its pooled output has the
    same width, which is what tiny Flux.1's vector_in reads."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown DiT architecture {arch!r}; expected one of {ARCHITECTURES}")
    text_config = _clip_config({"hidden_size": CONTEXT_DIM, "intermediate_size": 64, "num_attention_heads": 2,
                                "num_hidden_layers": 2})

    class TinyDiTTextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype, return_projected_pooled=True, textmodel_json_config=text_config,
                             model_options=model_options)

    class TinyDiTClip(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=TinyDiTTextModel, **kwargs)

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyDiTClip)
    result = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    _randomize(result.cond_stage_model, seed)
    return result


_ARCHITECTURE_INPUT = {"architecture": choice(ARCHITECTURES)}
TinyDiTLoader = fixture_node(
    "TinyDiTLoader", "Test-only node: a tiny DiT MODEL of the chosen architecture, in place of a diffusion-model file.",
    ("MODEL",), model, _ARCHITECTURE_INPUT)
TinyDiTCLIPLoader = fixture_node(
    "TinyDiTCLIPLoader", "Test-only node: a tiny CLIP whose output width fits the tiny DiT of the chosen architecture.",
    ("CLIP",), clip, _ARCHITECTURE_INPUT)
TinyDiTVAELoader = fixture_node(
    "TinyDiTVAELoader", "Test-only node: a tiny VAE whose latent layout fits the tiny DiT of the chosen architecture.",
    ("VAE",), vae, _ARCHITECTURE_INPUT)
TinyDiTTextEncode = fixture_node(
    "TinyDiTTextEncode", "Test-only node: CONDITIONING for a tiny DiT straight from text (see conditioning()).",
    ("CONDITIONING",), lambda arch, text, tokens: conditioning(arch, text, tokens, guidance=3.5),
    {**_ARCHITECTURE_INPUT, "text": ("STRING", {"default": ""}),
     "tokens": ("INT", {"default": TEXT_TOKENS, "min": 1, "max": 512})})
TinyDiTEmptyLatent = fixture_node(
    "TinyDiTEmptyLatent",
    "Test-only node: an empty LATENT in the tiny DiT's own layout (5-D for Qwen-Image, 128 channels for Flux.2).",
    ("LATENT",), empty_latent,
    {**_ARCHITECTURE_INPUT, "width": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 16}),
     "height": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 16}),
     "batch_size": ("INT", {"default": 1, "min": 1, "max": 8})})


TEST_NODES = {"TinyDiTLoader": TinyDiTLoader, "TinyDiTCLIPLoader": TinyDiTCLIPLoader, "TinyDiTVAELoader": TinyDiTVAELoader,
              "TinyDiTTextEncode": TinyDiTTextEncode, "TinyDiTEmptyLatent": TinyDiTEmptyLatent}


def register_test_nodes() -> None:
    """Make the tiny DiT nodes available to prompts run through the executor."""
    import nodes

    nodes.NODE_CLASS_MAPPINGS.update(TEST_NODES)
