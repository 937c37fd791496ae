"""Regional conditioning maths (pure torch): masks on token grids, attention biases, instance blends, preview.

A region is a prompt plus a soft mask. Attention mode turns the masks into an additive bias on
cross-attention logits: a latent position gets ``log(weight * coverage)`` on each region's
tokens (``-inf`` where the region does not touch it, so its attention weight there is exactly
zero) and 0 on the base prompt's tokens. Instances mode blends whole model outputs with the
masks, exactly as ComfyUI blends masked conds: ``sum(w_i m_i o_i) / sum(w_i m_i)``, with a
background path weighted by the uncovered part ``max(0, 1 - sum m_i)``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .masks import mask_to_latent
from .shapes import as_mask, match_batch, resize_mask

# The pack's preview colours (RGB 0..1), one per region or found object in order, repeating.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.20, 0.20), (0.20, 0.55, 0.95), (0.25, 0.80, 0.30), (0.95, 0.75, 0.15),
    (0.70, 0.30, 0.85), (0.10, 0.80, 0.80), (0.95, 0.45, 0.70), (0.55, 0.40, 0.25),
)
NEUTRAL_CANVAS = 0.5


def latent_masks(masks: Sequence[torch.Tensor], latent_hw: tuple[int, int]) -> list[torch.Tensor]:
    """Each ``[Bm,H,W]`` mask resized to the latent (bilinear, as ComfyUI resizes conditioning masks)."""
    return [resize_mask(as_mask(m), *latent_hw) for m in masks]


def grid_masks(masks: Sequence[torch.Tensor], latent_hw: tuple[int, int], grid_hw: tuple[int, int]) -> list[torch.Tensor]:
    """Masks on a token grid: resized to the latent, then area-averaged to the grid (untouched cells stay 0)."""
    return [mask_to_latent(m, *grid_hw) for m in latent_masks(masks, latent_hw)]


def cross_attention_bias(
    grid: Sequence[torch.Tensor], weights: Sequence[float], base_len: int, region_lens: Sequence[int],
    context_len: int, items: int,
) -> torch.Tensor:
    """``[items, tokens, context_len]`` additive logit bias for cross-attention.

    ``grid``: one ``[Bm,h,w]`` mask per region on the query's token grid. The context is the base
    prompt's ``base_len`` tokens followed by each region's tokens, the whole repeated
    ``context_len // total`` times (ComfyUI pads batched contexts by repeating them).
    """
    total = base_len + sum(region_lens)
    if context_len % total:
        raise ValueError(f"context of {context_len} tokens is not a repeat of the {total} region tokens")
    tokens = grid[0].shape[-2] * grid[0].shape[-1] if grid else 0
    columns = [torch.zeros(items, tokens, base_len, device=grid[0].device)]
    for index, (m, w, n) in enumerate(zip(grid, weights, region_lens)):
        m = match_batch(m, items, f"region {index + 1}'s mask").reshape(items, tokens, 1).float()
        columns.append(torch.log(m * float(w)).expand(items, tokens, n))
    bias = torch.cat(columns, dim=2)
    return bias.repeat(1, 1, context_len // total)


def partition(grid: Sequence[torch.Tensor], items: int) -> torch.Tensor:
    """``[R+1, items, tokens]`` soft region membership per token (regions, then the uncovered part), summing to 1."""
    flat = torch.stack([match_batch(m, items, f"region {index + 1}'s mask").reshape(items, -1).float()
                        for index, m in enumerate(grid)])
    covered = flat.sum(0)
    background = (1.0 - covered).clamp(min=0.0)
    parts = torch.cat((flat, background.unsqueeze(0)))
    return parts / parts.sum(0, keepdim=True).clamp(min=1e-12)


def locality_bias(grid: Sequence[torch.Tensor], strength: float, items: int) -> torch.Tensor:
    """``[items, tokens, tokens]`` self-attention bias cutting attention between different regions.

    Attention from token p to token q is scaled by ``1 - strength * differ(p, q)`` where
    ``differ = 1 - sum_r a_r(p) a_r(q)`` (``a``: soft membership, background included); at
    strength 1 with hard masks a token sees only tokens of its own region.
    """
    a = partition(grid, items)  # [R+1, B, T]
    same = torch.einsum("rbp,rbq->bpq", a, a)
    scale = (1.0 - strength * (1.0 - same)).clamp(min=0.0)
    return torch.log(scale)


def background(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``max(0, 1 - sum m_i)``: where no region reaches, at the largest mask size (masks resized to it)."""
    masks = [as_mask(m).float() for m in masks]
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    batch = max(m.shape[0] for m in masks)
    covered = sum(match_batch(resize_mask(m, height, width), batch) for m in masks)
    return (1.0 - covered).clamp(min=0.0)


def blend_paths(outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j o_j / sum_j w_j`` over the first (path) dimension, as ComfyUI's ``calc_cond_batch`` sums masked conds.

    ``weights`` broadcast against ``outputs``. The tiny count ComfyUI starts from (1e-37) is kept
    so an all-zero weight gives 0, not NaN.
    """
    weights = weights.to(outputs)
    return (outputs * weights).sum(0) / (weights.sum(0) + 1e-37)


def feather_masks(masks: Sequence[torch.Tensor], pixels: int) -> list[torch.Tensor]:
    """Soften every mask's edge over ``pixels`` (centred on the edge; 0 leaves masks unchanged)."""
    from .masks import feather

    return [as_mask(m) if pixels <= 0 else feather(m, float(pixels), "centred") for m in masks]


def mask_overlay(masks: Sequence[torch.Tensor], image: torch.Tensor | None, height: int = 512, width: int = 512,
            alpha: float = 0.55) -> torch.Tensor:
    """``[B,H,W,3]`` image: each region's colour laid over ``image`` (or a grey canvas) with its mask."""
    if image is None:
        batch = max([as_mask(m).shape[0] for m in masks] or [1])
        canvas = torch.full((batch, height, width, 3), NEUTRAL_CANVAS)
    else:
        canvas = image[..., :3].float().clone()
    out = canvas
    for index, mask in enumerate(masks):
        m = resize_mask(as_mask(mask).float(), out.shape[1], out.shape[2]).to(out)
        if m.shape[0] != out.shape[0]:  # the preview shows the first mask of a mismatched batch
            m = m[:1].expand(out.shape[0], *m.shape[1:])
        colour = torch.tensor(PALETTE[index % len(PALETTE)], dtype=out.dtype, device=out.device)
        a = (m * alpha).unsqueeze(-1)
        out = out * (1 - a) + colour * a
    return out.clamp(0.0, 1.0)
