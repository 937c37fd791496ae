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
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, device=device, dtype=dtype)
    g = torch.exp(-(x * x) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable gaussian over ``[N,1,H,W]``, only where the window fits (no padding)."""
    g = _gaussian_window(x.device, x.dtype)
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
    weights = torch.tensor(_LUMA, device=image.device, dtype=image.dtype)
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
