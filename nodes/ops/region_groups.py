"""Which query reads which key: the one routing of region prompts, for UNets and DiTs alike (pure torch).

A latent token ``p`` reads the base prompt with weight 1 and region ``r``'s prompt with its share
``w_r m_r(p)`` (the region's weight times its mask's coverage of ``p``): an additive logit bias
of ``log share`` on the region's tokens, relative to the base tokens. Where a mask does not
reach (share 0) the bias is ``-inf``: those keys are not read at all.

Most latent tokens lie inside one region or none, and many share the same shares, so the
attention runs as a few groups of queries (:func:`query_groups`). Each group reads only the
base tokens and the tokens of the regions it touches, with no bias (every share 1) or one bias
row. Tokens at a soft edge (fewer than :data:`SHARED_ROWS` with the same shares) go together
into one group with a bias row each. UNet cross-attention (``ops.regions``) and DiT joint
attention (``ops.dit_regions``) build their keys and biases from these same groups, and
:func:`dense_bias` spells the groups out as one mask (the reference, and the fallback where
groups cannot serve).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

# Tokens sharing their shares with at least this many others get a group with one bias row; the
# rest (a feathered edge, cells a mask's border cuts) share a group with a row each.
SHARED_ROWS = 64

# A group attends over a window of the ordered keys when it is at most this much wider than its keys
# (the extra keys get -inf); otherwise its keys are gathered (a copy of them per call).
WINDOW_SLACK = 1.25


@dataclass(frozen=True)
class QueryGroup:
    """Latent tokens that read the same region prompts: ``shares`` ``[1 or Q, len(regions)]``, all > 0,
    one row for every token or (an edge group) a row each."""

    tokens: torch.Tensor
    regions: tuple[int, ...]
    shares: torch.Tensor


def query_groups(membership: torch.Tensor, weights: Sequence[float],
                 shared_rows: int = SHARED_ROWS) -> list[QueryGroup]:
    """The latent tokens of one item as groups (see module doc); every token is in exactly one.

    ``membership``: ``[regions, tokens]`` mask values of the latent tokens on the attention's grid.
    """
    if len(weights) != membership.shape[0]:
        raise ValueError(f"{membership.shape[0]} region masks and {len(weights)} weights must match")
    weighted = membership.float() * torch.tensor([float(w) for w in weights], device=membership.device).view(-1, 1)
    patterns, pattern_of, _ = unique_rows((weighted > 0).T)
    groups = []
    for index, pattern in enumerate(patterns):
        tokens = (pattern_of == index).nonzero().flatten()
        seen = tuple(pattern.nonzero().flatten().tolist())
        if not seen:
            groups.append(QueryGroup(tokens, seen, weighted.new_ones(1, 0)))
            continue
        shares = weighted[list(seen)][:, tokens].T
        rows, row_of, counts = unique_rows(shares)
        varied = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
        for row_index in range(len(rows)):
            members = row_of == row_index
            if counts[row_index] < shared_rows and len(rows) > 1:
                varied |= members
                continue
            groups.append(QueryGroup(tokens[members], seen, rows[row_index:row_index + 1]))
        if varied.any():
            groups.append(QueryGroup(tokens[varied], seen, shares[varied]))
    return groups


def unique_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.unique(values, dim=0, return_inverse=True, return_counts=True)`` for a ``[rows, columns]`` tensor,
    without its row sort where a cheaper way gives the same: all rows alike (hard masks), one column,
    or yes/no values (read as binary numbers). The plans are built every run at every resolution."""
    if values.shape[0] and bool((values == values[:1]).all()):
        inverse = values.new_zeros(values.shape[0], dtype=torch.long)
        return values[:1], inverse, torch.tensor([values.shape[0]], device=values.device)
    if values.shape[1] == 1:
        rows, inverse, counts = torch.unique(values[:, 0], return_inverse=True, return_counts=True)
        return rows.unsqueeze(1), inverse, counts
    if values.dtype == torch.bool and values.shape[1] < 63:
        bits = 2 ** torch.arange(values.shape[1] - 1, -1, -1, device=values.device)  # first column highest: same order
        codes, inverse, counts = torch.unique((values.long() * bits).sum(1), return_inverse=True, return_counts=True)
        return (codes.unsqueeze(1) // bits) % 2 == 1, inverse, counts
    return torch.unique(values, dim=0, return_inverse=True, return_counts=True)


def spread(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """``[rows, sum(lengths)]``: column ``i`` of ``values`` repeated ``lengths[i]`` times (one bias per key)."""
    return values.repeat_interleave(torch.tensor(list(lengths), device=values.device), dim=1)


@dataclass(frozen=True)
class AttentionGroup:
    """Query tokens that attend to the same keys: ``softmax(q k^T / sqrt(d) + bias)`` over ``keys`` only.

    Every key left out has bias ``-inf`` in the full picture, so attending to ``keys`` alone is the
    same attention without the dense mask. ``bias``: ``[1, K]`` (one row for every query),
    ``[Q, K]`` (a row each: tokens at a soft mask's edge) or None (no bias).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    bias: torch.Tensor | None


def unless_zero(bias: torch.Tensor) -> torch.Tensor | None:
    return None if bool((bias == 0).all()) else bias


def dense_bias(groups: Sequence[AttentionGroup], queries: int, keys: int, device=None) -> torch.Tensor:
    """``[queries, keys]`` float32 additive bias: the groups as one mask (``-inf`` on every key a group leaves out)."""
    bias = torch.full((queries, keys), float("-inf"), device=device)
    for group in groups:
        rows = bias.new_full((len(group.queries), keys), float("-inf"))
        rows[:, group.keys] = 0.0 if group.bias is None else group.bias
        bias[group.queries] = rows
    return bias


@dataclass(frozen=True)
class KeyWindow:
    """One group's attention over the keys in a key order: a window of them (``start``..``stop``,
    a view, no copy) or, when the window would be much wider than the keys, the positions to gather."""

    queries: torch.Tensor
    start: int
    stop: int
    gather: torch.Tensor | None   # positions in the ordered keys; None = the window
    bias: torch.Tensor | None     # [1 or Q, keys of the window or gather]


def key_order(base: torch.Tensor, spans: Sequence[torch.Tensor], middle: torch.Tensor | None = None) -> torch.Tensor:
    """Token order of the keys: half the region prompts, the base text, ``middle`` (a DiT's image), the other half.

    The keys of a token inside one region (base text, its region's text, ``middle``) are then one
    window of this order for the regions next to the base, and a few regions wider for the others."""
    half = (len(spans) + 1) // 2
    middle = [] if middle is None else [middle]
    return torch.cat([*spans[:half], base, *middle, *spans[half:]])


def key_windows(groups: Sequence[AttentionGroup], order: torch.Tensor,
                slack: float = WINDOW_SLACK) -> list[KeyWindow]:
    """Each group's keys as a window (or gather) of the keys in ``order``, with the bias to match.

    ``slack`` 1 takes exact windows only: no group reads a key it would not read, so no bias is added."""
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order), device=order.device)
    windows = []
    for group in groups:
        keys = position[group.keys]
        start, stop = int(keys.min()), int(keys.max()) + 1
        if stop - start > slack * len(keys):
            windows.append(KeyWindow(group.queries, start, stop, keys, group.bias))
            continue
        bias = group.bias if group.bias is not None else torch.zeros(1, len(keys), device=keys.device)
        spread_bias = bias.new_full((bias.shape[0], stop - start), float("-inf"))
        spread_bias[:, keys - start] = bias
        windows.append(KeyWindow(group.queries, start, stop, None, unless_zero(spread_bias)))
    return windows
