"""The toy text-to-image model: ComfyUI's own SD1.5 classes at a tiny size.

- UNet: ``comfy.supported_models.SD15`` (eps prediction, scaled-linear betas 0.00085-0.012 over
  1000 steps, SD1.5 latent format) with 32 channels, two levels, cross-attention at both and in the
  middle, context 64, attention heads of 16 channels.
- Text encoder: ComfyUI's ``SD1ClipModel`` (CLIP architecture, 3 layers, hidden 64) behind its real
  SD1 tokenizer, output as SD1.5 uses it (last layer, final layer norm).
- No VAE: the latent mapping of ``world.py`` (mean RGB per 8x8 block).

The weights file stores the text encoder's token embedding only for the tokens the world's captions
use (``EMBEDDING_IDS``); the other 49k rows are zero (a word outside the world reads as nothing).
Requires a booted ComfyUI (``tests/harness/comfy.boot``) or ``import_comfy``.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "toy_sd15.safetensors"
CONTROLNET = HERE / "toy_controlnet.safetensors"  # outlines -> objects, trained by train_control.py
LATENT_CELLS = 16  # 128 x 128 px pictures

UNET = {
    "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
    "use_temporal_resblock": False, "in_channels": 4, "out_channels": 4, "image_size": 32,
    "context_dim": 64, "use_linear_in_transformer": False, "adm_in_channels": None,
}
CLIP_TEXT = {
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "vocab_size": 49408,
    "projection_dim": 64, "eos_token_id": 49407, "bos_token_id": 0, "pad_token_id": 1,
    "model_type": "clip_text_model", "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
    "num_hidden_layers": 3,
}
EMBEDDING_KEY = "clip.clip_l.transformer.text_model.embeddings.token_embedding.weight"


def import_comfy(comfyui_dir: str | os.PathLike | None = None) -> None:
    """Make ComfyUI's ``comfy`` package importable on CPU without booting the server (training)."""
    folder = Path(comfyui_dir or os.environ.get("COMFYUI_PATH") or HERE.parents[1] / ".comfyui").resolve()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True


def _sd15_class():
    import comfy.supported_models as sm

    class ToySD15(sm.SD15):
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    return ToySD15


def build_unet():
    """A ``comfy.model_base.BaseModel`` (SD1.5 kind) with uninitialised weights."""
    config = _sd15_class()(dict(UNET))
    config.set_inference_dtype(torch.float32, None)
    return config.get_model({})


def build_clip():
    """A ``comfy.sd.CLIP``: the real SD1 tokenizer over a tiny SD1ClipModel (uninitialised weights)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    class ToyClipL(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, dtype=dtype, return_projected_pooled=False,
                             textmodel_json_config=dict(CLIP_TEXT), model_options=model_options)

    class ToySD1ClipModel(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=ToyClipL, **kwargs)

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, ToySD1ClipModel)
    return comfy.sd.CLIP(target, model_options={"dtype": torch.float32})


def token_ids(clip, text: str) -> list[int]:
    """The 77 token ids ComfyUI's CLIPTextEncode gives the text encoder for ``text``."""
    return [token for token, _ in clip.tokenize(text)["l"][0]]


def state_dict(unet, clip, used_ids: list[int]) -> dict[str, torch.Tensor]:
    """UNet (``unet.*``) and text encoder (``clip.*``) weights, the embedding cut to ``used_ids``."""
    sd = {f"unet.{k}": v for k, v in unet.diffusion_model.state_dict().items()}
    sd.update({f"clip.{k}": v for k, v in clip.cond_stage_model.state_dict().items()})
    ids = torch.tensor(sorted(set(used_ids)), dtype=torch.int64)
    sd[EMBEDDING_KEY] = sd[EMBEDDING_KEY][ids]
    sd["clip.embedding_ids"] = ids
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def load_state_dict(unet, clip, sd: dict[str, torch.Tensor]) -> None:
    rows = sd[EMBEDDING_KEY]
    full = torch.zeros(CLIP_TEXT["vocab_size"], rows.shape[1], dtype=rows.dtype)
    full[sd["clip.embedding_ids"]] = rows
    clip_sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.") and k != "clip.embedding_ids"}
    clip_sd[EMBEDDING_KEY[len("clip."):]] = full
    unet.diffusion_model.load_state_dict({k[len("unet."):]: v for k, v in sd.items() if k.startswith("unet.")})
    missing, unexpected = clip.cond_stage_model.load_state_dict(clip_sd, strict=False)
    if unexpected or any(not k.endswith("position_ids") for k in missing):
        raise RuntimeError(f"toy text encoder weights do not fit: missing {missing}, unexpected {unexpected}")


def load_controlnet(path: Path = CONTROLNET):
    """The toy ControlNet as core's ``comfy.controlnet.ControlNet``, built from core's ``cldm``
    class with the toy UNet's config. Core Load ControlNet Model cannot build it: its config
    detection assumes 64-channel attention heads, which gives the toy's 32-channel blocks 0 heads."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    import safetensors.torch

    config = {k: v for k, v in build_unet().model_config.unet_config.items()
              if k not in ("out_channels", "dtype", "device", "operations")}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init,
                                     dtype=torch.float32, device="cpu", **config)
    net.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(str(path)).items()})
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device())


def sha256(path: Path = WEIGHTS) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path = WEIGHTS):
    """(ModelPatcher, CLIP) of the trained toy model, ready for ComfyUI's samplers and encoders."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import safetensors.torch

    sd = safetensors.torch.load_file(str(path))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    unet, clip = build_unet(), build_clip()
    load_state_dict(unet, clip, sd)
    patcher = comfy.model_patcher.ModelPatcher(unet, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return patcher, clip


_loaded: dict[str, tuple] = {}


def cached(path: Path = WEIGHTS):
    """``load(path)`` once per process (the bench and tests sample many prompts from one model)."""
    key = str(Path(path).resolve())
    if key not in _loaded:
        _loaded[key] = load(Path(path))
    return _loaded[key]


class ToyWorldLoader:
    """Test-only node: MODEL and CLIP of the toy world model, in place of a checkpoint loader."""

    weights = WEIGHTS  # the bench may point it at another file (e.g. a training state's export)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self):
        return cached(self.weights)


class ToyWorldControlNetLoader:
    """Test-only node: the toy ControlNet, in place of Load ControlNet Model (see ``load_controlnet``)."""

    weights = CONTROLNET

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self):
        return (load_controlnet(self.weights),)


def register_loader_node(weights: Path = WEIGHTS, controlnet: Path = CONTROLNET) -> None:
    """Make ``ToyWorldLoader`` and ``ToyWorldControlNetLoader`` available to prompts run through
    ComfyUI's executor."""
    import nodes

    ToyWorldLoader.weights = Path(weights)
    ToyWorldControlNetLoader.weights = Path(controlnet)
    nodes.NODE_CLASS_MAPPINGS["ToyWorldLoader"] = ToyWorldLoader
    nodes.NODE_CLASS_MAPPINGS["ToyWorldControlNetLoader"] = ToyWorldControlNetLoader
