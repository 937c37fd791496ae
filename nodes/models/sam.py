"""Segment-anything checkpoints from models/sams: architecture detection, loading, and the finder's SAM adapter.

The architecture (vit_b / vit_l / vit_h) is read from the state dict's shapes (the image
encoder's width and depth), never from the file name. ``SAMSegmenter`` implements the
``Segmenter`` protocol of ``ops.finding`` on top of segment-anything's model: one image
embedding per image (kept in a small cache on the model, on the offload device, so a re-run
with other class names or thresholds skips the encoder), all prompts decoded in batches.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict

import numpy as np
import torch

import comfy.model_management
import comfy.model_patcher

from . import ModelCache, ModelFileError, file_key, load_state_dict, model_path

SAM_WHERE = (
    "the official segment-anything checkpoints, https://github.com/facebookresearch/segment-anything#model-checkpoints "
    "(sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth); put them in models/sams"
)
# image encoder (width, depth) -> segment-anything registry name
ARCHITECTURES: dict[tuple[int, int], str] = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h"}
_PREFIXES = ("module.", "model.", "sam.")
_DECODE_BATCH = 64  # prompts per mask-decoder call (SAM's automatic generator uses 64 too)
_EMBEDDINGS_KEPT = 4

_cache = ModelCache(max_entries=2)


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``module.``, ``model.``, ``sam.``) some training scripts add to every key."""
    for prefix in _PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def detect_architecture(state_dict: dict[str, torch.Tensor], source: str = "the checkpoint") -> str:
    """``vit_b`` / ``vit_l`` / ``vit_h`` from the image encoder's width and number of blocks."""
    pos_embed = state_dict.get("image_encoder.pos_embed")
    if pos_embed is None or "mask_decoder.iou_prediction_head.layers.0.weight" not in state_dict:
        raise ModelFileError(
            f"{source} is not a segment-anything (SAM v1) checkpoint: it has no image_encoder.pos_embed / "
            f"mask_decoder keys (SAM 2, MobileSAM and HQ-SAM checkpoints are not supported). Use {SAM_WHERE}"
        )
    width = int(pos_embed.shape[-1])
    blocks = {int(m.group(1)) for key in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", key))}
    depth = max(blocks) + 1 if blocks else 0
    name = ARCHITECTURES.get((width, depth))
    if name is None:
        known = ", ".join(f"{n} (width {w}, {d} blocks)" for (w, d), n in ARCHITECTURES.items())
        raise ModelFileError(
            f"{source} has an unknown SAM architecture: image encoder width {width} with {depth} blocks. "
            f"Known: {known}. Use {SAM_WHERE}"
        )
    return name


class SAMModel(torch.nn.Module):
    """A segment-anything ``Sam`` with its architecture name and a few cached image embeddings."""

    def __init__(self, sam: torch.nn.Module, architecture: str) -> None:
        super().__init__()
        self.sam = sam
        self.architecture = architecture
        self.embeddings: OrderedDict[str, tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = OrderedDict()


def build_sam(state_dict: dict[str, torch.Tensor], source: str = "the checkpoint") -> SAMModel:
    """A SAMModel with the weights of ``state_dict`` (architecture detected from its shapes)."""
    from segment_anything import sam_model_registry

    state_dict = strip_prefix(state_dict)
    architecture = detect_architecture(state_dict, source)
    sam = sam_model_registry[architecture](checkpoint=None)
    missing, unexpected = sam.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ModelFileError(
            f"{source} looks like SAM {architecture} but does not match it: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
            f"It may be truncated or a fine-tune with another layout. Use {SAM_WHERE}"
        )
    return SAMModel(sam.eval(), architecture)


def load_sam(filename: str) -> comfy.model_patcher.ModelPatcher:
    """The SAM in ``models/sams/<filename>`` as a ModelPatcher (cached while the file is unchanged)."""
    path = model_path("sams", filename, SAM_WHERE)
    return _cache.get(file_key(path), lambda: build_sam(load_state_dict(path, SAM_WHERE), f"models/sams/{filename}"))


class SAMSegmenter:
    """The ``Segmenter`` protocol of ops.finding on a SAMModel that is already on its compute device."""

    def __init__(self, model: SAMModel, amg_points_per_side: int = 32, pred_iou_thresh: float = 0.88,
                 stability_thresh: float = 0.95) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model
        self.sam = model.sam
        self.transform = ResizeLongestSide(self.sam.image_encoder.img_size)
        self.amg_settings = {"points_per_side": amg_points_per_side, "pred_iou_thresh": pred_iou_thresh,
                             "stability_score_thresh": stability_thresh}
        self.features: torch.Tensor | None = None
        self.original_size = (0, 0)
        self.input_size = (0, 0)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        key = hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape)
        cached = self.model.embeddings.get(key)
        if cached is None:
            resized = self.transform.apply_image(image)
            pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            features = self.sam.image_encoder(self.sam.preprocess(pixels))
            offload = comfy.model_management.unet_offload_device()
            cached = (features.to(offload), tuple(image.shape[:2]), tuple(pixels.shape[-2:]))
            self.model.embeddings[key] = cached
            while len(self.model.embeddings) > _EMBEDDINGS_KEPT:
                self.model.embeddings.popitem(last=False)
        else:
            self.model.embeddings.move_to_end(key)
        self.features = cached[0].to(self.device)
        self.original_size, self.input_size = cached[1], cached[2]

    @torch.no_grad()
    def _decode(self, points: torch.Tensor | None, boxes: torch.Tensor | None, multimask: bool):
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return low_res.flatten(0, 1), iou.flatten()

    def predict(self, points: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is None:
            raise RuntimeError("SAMSegmenter.predict called before set_image")
        logits, ious = [], []
        if len(points):
            coords = self.transform.apply_coords_torch(points.float().to(self.device), self.original_size)[:, None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int, device=self.device)
            for start in range(0, len(coords), _DECODE_BATCH):
                comfy.model_management.throw_exception_if_processing_interrupted()
                chunk = slice(start, start + _DECODE_BATCH)
                masks, iou = self._decode((coords[chunk], labels[chunk]), None, multimask=True)
                logits.append(masks)
                ious.append(iou)
        if len(boxes):
            transformed = self.transform.apply_boxes_torch(boxes.float().to(self.device), self.original_size)
            masks, iou = self._decode(None, transformed, multimask=False)
            logits.append(masks)
            ious.append(iou)
        if not logits:
            return torch.zeros(0, 1, 1, device=self.device), torch.zeros(0, device=self.device)
        # the low-res logits cover the padded 1024 square: keep the part over the image
        low_h = math.ceil(self.input_size[0] * 256 / self.sam.image_encoder.img_size)
        low_w = math.ceil(self.input_size[1] * 256 / self.sam.image_encoder.img_size)
        return torch.cat(logits)[:, :low_h, :low_w], torch.cat(ious)

    def automatic(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(self.sam, **self.amg_settings)
        records = generator.generate(image)
        height, width = image.shape[:2]
        if not records:
            return torch.zeros(0, height, width, dtype=torch.bool), torch.zeros(0)
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
        return masks, torch.tensor([float(r["predicted_iou"]) for r in records])
