"""Full CLIP (image and text towers) from models/clip_matcher, via transformers, for zero-shot matching.

Two layouts are accepted:
- a folder in Hugging Face format (``config.json`` + ``model.safetensors`` / shards /
  ``pytorch_model.bin``, tokenizer files optional), e.g. a copy of openai/clip-vit-base-patch32;
- a single ``.safetensors`` file with the transformers key names; its config is read from the
  tensor shapes (attention heads = width / 64, as in OpenAI's and LAION's CLIPs, 16 for widths
  1280/1664; activation quick_gelu for OpenAI widths, gelu otherwise). Put a config.json next to
  it, in a folder, when a model differs.
Without tokenizer files the CLIP tokenizer that ships with ComfyUI (comfy/sd1_tokenizer) is used.
"""
from __future__ import annotations

import glob
import json
import os
import re

import torch
import torch.nn.functional as F

import comfy.model_patcher

from . import ModelCache, ModelFileError, file_key, list_models, load_state_dict, model_path

CLIP_WHERE = (
    "a full CLIP with both towers in Hugging Face transformers format, e.g. https://huggingface.co/openai/clip-vit-base-patch32 "
    "(copy config.json and model.safetensors into a folder under models/clip_matcher, or only model.safetensors)"
)
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_cache = ModelCache(max_entries=2)


def list_choices() -> list[str]:
    """Folders that hold a config.json, then single .safetensors files outside such folders."""
    files = [name.replace("\\", "/") for name in list_models("clip_matcher")]
    folders = sorted({name.rsplit("/", 1)[0] for name in files if name.endswith("/config.json")})
    singles = [
        name for name in files
        if name.endswith(".safetensors") and not any(name.startswith(folder + "/") for folder in folders)
    ]
    return folders + sorted(singles)


def _count_layers(state_dict: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _heads(width: int) -> int:
    return {1280: 16, 1664: 16}.get(width, max(1, width // 64))


def config_from_state_dict(state_dict: dict[str, torch.Tensor], source: str):
    """A CLIPConfig from the tensor shapes of a transformers-format CLIP state dict."""
    from transformers import CLIPConfig

    has_text = "text_model.embeddings.token_embedding.weight" in state_dict
    has_vision = "vision_model.embeddings.patch_embedding.weight" in state_dict
    if not (has_text and has_vision and "text_projection.weight" in state_dict):
        if has_vision or any(k.startswith("visual.") for k in state_dict):
            what = "only the image tower (a clip_vision model)" if not has_text else "no projection layers"
        elif any(k.startswith(("transformer.resblocks", "visual.")) for k in state_dict):
            what = "the original OpenAI/open_clip key layout"
        else:
            what = "no CLIP keys (text_model.*, vision_model.*)"
        raise ModelFileError(f"{source} is not a full CLIP in transformers format: it has {what}. Use {CLIP_WHERE}")
    token = state_dict["text_model.embeddings.token_embedding.weight"]
    patch = state_dict["vision_model.embeddings.patch_embedding.weight"]
    positions = state_dict["vision_model.embeddings.position_embedding.weight"].shape[0] - 1
    projection = state_dict["text_projection.weight"].shape[0]
    text_width, vision_width = token.shape[1], patch.shape[0]
    act = "quick_gelu" if (text_width, vision_width) in {(512, 768), (768, 1024)} else "gelu"
    text = {
        "vocab_size": token.shape[0], "hidden_size": text_width, "num_attention_heads": _heads(text_width),
        "max_position_embeddings": state_dict["text_model.embeddings.position_embedding.weight"].shape[0],
        "num_hidden_layers": _count_layers(state_dict, "text_model.encoder.layers."),
        "intermediate_size": state_dict["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "projection_dim": projection, "hidden_act": act,
    }
    vision = {
        "hidden_size": vision_width, "num_attention_heads": _heads(vision_width), "patch_size": patch.shape[-1],
        "image_size": patch.shape[-1] * round(positions ** 0.5),
        "num_hidden_layers": _count_layers(state_dict, "vision_model.encoder.layers."),
        "intermediate_size": state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "projection_dim": projection, "hidden_act": act,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)


class CLIPMatcher(torch.nn.Module):
    """The ``Matcher`` protocol of ops.finding on a transformers CLIPModel."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        super().__init__()
        self.clip = model
        self.tokenizer = tokenizer

    @property
    def compute_device(self) -> torch.device:  # not `device`: ModelPatcher assigns that attribute
        return self.clip.logit_scale.device

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp().clamp(max=100.0))

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        size = self.clip.config.vision_config.image_size
        x = images.to(self.compute_device, torch.float32)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(_MEAN, device=self.compute_device).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=self.compute_device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.clip.dtype)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        limit = self.clip.config.text_config.max_position_embeddings
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = self.clip.text_model(
            input_ids=tokens["input_ids"].to(self.compute_device), attention_mask=tokens["attention_mask"].to(self.compute_device)
        )
        return F.normalize(self.clip.text_projection(out.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        out = self.clip.vision_model(pixel_values=self._pixels(images))
        return F.normalize(self.clip.visual_projection(out.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def patch_similarity(self, image: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Per-patch similarity, MaskCLIP style: the last block's value path (no query/key mixing)."""
        vision = self.clip.vision_model
        out = vision(pixel_values=self._pixels(image), output_hidden_states=True)
        last = vision.encoder.layers[-1]
        hidden = out.hidden_states[-2]
        values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))
        patches = self.clip.visual_projection(vision.post_layernorm(values[:, 1:])).float()
        patches = F.normalize(patches[0], dim=-1)
        side = round(patches.shape[0] ** 0.5)
        return (text_embeds.to(patches.device).float() @ patches.T).reshape(-1, side, side)


def _tokenizer(folder: str | None):
    from transformers import CLIPTokenizer

    import comfy.sd1_clip

    if folder and (os.path.isfile(os.path.join(folder, "tokenizer.json")) or os.path.isfile(os.path.join(folder, "vocab.json"))):
        source = folder
    else:
        source = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")
    return CLIPTokenizer.from_pretrained(source)


def _folder_weights(folder: str, source: str) -> dict[str, torch.Tensor]:
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        files = [os.path.join(folder, name) for name in _WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not files:
        raise ModelFileError(f"{source} has a config.json but no weights (model.safetensors). Where to get it: {CLIP_WHERE}")
    state_dict: dict[str, torch.Tensor] = {}
    for path in files:
        state_dict.update(load_state_dict(path, CLIP_WHERE))
    return state_dict


def build_matcher(path: str, source: str) -> CLIPMatcher:
    """A CLIPMatcher from a model folder or a single .safetensors file."""
    from transformers import CLIPConfig, CLIPModel

    if os.path.isdir(path):
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
                raw = json.load(handle)
        except (OSError, ValueError) as error:
            raise ModelFileError(f"{source}/config.json cannot be read ({error}). Download it again: {CLIP_WHERE}") from error
        if raw.get("model_type") != "clip":
            raise ModelFileError(
                f"{source} is a '{raw.get('model_type')}' model, not a full CLIP ('clip' with both towers). Use {CLIP_WHERE}"
            )
        config = CLIPConfig.from_dict(raw)
        state_dict = _folder_weights(path, source)
        folder = path
    else:
        state_dict = load_state_dict(path, CLIP_WHERE)
        config = config_from_state_dict(state_dict, source)
        folder = None
    state_dict.pop("text_model.embeddings.position_ids", None)
    state_dict.pop("vision_model.embeddings.position_ids", None)
    model = CLIPModel(config)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ModelFileError(f"{source} does not match its config: {error}. Use {CLIP_WHERE}") from error
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelFileError(
            f"{source} is not a complete transformers CLIP: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Use {CLIP_WHERE}"
        )
    return CLIPMatcher(model.float().eval(), _tokenizer(folder))


def load_clip_matcher(choice: str) -> comfy.model_patcher.ModelPatcher:
    """The CLIP in ``models/clip_matcher/<choice>`` (a folder or a .safetensors file) as a ModelPatcher."""
    is_folder = bool(choice) and not choice.endswith((".safetensors", ".bin"))
    found = model_path("clip_matcher", f"{choice}/config.json" if is_folder else choice, CLIP_WHERE)
    path = os.path.dirname(found) if is_folder else found
    return _cache.get(file_key(found), lambda: build_matcher(path, f"models/clip_matcher/{choice}"))

