"""Latent blending, preservation weights, paste-back and schedules (pure torch).

No ComfyUI imports. Masks go to the latent grid with ``masks.mask_to_latent`` (area averaging)
and are feathered with ``masks.feather``; shape rules come from ``shapes``. Inputs are never
written; every function returns new tensors or dicts.
"""
from __future__ import annotations

import math

import torch

from .masks import FALLOFFS, feather, mask_to_latent
from .shapes import as_image, as_mask, broadcast_batch, fit_mask_to_image, resize_image

SCHEDULE_FALLOFFS: tuple[str, ...] = ("none", "linear", "cosine")
DEFAULT_PIXELS_PER_CELL = 8  # SD, SDXL, Flux.1, Chroma, Z-Image and Qwen-Image VAEs
# Latents whose cells cover more pixels, told apart by their channel count when nothing else says:
# Flux.2's 128 channels are its VAE's 32 channels packed 2x2, so one cell is 16 x 16 px.
PIXELS_PER_CELL_BY_CHANNELS = {128: 16}


def as_latent(samples: torch.Tensor, name: str = "latent") -> torch.Tensor:
    """Check a ``[B,C,h,w]`` image latent or a ``[B,C,T,h,w]`` one (Qwen-Image's VAE adds a frame axis)."""
    if not isinstance(samples, torch.Tensor) or samples.ndim not in (4, 5):
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"{name} must be a LATENT with samples of shape [B,C,h,w] or [B,C,T,h,w], got {shape}")
    return samples


def pixels_per_cell(samples: torch.Tensor, declared: int | None = None) -> int:
    """Image pixels along one side of a latent cell: ``declared`` (the model's or the LATENT's own
    ``downscale_ratio_spacial``) when known, else from the channel count (Flux.2: 16), else 8."""
    if declared:
        return int(declared)
    return PIXELS_PER_CELL_BY_CHANNELS.get(samples.shape[1], DEFAULT_PIXELS_PER_CELL)


def latent_weight(
    mask: torch.Tensor, height: int, width: int, feather_px: float = 0.0,
    direction: str = "centred", falloff: str = "smoothstep", cell_px: int = DEFAULT_PIXELS_PER_CELL,
) -> torch.Tensor:
    """The mask on a ``height x width`` latent grid, ``[B,1,h,w]``.

    Area-averaged to the grid (a half-covered cell gets 0.5); with ``feather_px`` > 0 the shape
    (cells >= 0.5) is feathered in latent space over ``feather_px / cell_px`` cells.
    """
    weight = mask_to_latent(as_mask(mask), height, width)
    if feather_px > 0:
        weight = feather(weight, feather_px / cell_px, direction, falloff)
    return weight.unsqueeze(1)


def _like_latent(weight: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """A ``[B,1,h,w]`` weight (or source) shaped to broadcast over ``latent``'s frame axis, if it has one."""
    return weight.unsqueeze(2) if latent.ndim == 5 and weight.ndim == 4 else weight


def lerp_latents(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, names=("samples_a", "samples_b")) -> torch.Tensor:
    """``a * (1 - w) + b * w`` for ``[B,C,h,w]`` (or ``[B,C,T,h,w]``) latents and a ``[B,1,h,w]`` weight.

    Where ``w`` is exactly 0 the result is ``a`` and where it is exactly 1 it is ``b`` (bit for
    bit). Batches of 1 broadcast; other mismatches are errors naming the shapes.
    """
    a, b = as_latent(a, names[0]), as_latent(b, names[1])
    if a.ndim != b.ndim:  # Qwen-Image: an empty latent is [B,C,h,w], an encoded one [B,C,1,h,w]
        a, b = _like_latent(a, b), _like_latent(b, a)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"{names[0]} has shape {tuple(a.shape)} and {names[1]} has shape {tuple(b.shape)}: channels and "
            "size must match; encode both at the same image size (or use Upscale Latent) first"
        )
    a, b = broadcast_batch(a, b, names)
    weight = _like_latent(weight.to(device=a.device, dtype=a.dtype), a)
    a, weight = broadcast_batch(a, weight, (names[0], "mask"))
    b, weight = broadcast_batch(b, weight, (names[1], "mask"))
    return torch.lerp(a, b.to(a.dtype), weight)


def blend_latent_dicts(a: dict, b: dict, mask: torch.Tensor, feather_px: float = 0.0) -> dict:
    """Blend two LATENT dicts: ``b`` where the mask is 1, ``a`` where it is 0.

    The output keeps ``a``'s other keys (``noise_mask`` from ``a``, else from ``b``);
    ``batch_index`` is kept from whichever input has the output's batch size (``a`` first) and
    dropped if neither has it, so it always has one entry per output item.
    """
    sa, sb = as_latent(a.get("samples"), "samples_a"), as_latent(b.get("samples"), "samples_b")
    cell_px = pixels_per_cell(sa, a.get("downscale_ratio_spacial"))
    weight = latent_weight(mask, sa.shape[-2], sa.shape[-1], feather_px, cell_px=cell_px)
    samples = lerp_latents(sa, sb, weight)
    out = {k: v for k, v in a.items() if k not in ("samples", "batch_index", "noise_mask")}
    out["samples"] = samples
    noise_mask = a.get("noise_mask", b.get("noise_mask"))
    if noise_mask is not None:
        out["noise_mask"] = noise_mask
    for src in (a, b):
        index = src.get("batch_index")
        if index is not None and len(index) == samples.shape[0]:
            out["batch_index"] = list(index)
            break
    return out


# --------------------------------------------------------------------------- schedules


def schedule_weight(percent: float, start: float, end: float, falloff: str = "none") -> float:
    """Strength of a scheduled effect at sampling progress ``percent`` (0 = first step, 1 = done).

    0 outside ``[start, end]``. Inside: ``none`` = 1; ``linear`` falls from 1 at ``start`` to 0 at
    ``end``; ``cosine`` falls the same way along a half cosine (gentle at both ends).
    """
    if falloff not in SCHEDULE_FALLOFFS:
        raise ValueError(f"unknown schedule falloff {falloff!r}; use one of {', '.join(SCHEDULE_FALLOFFS)}")
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"schedule needs 0 <= start <= end <= 1, got start={start}, end={end}")
    if percent < start or percent > end:
        return 0.0
    if falloff == "none" or end <= start:
        return 1.0
    t = (percent - start) / (end - start)
    return 1.0 - t if falloff == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))


def validate_schedule(start: float, end: float, falloff: str) -> None:
    schedule_weight(start, start, end, falloff)


# --------------------------------------------------------------------------- preservation


def preserve(denoised: torch.Tensor, source: torch.Tensor, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Replace ``denoised`` by ``source`` where ``weight * strength`` is 1, blending elsewhere.

    ``source`` ``[1 or B, C, h, w]`` and ``weight`` ``[1 or B, 1, h, w]`` must match ``denoised``'s
    channels and size (errors name the shapes). A ``[B,C,T,h,w]`` ``denoised`` (Qwen-Image) takes
    them with or without the frame axis.
    """
    source, weight = _like_latent(source, denoised), _like_latent(weight, denoised)
    if source.shape[1:] != denoised.shape[1:]:
        raise ValueError(
            f"the source latent has shape {tuple(source.shape)} but the sampled latent has shape "
            f"{tuple(denoised.shape)}; give SCPreserveRegion the latent of the image being sampled "
            "(same size, e.g. VAE Encode of the same image)"
        )
    if weight.shape[-2:] != denoised.shape[-2:]:
        raise ValueError(
            f"the preserve mask is {tuple(weight.shape[-2:])} on the latent grid but the sampled latent is "
            f"{tuple(denoised.shape[-2:])}; connect the same latent to SCPreserveRegion and the sampler"
        )
    _, source = broadcast_batch(denoised, source, ("sampled latent", "source latent"))
    _, weight = broadcast_batch(denoised, weight, ("sampled latent", "mask"))
    w = weight if strength == 1.0 else weight * strength
    return torch.lerp(denoised, source, w)


# --------------------------------------------------------------------------- paste back


def paste_back(
    result: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, feather_px: float = 0.0,
    falloff: str = "smoothstep", colour_match: bool = False,
) -> torch.Tensor:
    """Restore ``source`` pixels in the kept area (mask >= 0.5) exactly, blending outward.

    The weight is ``feather(mask, feather_px, "outward")``: 1 on the kept shape (so those pixels
    equal the source bit for bit), falling to 0 over ``feather_px`` px outside it, where the
    result is untouched bit for bit. With ``feather_px`` 0 a soft mask is used as given.
    ``colour_match`` shifts the result's colours in the band (0 < w < 1) towards the source's
    band statistics (per-channel mean and std), faded by the same weight, before blending.
    """
    result, source = as_image(result, "image"), as_image(source, "source_image")
    if result.shape[-1] != source.shape[-1]:
        raise ValueError(
            f"image has shape {tuple(result.shape)} and source_image has shape {tuple(source.shape)}; "
            "paste-back needs the same channels (convert one to the other's first)"
        )
    if result.shape[1:3] != source.shape[1:3]:
        # A VAE round trip rounds sides down to a multiple of 8 (an 83 px photo comes back 80 px): the
        # result is scaled (bilinear) to the source photo's size, so the output keeps the photo's size.
        result = resize_image(result, source.shape[1], source.shape[2])
    if falloff not in FALLOFFS:
        raise ValueError(f"unknown falloff {falloff!r}; use one of {', '.join(FALLOFFS)}")
    result, mask = fit_mask_to_image(mask, result)
    source, mask = broadcast_batch(source, mask, ("source_image", "mask"))
    result, mask = broadcast_batch(result, mask, ("image", "mask"))
    result, source = broadcast_batch(result, source, ("image", "source_image"))
    weight = feather(mask, feather_px, "outward", falloff) if feather_px > 0 else mask
    weight = weight.to(device=result.device, dtype=result.dtype).unsqueeze(-1)
    base = result
    if colour_match:
        base = _match_band_colours(result, source, weight)
    source = source.to(device=result.device, dtype=result.dtype)
    out = torch.lerp(base, source, weight)
    return torch.where(weight >= 1.0, source, torch.where(weight <= 0.0, result, out))


def _match_band_colours(result: torch.Tensor, source: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Result with its band colours moved towards the source's (mean/std per channel and item)."""
    band = ((weight > 0) & (weight < 1)).to(result.dtype)  # [B,H,W,1]
    count = band.sum(dim=(1, 2), keepdim=True)
    if not bool((count > 1).any()):
        return result
    src = source.to(result.dtype)

    def stats(x):
        mean = (x * band).sum(dim=(1, 2), keepdim=True) / count.clamp(min=1)
        var = (((x - mean) * band) ** 2).sum(dim=(1, 2), keepdim=True) / count.clamp(min=1)
        return mean, var.sqrt()

    mr, sr = stats(result)
    ms, ss = stats(src)
    corrected = (result - mr) * (ss / sr.clamp(min=1e-4)) + ms
    corrected = torch.where(count > 1, corrected, result)
    return (result + weight * (corrected - result)).clamp(0.0, 1.0)
