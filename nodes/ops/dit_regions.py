"""Regional prompts in a DiT's joint attention (pure torch): the logit bias over ``[text; image]`` tokens.

DiTs (Flux, Qwen-Image, Z-Image) have no cross-attention: text and image tokens go through one
attention over the joined sequence. Region prompts are appended to the base prompt's tokens and
this bias routes them:

- image token ``p`` -> base text: ``log(1 / n(p))``; -> region ``r``'s text: ``log(w_r m_r(p) / n(p))``
  with ``n(p) = 1 + sum_r w_r m_r(p)``; -> image: 0. Base and regions split the text attention as
  on UNets (``1 : w_r m_r``), and the text as a whole keeps the share one prompt has, so a region
  covering everything with the base prompt is the plain prompt. Outside a region (``m_r = 0``) its
  text gets exactly zero attention.
- base text -> base text and image: 0; -> region text: ``-inf``.
- region ``r``'s text -> its own text: 0; -> image ``p``: ``log m_r(p)``; -> any other text: ``-inf``.

Image tokens after the token grid (padding, reference images) belong to no region. Text tokens
outside the joined prompt (a model's own padding) count as base tokens.

A ``-inf`` bias means "not a key at all", and most queries share their bias row, so the attention
runs as a few groups (:func:`joint_attention_groups`), each over only the keys it may see and
with at most a one-row bias: no ``S x S`` mask in memory, and the fast unmasked or row-masked
kernels. :func:`joint_attention_bias` spells the same groups out as the dense mask, for the
cases groups cannot express (another mask already in place, self-attention locality).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .regions import locality_bias, match_batch


@dataclass(frozen=True)
class JointLayout:
    """Where each group of tokens sits in one joint-attention sequence."""

    text_len: int                 # text tokens in the sequence, the model's padding included
    joined_start: int             # index of the base prompt's first token within the text
    base_len: int
    region_lens: tuple[int, ...]
    image_len: int                # tokens of the image's token grid, right after the text
    seq_len: int                  # the whole sequence

    def __post_init__(self):
        joined_end = self.joined_start + self.base_len + sum(self.region_lens)
        if self.joined_start < 0 or joined_end > self.text_len or self.text_len + self.image_len > self.seq_len:
            raise ValueError(f"inconsistent joint-attention layout {self}")

    def region_span(self, index: int) -> tuple[int, int]:
        start = self.joined_start + self.base_len + sum(self.region_lens[:index])
        return start, start + self.region_lens[index]


def _text_tokens(layout: JointLayout, device=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(each region prompt's token indices, the base text's)``; the model's own text padding counts as base."""
    spans = [torch.arange(*layout.region_span(r), device=device) for r in range(len(layout.region_lens))]
    in_region = torch.zeros(layout.text_len, dtype=torch.bool, device=device)
    for span in spans:
        in_region[span] = True
    return spans, torch.arange(layout.text_len, device=device)[~in_region]


@dataclass(frozen=True)
class AttentionGroup:
    """Query tokens that attend to the same keys: ``softmax(q k^T / sqrt(d) + bias)`` over ``keys`` only.

    Every key left out has bias ``-inf`` in the full picture, so attending to ``keys`` alone is the
    same attention without the ``S x S`` mask. ``bias``: ``[1, K]`` (one row for every query),
    ``[Q, K]`` (a row each: tokens at a soft mask's edge) or None (no bias).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    bias: torch.Tensor | None


# Image tokens sharing their mask values with at least this many others get a group with one bias
# row; the rest (a feathered edge, cells a mask's border cuts) share a group with a row each.
SHARED_ROWS = 64


def joint_attention_groups(membership: torch.Tensor, weights: Sequence[float], layout: JointLayout,
                           shared_rows: int = SHARED_ROWS) -> list[AttentionGroup]:
    """The attention of one latent item as groups of queries (see module doc); they cover every token once.

    ``membership``: ``[regions, image_len]`` mask values of the image's tokens. Most image tokens
    are inside one region or none, so a handful of groups with a one-row bias replace the dense
    ``S x S`` mask, and each group attends only to the keys it may see: the region text other
    regions own costs nothing.
    """
    text, seq = layout.text_len, layout.seq_len
    device = membership.device
    spans, base_text = _text_tokens(layout, device)
    image = torch.arange(text, seq, device=device)
    values = torch.zeros(len(spans), seq - text, device=device)
    values[:, :layout.image_len] = membership.float()
    weighted = values * torch.tensor([float(w) for w in weights], device=device).view(-1, 1)
    share = 1.0 + weighted.sum(0)

    groups = [AttentionGroup(base_text, torch.cat([base_text, image]), None)]
    for span, row in zip(spans, values):
        seen = row > 0
        bias = torch.cat([torch.zeros(len(span), device=device), torch.log(row[seen])]).unsqueeze(0)
        groups.append(AttentionGroup(span, torch.cat([span, image[seen]]), _unless_zero(bias)))

    support = weighted > 0
    patterns, pattern_of = torch.unique(support.T, dim=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        tokens = (pattern_of == index).nonzero().flatten()
        seen = pattern.nonzero().flatten().tolist()
        keys = torch.cat([base_text, *(spans[r] for r in seen), image])
        # per token: one value for the base text, one per seen region text, 0 for the image
        text_bias = torch.cat([-torch.log(share[tokens]).unsqueeze(1),
                               torch.log(weighted[seen][:, tokens] / share[tokens]).T], dim=1)
        lengths = torch.tensor([len(base_text)] + [len(spans[r]) for r in seen], device=device)
        rows, row_of, counts = torch.unique(text_bias, dim=0, return_inverse=True, return_counts=True)
        varied = torch.zeros(len(tokens), dtype=torch.bool, device=device)
        for row_index in range(len(rows)):
            members = row_of == row_index
            if counts[row_index] < shared_rows and len(rows) > 1:
                varied |= members
                continue
            bias = torch.cat([rows[row_index].repeat_interleave(lengths), torch.zeros(len(image), device=device)])
            groups.append(AttentionGroup(text + tokens[members], keys, _unless_zero(bias.unsqueeze(0))))
        if varied.any():
            bias = torch.cat([text_bias[varied].repeat_interleave(lengths, dim=1),
                              torch.zeros(int(varied.sum()), len(image), device=device)], dim=1)
            groups.append(AttentionGroup(text + tokens[varied], keys, bias))
    return groups


@dataclass(frozen=True)
class KeyWindow:
    """One group's attention over the keys in :func:`key_order`: a window of them (``start``..``stop``,
    a view, no copy) or, when the window would be much wider than the keys, the positions to gather."""

    queries: torch.Tensor
    start: int
    stop: int
    gather: torch.Tensor | None   # positions in the ordered keys; None = the window
    bias: torch.Tensor | None     # [1 or Q, keys of the window or gather]


# A group attends over a window of the ordered keys when it is at most this much wider than its keys
# (the extra keys get -inf); otherwise its keys are gathered (a copy of them per call).
WINDOW_SLACK = 1.25


def key_order(layout: JointLayout) -> torch.Tensor:
    """``[S]`` token order of the keys: half the region prompts, the base text, the image, the other half.

    Every image token's keys (base text, its regions' text, the whole image) are then one window
    of this order, at most a few region prompts wider, so one reordered copy of the keys per call
    replaces a copy per group."""
    spans, base_text = _text_tokens(layout)
    half = (len(spans) + 1) // 2
    return torch.cat([*spans[:half], base_text, torch.arange(layout.text_len, layout.seq_len), *spans[half:]])


def key_windows(groups: Sequence[AttentionGroup], order: torch.Tensor) -> list[KeyWindow]:
    """Each group's keys as a window (or gather) of the keys in ``order``, with the bias to match."""
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order), device=order.device)
    windows = []
    for group in groups:
        keys = position[group.keys]
        start, stop = int(keys.min()), int(keys.max()) + 1
        if stop - start > WINDOW_SLACK * len(keys):
            windows.append(KeyWindow(group.queries, start, stop, keys, group.bias))
            continue
        bias = group.bias if group.bias is not None else torch.zeros(1, len(keys), device=keys.device)
        spread = bias.new_full((bias.shape[0], stop - start), float("-inf"))
        spread[:, keys - start] = bias
        windows.append(KeyWindow(group.queries, start, stop, None, _unless_zero(spread)))
    return windows


def _unless_zero(bias: torch.Tensor) -> torch.Tensor | None:
    return None if bool((bias == 0).all()) else bias


def item_memberships(grid: Sequence[torch.Tensor], layout: JointLayout, items: int) -> torch.Tensor:
    """``[items, regions, image_len]`` mask values of the image tokens, from one ``[Bm, h, w]`` grid mask per region."""
    if len(grid) != len(layout.region_lens):
        raise ValueError(f"{len(grid)} region masks and {len(layout.region_lens)} region prompts must match")
    columns = []
    for index, m in enumerate(grid):
        flat = match_batch(m, items, f"region {index + 1}'s mask").reshape(items, -1).float()
        if flat.shape[1] != layout.image_len:
            raise ValueError(f"region {index + 1}'s mask has {flat.shape[1]} grid cells but the image has "
                             f"{layout.image_len} tokens")
        columns.append(flat)
    return torch.stack(columns, dim=1)


def joint_attention_bias(grid: Sequence[torch.Tensor], weights: Sequence[float], layout: JointLayout, items: int,
                         locality: float = 0.0) -> torch.Tensor:
    """``[items, 1, S, S]`` float32 additive logit bias: the groups of :func:`joint_attention_groups` as one mask.

    ``grid``: one ``[Bm, h, w]`` mask per region on the image's token grid (``h * w == image_len``);
    ``locality`` > 0 also scales image-to-image attention between different regions by ``1 - locality``.
    """
    if len(weights) != len(grid):
        raise ValueError(f"{len(grid)} region masks and {len(weights)} weights must match")
    memberships = item_memberships(grid, layout, items)
    bias = torch.full((items, layout.seq_len, layout.seq_len), float("-inf"), device=memberships.device)
    for item, membership in enumerate(memberships):
        for group in joint_attention_groups(membership, weights, layout):
            rows = bias.new_full((len(group.queries), layout.seq_len), float("-inf"))
            rows[:, group.keys] = 0.0 if group.bias is None else group.bias
            bias[item, group.queries] = rows
    if locality > 0:
        text, image = layout.text_len, layout.image_len
        bias[:, text:text + image, text:text + image] = locality_bias(grid, locality, items)
    return bias.unsqueeze(1)


def standalone_text_positions(layout: JointLayout) -> torch.Tensor:
    """``[S]`` index: for each token, the token whose rotary position it takes.

    Region prompt token ``i`` takes the position of text token ``joined_start + i``, the one it
    would have as the only prompt; every other token keeps its own.
    """
    index = torch.arange(layout.seq_len)
    for region in range(len(layout.region_lens)):
        start, end = layout.region_span(region)
        index[start:end] = torch.arange(layout.joined_start, layout.joined_start + end - start)
    return index
