"""Regional conditioning maths (pure torch): masks on token grids, attention biases, instance blends, preview.

A region is a prompt plus a soft mask. Attention mode turns the masks into an additive bias on
cross-attention logits: a latent position gets ``log(weight * coverage)`` on each region's
tokens (``-inf`` where the region does not touch it, so its attention weight there is exactly
zero) and 0 on the base prompt's tokens. It runs as groups of queries over only the keys they
read (:func:`cross_attention_groups`, on :mod:`.region_groups`, which routes DiTs too).
Instances mode blends whole model outputs with the masks, exactly as ComfyUI blends masked
conds: ``sum(w_i m_i o_i) / sum(w_i m_i)``, with a background path weighted by the uncovered
part ``max(0, 1 - sum m_i)``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import region_groups
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


def memberships(grid: Sequence[torch.Tensor], items: int) -> torch.Tensor:
    """``[items, regions, tokens]`` mask values of each latent item's tokens, from one ``[Bm, h, w]`` grid mask per region."""
    return torch.stack([match_batch(m, items, f"region {index + 1}'s mask").reshape(items, -1).float()
                        for index, m in enumerate(grid)], dim=1)


def prompt_tokens(base_len: int, region_lens: Sequence[int], device=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(base prompt's token indices, each region prompt's)`` in a context of the base tokens then every region's."""
    ends = torch.tensor([base_len, *region_lens]).cumsum(0).tolist()
    return (torch.arange(base_len, device=device),
            [torch.arange(start, stop, device=device) for start, stop in zip(ends, ends[1:])])


def cross_attention_groups(membership: torch.Tensor, weights: Sequence[float], base_len: int,
                           region_lens: Sequence[int], copies: int = 1, shared_rows: int = region_groups.SHARED_ROWS,
                           ) -> list[region_groups.AttentionGroup]:
    """One latent item's cross-attention as groups of queries (:func:`region_groups.query_groups`).

    ``membership``: ``[regions, tokens]`` mask values. The context is the base prompt's tokens, then
    each region's, the whole repeated ``copies`` times (ComfyUI pads batched contexts by repeating
    them): a group reads the base tokens (bias 0) and the tokens of the regions it touches (bias
    ``log(weight * coverage)``) in every copy, and nothing else.
    """
    base, spans = prompt_tokens(base_len, region_lens, membership.device)
    total = base_len + sum(region_lens)
    groups = []
    for group in region_groups.query_groups(membership, weights, shared_rows):
        values = torch.cat([group.shares.new_zeros(len(group.shares), 1), torch.log(group.shares)], dim=1)
        bias = region_groups.spread(values, [base_len] + [region_lens[r] for r in group.regions])
        keys = torch.cat([base, *(spans[r] for r in group.regions)])
        keys = torch.cat([keys + copy * total for copy in range(copies)])
        groups.append(region_groups.AttentionGroup(group.tokens, keys, region_groups.unless_zero(bias.repeat(1, copies))))
    return groups


def cross_key_order(base_len: int, region_lens: Sequence[int], copies: int = 1) -> torch.Tensor:
    """Key order of the joined context (``copies`` times) in which the groups of the regions next to the
    base prompt are windows of one copy."""
    base, spans = prompt_tokens(base_len, region_lens)
    order = region_groups.key_order(base, spans)
    return torch.cat([order + copy * len(order) for copy in range(copies)])


def cross_attention_bias(
    grid: Sequence[torch.Tensor], weights: Sequence[float], base_len: int, region_lens: Sequence[int],
    context_len: int, items: int,
) -> torch.Tensor:
    """``[items, tokens, context_len]`` additive logit bias for cross-attention: the groups of
    :func:`cross_attention_groups` as one mask (the reference the grouped attention equals).

    ``grid``: one ``[Bm,h,w]`` mask per region on the query's token grid. The context is the base
    prompt's ``base_len`` tokens followed by each region's tokens, the whole repeated
    ``context_len // total`` times.
    """
    total = base_len + sum(region_lens)
    if context_len % total:
        raise ValueError(f"context of {context_len} tokens is not a repeat of the {total} region tokens")
    tokens = grid[0].shape[-2] * grid[0].shape[-1]
    return torch.stack([
        region_groups.dense_bias(cross_attention_groups(membership, weights, base_len, region_lens,
                                                        context_len // total), tokens, context_len, grid[0].device)
        for membership in memberships(grid, items)])


def partition(grid: Sequence[torch.Tensor], items: int) -> torch.Tensor:
    """``[R+1, items, tokens]`` soft region membership per token (regions, then the uncovered part), summing to 1."""
    flat = memberships(grid, items).transpose(0, 1)
    covered = flat.sum(0)
    background = (1.0 - covered).clamp(min=0.0)
    parts = torch.cat((flat, background.unsqueeze(0)))
    return parts / parts.sum(0, keepdim=True).clamp(min=1e-12)


def locality_rows(parts: torch.Tensor, strength: float, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` (query tokens) of :func:`locality_bias`, ``[items, stop - start, tokens]``, from
    ``parts = partition(grid, items)``: the bias a chunk of queries needs, without the whole matrix."""
    same = torch.einsum("rbp,rbq->bpq", parts[:, :, start:stop], parts)
    return torch.log((1.0 - strength * (1.0 - same)).clamp(min=0.0))


def locality_bias(grid: Sequence[torch.Tensor], strength: float, items: int) -> torch.Tensor:
    """``[items, tokens, tokens]`` self-attention bias cutting attention between different regions.

    Attention from token p to token q is scaled by ``1 - strength * differ(p, q)`` where
    ``differ = 1 - sum_r a_r(p) a_r(q)`` (``a``: soft membership, background included); at
    strength 1 with hard masks a token sees only tokens of its own region.
    """
    parts = partition(grid, items)  # [R+1, B, T]
    return locality_rows(parts, strength, 0, parts.shape[-1])


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
