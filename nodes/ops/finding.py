"""Finding objects: CLIP-guided SAM prompts, mask filtering, IoU dedupe, masked crops, ranking, merging.

Pure torch/numpy (scipy for connected components, PIL for preview labels); no ComfyUI imports.
The models come in through two small protocols, so every step is unit-tested with doubles:

- ``Segmenter`` (SAM): ``set_image`` computes the image embedding once; ``predict`` decodes a
  batch of point and box prompts into low-resolution mask logits plus SAM's predicted IoU;
  ``automatic`` runs SAM's own automatic mask generator (the comparison mode).
- ``Matcher`` (CLIP with both towers): text and image embeddings (L2-normalised), the
  per-patch similarity of one image to the texts, and CLIP's logit scale.

Guided finder, per image (``find_in_image``):
1. CLIP patch similarity of the whole image to the class names and the negatives gives a
   relevance map (positive minus best negative, normalised to 0..1).
2. Prompts: peaks of that map sampled on a coarse grid (plus the best remaining grid points)
   become point prompts; connected regions of high relevance become box prompts.
3. SAM decodes them all in one batch (3 masks per point, 1 per box) from one embedding.
4. Masks below SAM's predicted IoU, its stability score or a minimum area (checked again at
   image size) are dropped; the rest are de-duplicated by mask IoU (greedy, best quality first).
5. Every surviving mask is cropped from the photo (outside the mask filled with grey), all
   crops go through CLIP in one batch, and a softmax over class names + negatives scores them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .regions import PALETTE
from .shapes import to_uint8

DEFAULT_NEGATIVES: tuple[str, ...] = ("background",)
MERGE_MODES: tuple[str, ...] = ("best", "all")
FIND_MODES: tuple[str, ...] = ("guided", "automatic")


class Segmenter(Protocol):
    def set_image(self, image: np.ndarray) -> None:
        """Compute (or reuse) the embedding of an ``[H,W,3]`` uint8 RGB image."""

    def predict(self, points: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``points [K,2]`` (x, y px; 3 masks each) and ``boxes [M,4]`` (x0,y0,x1,y1 px; 1 each).

        Returns low-resolution logits ``[3K+M, h, w]`` covering the whole image and SAM's predicted IoU ``[3K+M]``.
        """

    def automatic(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's automatic mask generator: bool masks ``[N,H,W]`` and their predicted IoU ``[N]``."""


class Matcher(Protocol):
    logit_scale: float

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``[T,D]`` normalised text embeddings."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,3,H,W]`` images in 0..1 (any size) -> ``[N,D]`` normalised embeddings."""

    def patch_similarity(self, image: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """``[1,3,H,W]`` image and ``[T,D]`` texts -> cosine similarity per patch ``[T,g,g]``."""


@dataclass(frozen=True)
class FinderSettings:
    """Knobs of the guided finder (defaults follow SAM's automatic generator where one exists)."""

    max_points: int = 16  # point prompts taken from the relevance map
    grid: int = 16  # coarse grid (points per side) the relevance map is sampled on
    max_boxes: int = 4  # box prompts from regions of high relevance (0 = none)
    box_level: float = 0.5  # relevance (0..1) a region needs to become a box prompt
    min_relevance: float = 0.2  # grid points below this relevance are never prompts
    pred_iou_thresh: float = 0.88  # SAM's predicted mask quality
    stability_thresh: float = 0.95  # SAM's stability score
    min_area: float = 0.0005  # fraction of the image a mask must cover
    dedupe_iou: float = 0.85  # masks overlapping more than this are duplicates
    crop_padding: float = 0.1  # context around a mask's box in its CLIP crop (fraction of its size)
    crop_size: int = 224  # side of the square crops given to CLIP


@dataclass
class FindResult:
    """Everything found in one image: candidate masks sorted by score, best first."""

    masks: torch.Tensor  # [N,H,W] bool
    scores: torch.Tensor  # [N] probability of the best class name
    labels: list[str]  # best class name of each mask
    matched: torch.Tensor  # [N] bool: score >= threshold and a class name beats every negative
    prompts: int = 0  # prompts given to SAM
    decoded: int = 0  # masks SAM decoded
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.matched.any())


# --------------------------------------------------------------------------- inputs


MAX_NAMES_CHARS = 100_000  # a name list longer than this is refused before it is split
MAX_NAMES = 1000  # each name is one CLIP text prompt
MAX_TEMPLATE_CHARS = 2000  # CLIP reads 77 tokens of it anyway


def names_from_lines(text: str, what: str = "class_names") -> list[str]:
    """Names from a text box: one per line or comma-separated; blanks and duplicates dropped (first kept).

    Linear in the text's length and bounded: a list longer than MAX_NAMES_CHARS characters or with more
    than MAX_NAMES names is a clear error, not hours of work."""
    text = text or ""
    if len(text) > MAX_NAMES_CHARS:
        raise ValueError(f"{what} is {len(text)} characters long; at most {MAX_NAMES_CHARS} (a list of names, one "
                         "per line or comma-separated)")
    names = list(dict.fromkeys(name for line in text.replace(",", "\n").splitlines() if (name := line.strip())))
    if len(names) > MAX_NAMES:
        raise ValueError(f"{what} has {len(names)} different names; at most {MAX_NAMES} (each one is a CLIP prompt)")
    return names


def require_class_names(text: str) -> list[str]:
    names = names_from_lines(text)
    if not names:
        raise ValueError(
            "the class name list is empty: write the names of the objects to find, one per line "
            "(for example 'shoe' or 'red handbag')"
        )
    return names


def prompt_texts(names: list[str], template: str) -> list[str]:
    """Apply a template such as ``"a photo of a {}"`` (a template without ``{}`` is used as a prefix)."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"prompt_template is {len(template)} characters long; at most {MAX_TEMPLATE_CHARS} (CLIP "
                         "reads only its first 77 tokens)")
    template = template.strip() or "{}"
    if "{}" not in template:
        template = template + " {}"
    return [template.replace("{}", name) for name in names]


# --------------------------------------------------------------------------- prompts from CLIP


def relevance_map(patch_sim: torch.Tensor, n_positive: int) -> torch.Tensor:
    """``[T,g,g]`` similarities -> ``[g,g]`` relevance in 0..1: best class name minus best negative."""
    if patch_sim.ndim != 3 or not 0 < n_positive <= patch_sim.shape[0]:
        raise ValueError(f"patch similarity must be [T,g,g] with 1..T class names, got {tuple(patch_sim.shape)}")
    positive = patch_sim[:n_positive].amax(0)
    rel = positive - patch_sim[n_positive:].amax(0) if patch_sim.shape[0] > n_positive else positive
    rel = rel.float()
    low, high = rel.min(), rel.max()
    if high - low < 1e-6:
        return torch.full_like(rel, 0.5)
    return (rel - low) / (high - low)


def grid_centres(size: int, n: int) -> torch.Tensor:
    """Centres of ``n`` equal cells along ``size`` pixels (SAM's point grid rule)."""
    return (torch.arange(n, dtype=torch.float32) + 0.5) * (size / n)


def select_prompts(
    relevance: torch.Tensor, height: int, width: int, settings: FinderSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point prompts ``[K,2]`` and box prompts ``[M,4]`` (pixels, x first) from a relevance map.

    The map is sampled on a ``grid x grid`` lattice over the image. Points: local maxima
    (3x3) first, strongest first, then the strongest remaining lattice points, all above
    ``min_relevance``, at most ``max_points``. Boxes: the bounding boxes of the largest
    8-connected regions of the lattice at or above ``box_level``, at most ``max_boxes``.
    """
    from scipy import ndimage

    n = max(1, int(settings.grid))
    rel = relevance.float().cpu()[None, None]
    lattice = F.interpolate(rel, size=(n, n), mode="bilinear", align_corners=False)[0, 0]
    peaks = lattice == F.max_pool2d(lattice[None, None], 3, stride=1, padding=1)[0, 0]
    flat, peak_flat = lattice.flatten(), peaks.flatten()
    rank_key = flat + peak_flat.float() * 2.0  # peaks first, each group strongest first
    order = torch.argsort(rank_key, descending=True, stable=True)
    order = order[flat[order] >= settings.min_relevance][: max(0, settings.max_points)]
    xs, ys = grid_centres(width, n), grid_centres(height, n)
    points = torch.stack([xs[order % n], ys[order // n]], dim=1) if len(order) else torch.zeros(0, 2)

    boxes = []
    if settings.max_boxes > 0:
        labels, count = ndimage.label((lattice >= settings.box_level).numpy(), structure=np.ones((3, 3)))
        regions = ndimage.find_objects(labels)
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=range(1, count + 1)) if count else []
        for index in np.argsort(-np.asarray(sizes), kind="stable")[: settings.max_boxes]:
            rows, cols = regions[index]
            boxes.append([cols.start * width / n, rows.start * height / n, cols.stop * width / n, rows.stop * height / n])
    return points, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


# --------------------------------------------------------------------------- mask filtering and dedupe


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability: IoU of the mask thresholded at ``threshold + offset`` and ``threshold - offset``."""
    flat = logits.flatten(1)
    inner = (flat > threshold + offset).sum(1).float()
    outer = (flat > threshold - offset).sum(1).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N,N]`` of bool masks ``[N,H,W]`` (one matrix product)."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def dedupe_by_iou(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the masks kept by greedy NMS on mask IoU, best score first."""
    if masks.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    iou = mask_iou(masks[order.to(masks.device)]).cpu()
    keep: list[int] = []
    for i in range(len(order)):
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(i)
    return order[keep]


def filter_decoded(logits: torch.Tensor, iou_pred: torch.Tensor, settings: FinderSettings) -> torch.Tensor:
    """Indices of decoded masks that pass quality, stability and area, de-duplicated, best first."""
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    stability = stability_score(logits).cpu()
    iou_pred = iou_pred.float().cpu()
    binary = logits > 0
    area = binary.flatten(1).float().mean(1).cpu()
    ok = (iou_pred >= settings.pred_iou_thresh) & (stability >= settings.stability_thresh) & (area >= settings.min_area)
    candidates = torch.nonzero(ok).flatten()
    kept = dedupe_by_iou(binary[candidates.to(binary.device)], (iou_pred * stability)[candidates], settings.dedupe_iou)
    return candidates[kept]


def upscale_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Low-resolution logits ``[N,h,w]`` covering the image -> bool masks ``[N,H,W]`` (bilinear, > 0)."""
    if logits.shape[0] == 0:
        return torch.zeros(0, height, width, dtype=torch.bool, device=logits.device)
    up = F.interpolate(logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return up[:, 0] > 0


# --------------------------------------------------------------------------- crops and ranking


def mask_boxes(masks: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each mask's pixels, right/bottom exclusive; (0,0,0,0) if empty."""
    boxes = []
    for mask in masks:
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        if len(rows) == 0:
            boxes.append((0, 0, 0, 0))
        else:
            boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    return boxes


def masked_crops(
    image: torch.Tensor, masks: torch.Tensor, size: int = 224, padding: float = 0.1, fill: float = 0.5
) -> torch.Tensor:
    """Square crops ``[N,3,size,size]`` around each mask, with everything outside the mask set to ``fill``.

    ``image`` is ``[H,W,3]``; the square is the mask's box grown by ``padding`` of its longer side,
    centred on the box and shifted to stay inside the image where it fits.
    """
    height, width = image.shape[0], image.shape[1]
    chw = image.permute(2, 0, 1).float()
    crops = []
    for mask, (x0, y0, x1, y1) in zip(masks, mask_boxes(masks)):
        if x1 <= x0:
            crops.append(torch.full((3, size, size), fill, device=image.device))
            continue
        side = min(max(height, width), int(round(max(x1 - x0, y1 - y0) * (1 + 2 * padding))))
        left = int(min(max((x0 + x1 - side) // 2, 0), max(width - side, 0)))
        top = int(min(max((y0 + y1 - side) // 2, 0), max(height - side, 0)))
        m = mask[top : top + side, left : left + side].float()
        crop = chw[:, top : top + side, left : left + side] * m + fill * (1 - m)
        if crop.shape[1] != crop.shape[2]:  # image smaller than the square on one axis: pad with fill
            padded = torch.full((3, side, side), fill, device=image.device)
            padded[:, : crop.shape[1], : crop.shape[2]] = crop
            crop = padded
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
        crops.append(crop[0].clamp(0, 1))
    if not crops:
        return torch.zeros(0, 3, size, size, device=image.device)
    return torch.stack(crops)


def rank(
    similarity: torch.Tensor, n_positive: int, logit_scale: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores, best class index and match flags from ``[N,T]`` cosine similarities.

    A softmax over all T texts (class names then negatives) at CLIP's logit scale; a mask's score
    is the probability of its best class name; it matches when that score reaches ``threshold``
    and no negative is more likely than its best class name.
    """
    if similarity.shape[0] == 0:
        empty = torch.zeros(0)
        return empty, empty.long(), empty.bool()
    probs = torch.softmax(similarity.float() * logit_scale, dim=1).cpu()
    scores, best = probs[:, :n_positive].max(1)
    beats_negatives = best == probs.argmax(1) if probs.shape[1] > n_positive else torch.ones_like(best, dtype=torch.bool)
    return scores, best, (scores >= threshold) & beats_negatives


# --------------------------------------------------------------------------- the finder


def find_in_image(
    image: torch.Tensor,
    segmenter: Segmenter,
    matcher: Matcher,
    text_embeds: torch.Tensor,
    names: list[str],
    threshold: float,
    settings: FinderSettings = FinderSettings(),
    mode: str = "guided",
) -> FindResult:
    """Find the objects named in ``names`` (the first rows of ``text_embeds``) in one ``[H,W,3]`` image."""
    height, width = image.shape[0], image.shape[1]
    pixels = to_uint8(image)
    prompts = decoded = 0
    if mode == "guided":
        segmenter.set_image(pixels)
        sim = matcher.patch_similarity(image.permute(2, 0, 1)[None], text_embeds)
        points, boxes = select_prompts(relevance_map(sim, len(names)), height, width, settings)
        prompts = len(points) + len(boxes)
        logits, iou_pred = segmenter.predict(points, boxes)
        decoded = logits.shape[0]
        keep = filter_decoded(logits, iou_pred, settings)
        masks = upscale_logits(logits[keep.to(logits.device)], height, width)
        area = masks.flatten(1).float().mean(1)
        masks = masks[(area > 0) & (area >= settings.min_area)]  # small masks can vanish when resized down
    elif mode == "automatic":
        masks, iou_pred = segmenter.automatic(pixels)
        decoded = masks.shape[0]
        masks = masks[dedupe_by_iou(masks, iou_pred, settings.dedupe_iou).to(masks.device)]
    else:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(FIND_MODES)}")
    crops = masked_crops(image, masks, settings.crop_size, settings.crop_padding)
    if crops.shape[0]:
        similarity = matcher.encode_images(crops) @ text_embeds.to(crops.device).T
    else:
        similarity = torch.zeros(0, text_embeds.shape[0])
    scores, best, matched = rank(similarity, len(names), float(matcher.logit_scale), threshold)
    order = torch.argsort(scores + matched.float(), descending=True, stable=True)  # matches first
    masks = masks[order.to(masks.device)].cpu()
    return FindResult(
        masks=masks,
        scores=scores[order],
        labels=[names[int(i)] for i in best[order]],
        matched=matched[order],
        prompts=prompts,
        decoded=decoded,
        boxes=mask_boxes(masks),
    )


def merged_mask(result: FindResult, merge: str, height: int, width: int) -> torch.Tensor:
    """``[H,W]`` float mask: the best match (``best``) or the union of all matches (``all``); zeros if none."""
    if merge not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {merge!r}; use one of {', '.join(MERGE_MODES)}")
    chosen = result.masks[result.matched]
    if chosen.shape[0] == 0:
        return torch.zeros(height, width)
    if merge == "best":
        chosen = chosen[:1]
    return chosen.any(0).float()


def report(results: list[FindResult]) -> str:
    """Scores as JSON text: per image whether it was found and every candidate mask, best first."""
    return json.dumps(
        [
            {
                "index": i,
                "found": r.found,
                "prompts": r.prompts,
                "decoded": r.decoded,
                "masks": [
                    {"label": label, "score": round(float(score), 4), "matched": bool(match), "box": list(box),
                     "area": round(float(mask.float().mean()), 5)}
                    for label, score, match, box, mask in zip(r.labels, r.scores, r.matched, r.boxes, r.masks)
                ],
            }
            for i, r in enumerate(results)
        ]
    )


def found_preview(image: torch.Tensor, result: FindResult, merge: str) -> torch.Tensor:
    """``[H,W,3]`` photo with the chosen masks tinted, outlined and labelled ("name 0.87")."""
    from PIL import Image, ImageDraw

    out = image.detach().float().cpu().clone()
    chosen = [i for i in range(len(result.labels)) if result.matched[i]]
    if merge == "best":
        chosen = chosen[:1]
    for k, i in enumerate(chosen):
        mask = result.masks[i].cpu()
        colour = torch.tensor(PALETTE[k % len(PALETTE)])
        out[mask] = out[mask] * 0.5 + colour * 0.5
        edge = mask & ~(-F.max_pool2d(-mask.float()[None, None], 3, stride=1, padding=1)[0, 0]).bool()
        out[edge] = colour
    picture = Image.fromarray(to_uint8(out))
    draw = ImageDraw.Draw(picture)
    for k, i in enumerate(chosen):
        x0, y0, _, _ = result.boxes[i]
        colour = tuple(int(c * 255) for c in PALETTE[k % len(PALETTE)])
        text = f"{result.labels[i]} {float(result.scores[i]):.2f}"
        draw.rectangle(draw.textbbox((x0 + 2, y0 + 2), text), fill=colour)
        draw.text((x0 + 2, y0 + 2), text, fill=(255, 255, 255))
    if not chosen:
        draw.text((4, 4), "not found", fill=(255, 64, 64))
    return torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)
