"""Maths of mask-in-the-loop adapter training: Sobel edges, the masked Sobel loss, z0 estimates.

Pure torch; no ComfyUI imports. Latents are ``[B,C,H,W]``; masks ``[B|1,1,H,W]`` at latent size.

ComfyUI's eps/v models work in the "variance exploding" form x_t = z0 + sigma * eps (the UNet
input is x_t / sqrt(sigma^2 + 1), which is the paper's z_t = sqrt(a) z0 + sqrt(1-a) eps with
a = 1 / (1 + sigma^2)). Both forms of the z0 estimate are here so a test can check them
against the model's own ``model_sampling``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradients ``[B,C,2,H,W]`` (x then y), replicate-padded so the size is kept."""
    if x.ndim != 4:
        raise ValueError(f"sobel needs a [B,C,H,W] latent, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)  # [2C,1,3,3]
    out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return out.view(x.shape[0], channels, 2, *x.shape[2:])


def masked_sobel_loss(z0_pred: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the Sobel maps of ``z0_pred`` and ``z0`` inside ``mask``.

    Only cells whose whole 3x3 Sobel window lies in the mask's support are measured (weighted by
    the soft mask), so values outside the mask get exactly zero gradient and the mask border
    adds no edges of its own. Zero when ``z0_pred == z0`` or the two differ by a constant; zero
    for an empty mask (or one thinner than 3 cells).
    """
    if z0_pred.shape != z0.shape:
        raise ValueError(f"z0_pred {tuple(z0_pred.shape)} and z0 {tuple(z0.shape)} must have the same shape")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != z0.shape[-2:]:
        raise ValueError(f"mask must be [B,1,H,W] at the latent size {tuple(z0.shape[-2:])}, got {tuple(mask.shape)}")
    mask = mask.to(z0_pred)
    support = (mask > 0).to(z0_pred)
    interior = -F.max_pool2d(-support, 3, stride=1, padding=1)  # erosion; the image edge counts as inside
    diff = sobel(z0_pred) - sobel(z0)
    weight = (mask * interior).unsqueeze(2)  # [B,1,1,H,W]
    total = (weight * diff.square()).sum()
    count = weight.expand_as(diff).sum()
    return total / count.clamp_min(1e-8)


def z0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z0' = x_t - sigma * eps (ComfyUI's form, x_t = z0 + sigma * eps); ``sigma`` is ``[B]``."""
    return x_t - eps * _per_sample(sigma, x_t)


def eps_from_z0(x_t: torch.Tensor, z0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise a z0 estimate implies: (x_t - z0) / sigma (the inverse of ``z0_from_eps``)."""
    return (x_t - z0) / _per_sample(sigma, x_t)


def z0_from_eps_vp(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The paper's form: z0' = (z_t - sqrt(1 - a) eps) / sqrt(a), ``alpha_bar`` ``[B]``."""
    a = _per_sample(alpha_bar, z_t)
    return (z_t - (1.0 - a).sqrt() * eps) / a.sqrt()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(values, device=like.device, dtype=like.dtype).reshape(-1)
    return values.view(-1, *([1] * (like.ndim - 1)))
