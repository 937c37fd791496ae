"""Image-quality numbers for regional edits: what was kept, what changed, and whether seams show.

SSIM follows the common reference convention (scikit-image with ``gaussian_weights=True``,
sigma 1.5, 11-px window, population covariance, data range 1), so its numbers can be compared
with published ones; the map is computed only where the whole window fits (the frame is left
out, as the reference does when averaging).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masks import grow
from .shapes import as_image, broadcast_batch, fit_mask_to_image

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's truncate=3.5 window
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights of R, G, B in a grey level


def gaussian_kernel(radius: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1-D gaussian of ``2 * radius + 1`` taps (separable blurs apply it along each axis)."""
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    g = torch.exp(-(x * x) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable gaussian over ``[N,1,H,W]``, only where the window fits (no padding)."""
    g = gaussian_kernel(_SSIM_RADIUS, _SSIM_SIGMA, x.device, x.dtype)
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two ``[B,H,W,C]`` images averaged over channels: ``[B,H-10,W-10]``."""
    a, b = broadcast_batch(as_image(a, "a"), as_image(b, "b"), ("a", "b"))
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"images differ in size: {tuple(a.shape)} and {tuple(b.shape)}; compare images of one size")
    if min(a.shape[1:3]) <= 2 * _SSIM_RADIUS:
        raise ValueError(f"SSIM needs images larger than {2 * _SSIM_RADIUS + 1} px on each side, got {tuple(a.shape[1:3])}")
    batch, channels = a.shape[0], a.shape[-1]
    x = a.movedim(-1, 1).reshape(batch * channels, 1, *a.shape[1:3]).double()
    y = b.movedim(-1, 1).reshape(batch * channels, 1, *b.shape[1:3]).double()
    mx, my = _blur_valid(x), _blur_valid(y)
    vx = _blur_valid(x * x) - mx * mx
    vy = _blur_valid(y * y) - my * my
    cxy = _blur_valid(x * y) - mx * my
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.view(batch, channels, *s.shape[-2:]).mean(dim=1).float()


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over H,W per batch item; NaN where the weights are all zero (nothing to measure)."""
    total = weights.sum(dim=(-2, -1))
    return (values * weights).sum(dim=(-2, -1)) / total.where(total > 0, torch.nan)


def preservation(source: torch.Tensor, result: torch.Tensor, mask: torch.Tensor) -> dict[str, list[float]]:
    """How well ``result`` kept ``source`` outside ``mask`` (the edited area) and how much it changed inside.

    Per image: PSNR (dB, inf when identical), SSIM and max abs difference over the kept area
    (weight 1 - mask), and mean abs change over the edited area (weight mask). The mask is
    resized to the images (bilinear). A value is NaN when its area is empty.
    """
    source, result = broadcast_batch(as_image(source, "source"), as_image(result, "result"), ("source", "result"))
    if source.shape != result.shape:
        raise ValueError(
            f"source {tuple(source.shape)} and result {tuple(result.shape)} differ in size; "
            "scale the result back to the source size first"
        )
    source, mask = fit_mask_to_image(mask, source)
    result, mask = broadcast_batch(result, mask, ("result", "mask"))
    keep = 1.0 - mask
    diff = (result - source).abs().amax(dim=-1)
    mse = _weighted_mean(((result - source) ** 2).mean(dim=-1), keep)
    psnr = torch.where(mse > 0, 10 * torch.log10(1.0 / mse), torch.full_like(mse, math.inf))
    psnr = torch.where(mse.isnan(), mse, psnr)
    r = _SSIM_RADIUS
    ssim = _weighted_mean(ssim_map(source, result), keep[:, r:-r, r:-r])
    max_diff = torch.where(keep > 0.5, diff, torch.zeros_like(diff)).amax(dim=(-2, -1))
    max_diff = torch.where((keep > 0.5).any(dim=(-2, -1)), max_diff, torch.nan)
    change = _weighted_mean((result - source).abs().mean(dim=-1), mask)
    return {
        "psnr_outside": psnr.tolist(),
        "ssim_outside": ssim.tolist(),
        "max_abs_diff_outside": max_diff.tolist(),
        "mean_change_inside": change.tolist(),
    }


def gradient_energy(image: torch.Tensor) -> torch.Tensor:
    """Squared Sobel gradient magnitude of the luminance, ``[B,H,W]`` (replicate-padded)."""
    image = as_image(image)
    weights = torch.tensor(LUMA, device=image.device, dtype=image.dtype)
    luma = (image[..., :3] * weights[: image.shape[-1]]).sum(-1) if image.shape[-1] >= 3 else image[..., 0]
    x = F.pad(luma.unsqueeze(1), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=image.device, dtype=image.dtype) / 8
    gx = F.conv2d(x, kx.view(1, 1, 3, 3))
    gy = F.conv2d(x, kx.t().contiguous().view(1, 1, 3, 3))
    return (gx * gx + gy * gy).squeeze(1)


def seam_score(image: torch.Tensor, mask: torch.Tensor, band_px: int = 4) -> dict[str, list[float]]:
    """Gradient energy along the mask's edge relative to its surroundings, per image.

    band: pixels within ``band_px`` of the edge; surroundings: pixels between ``band_px`` and
    ``3 * band_px`` from it, on both sides. A pasted or alpha-blended region leaves a step at its
    edge, so the ratio band/surroundings rises above 1; a seamless blend stays near 1.
    """
    if band_px < 1:
        raise ValueError(f"band_px must be at least 1, got {band_px}")
    image = as_image(image)
    image, mask = fit_mask_to_image(mask, image)
    band = grow(mask, band_px) - grow(mask, -band_px)
    ring = grow(mask, 3 * band_px) - grow(mask, -3 * band_px) - band
    energy = gradient_energy(image)
    band_energy, ring_energy = _weighted_mean(energy, band), _weighted_mean(energy, ring)
    ratio = band_energy / ring_energy.clamp_min(1e-12)
    return {"seam_ratio": ratio.tolist(), "band_energy": band_energy.tolist(), "surrounding_energy": ring_energy.tolist()}


def leakage_matrix(crop_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``[N,N]`` cosine similarity of each region's crop (row) to each region's text (column).

    The diagonal is each region's CLIP score against its own text; a large off-diagonal value
    means a region also looks like another region's description (the prompt leaked).
    """
    if crop_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"{crop_embeds.shape[0]} region crops but {text_embeds.shape[0]} texts; give one text per region")
    return F.normalize(crop_embeds.float(), dim=-1) @ F.normalize(text_embeds.float().to(crop_embeds.device), dim=-1).T


def region_report(matrix: torch.Tensor, texts: list[str]) -> list[dict]:
    """Per region: its own score, the most similar other text and the margin (own minus best other; < 0 = leaked)."""
    rows = []
    for i, text in enumerate(texts):
        own = float(matrix[i, i])
        others = [(float(matrix[i, j]), texts[j]) for j in range(len(texts)) if j != i]
        best, best_text = max(others) if others else (math.nan, None)
        rows.append({"text": text, "clip_score": own, "best_other_text": best_text, "best_other_score": best,
                     "margin": own - best if others else math.nan})
    return rows


def pose_bbox_size(pose: torch.Tensor) -> float:
    """Larger side of the box around a ``[18,3]`` pose's visible keypoints (0 when fewer than two)."""
    visible = pose[pose[:, 2] > 0, :2]
    if visible.shape[0] < 2:
        return 0.0
    return float((visible.amax(0) - visible.amin(0)).max())


def pose_errors(target: torch.Tensor, detected: torch.Tensor, threshold: float = 0.1) -> list[dict]:
    """Per person of ``[P,18,3]`` poses (x px, y px, confidence; 0 = missing): PCK and mean pixel error.

    PCK: fraction of the target's visible keypoints found within ``threshold`` x the target's
    bbox size (its larger side); a keypoint the result lacks counts as wrong. The mean error is
    over keypoints visible in both (NaN when there are none).
    """
    if target.shape != detected.shape or target.shape[-2:] != (18, 3):
        raise ValueError(f"poses must both be [people, 18, 3], got {tuple(target.shape)} and {tuple(detected.shape)}")
    out = []
    for want, got in zip(target.double(), detected.double()):
        wanted, found = want[:, 2] > 0, got[:, 2] > 0
        both = wanted & found
        distance = torch.linalg.vector_norm(want[:, :2] - got[:, :2], dim=-1)
        size = pose_bbox_size(want)
        correct = both & (distance <= threshold * size)
        count = int(wanted.sum())
        out.append({
            "pck": float(correct.sum()) / count if count else math.nan,
            "mean_error_px": float(distance[both].mean()) if both.any() else math.nan,
            "keypoints_target": count,
            "keypoints_matched": int(both.sum()),
            "bbox_size_px": size,
        })
    return out


def poses_from_keypoints(keypoints: dict, height: int, width: int) -> torch.Tensor:
    """``[P,18,3]`` poses in ``height x width`` pixels from one image's POSE_KEYPOINT dict (OpenPose JSON).

    Coordinates are scaled from the dict's canvas size; all-normalised coordinates (<= 1, as
    some editors write) are taken as fractions of the canvas.
    """
    if not isinstance(keypoints, dict) or "people" not in keypoints:
        raise ValueError("pose keypoints must be OpenPose JSON with a 'people' list (e.g. from 'MediaPipe Pose as OpenPose (SC)')")
    poses = []
    for person in keypoints["people"]:
        flat = person.get("pose_keypoints_2d") or []
        if len(flat) < 54:
            raise ValueError(f"a person has {len(flat) // 3} body keypoints; COCO-18 poses (18 keypoints) are needed")
        poses.append(torch.tensor(flat[:54], dtype=torch.float64).view(18, 3))
    if not poses:
        return torch.zeros(0, 18, 3, dtype=torch.float64)
    pose = torch.stack(poses)
    canvas_h = float(keypoints.get("canvas_height") or height)
    canvas_w = float(keypoints.get("canvas_width") or width)
    visible = pose[..., 2] > 0
    if visible.any() and float(pose[..., :2][visible].abs().max()) <= 1.0:
        canvas_h, canvas_w = 1.0, 1.0
    pose[..., 0] *= width / canvas_w
    pose[..., 1] *= height / canvas_h
    return pose
