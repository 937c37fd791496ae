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
runs as a few groups (:func:`joint_attention_groups`, built on :mod:`.region_groups`, which
routes UNet cross-attention too), each over only the keys it may see and with at most a one-row
bias: no ``S x S`` mask in memory, and the fast unmasked or row-masked kernels.
:func:`joint_attention_bias` spells the same groups out as the dense mask, for the cases groups
cannot express (another mask already in place, self-attention locality).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import region_groups
from .region_groups import SHARED_ROWS, AttentionGroup, dense_bias, query_groups, spread, unless_zero
from .regions import locality_bias, memberships


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


def joint_attention_groups(membership: torch.Tensor, weights: Sequence[float], layout: JointLayout,
                           shared_rows: int = SHARED_ROWS) -> list[AttentionGroup]:
    """The attention of one latent item as groups of queries (see module doc); they cover every token once.

    ``membership``: ``[regions, image_len]`` mask values of the image's tokens. The image tokens are
    grouped as on UNets (:func:`region_groups.query_groups`), and each group reads the base text,
    its regions' text and the whole image; text tokens form one group per prompt.
    """
    text, seq = layout.text_len, layout.seq_len
    device = membership.device
    spans, base_text = _text_tokens(layout, device)
    image = torch.arange(text, seq, device=device)
    values = torch.zeros(len(spans), seq - text, device=device)
    values[:, :layout.image_len] = membership.float()

    groups = [AttentionGroup(base_text, torch.cat([base_text, image]), None)]
    for span, row in zip(spans, values):
        seen = row > 0
        bias = torch.cat([torch.zeros(len(span), device=device), torch.log(row[seen])]).unsqueeze(0)
        groups.append(AttentionGroup(span, torch.cat([span, image[seen]]), unless_zero(bias)))
    for group in query_groups(values, weights, shared_rows):
        # per token: one value for the base text, one per region text it reads, 0 for the image
        share = 1.0 + group.shares.sum(1, keepdim=True)
        text_bias = torch.cat([-torch.log(share), torch.log(group.shares / share)], dim=1)
        lengths = [len(base_text)] + [len(spans[r]) for r in group.regions]
        bias = torch.cat([spread(text_bias, lengths), text_bias.new_zeros(len(text_bias), len(image))], dim=1)
        keys = torch.cat([base_text, *(spans[r] for r in group.regions), image])
        groups.append(AttentionGroup(text + group.tokens, keys, unless_zero(bias)))
    return groups


def key_order(layout: JointLayout) -> torch.Tensor:
    """``[S]`` token order of the keys: half the region prompts, the base text, the image, the other half.

    Every image token's keys (base text, its regions' text, the whole image) are then one window
    of this order, at most a few region prompts wider, so one reordered copy of the keys per call
    replaces a copy per group."""
    spans, base_text = _text_tokens(layout)
    return region_groups.key_order(base_text, spans, torch.arange(layout.text_len, layout.seq_len))


def item_memberships(grid: Sequence[torch.Tensor], layout: JointLayout, items: int) -> torch.Tensor:
    """``[items, regions, image_len]`` mask values of the image tokens, from one ``[Bm, h, w]`` grid mask per region."""
    if len(grid) != len(layout.region_lens):
        raise ValueError(f"{len(grid)} region masks and {len(layout.region_lens)} region prompts must match")
    for index, m in enumerate(grid):
        if m.shape[-2] * m.shape[-1] != layout.image_len:
            raise ValueError(f"region {index + 1}'s mask has {m.shape[-2] * m.shape[-1]} grid cells but the image "
                             f"has {layout.image_len} tokens")
    return memberships(grid, items)


def joint_attention_bias(grid: Sequence[torch.Tensor], weights: Sequence[float], layout: JointLayout, items: int,
                         locality: float = 0.0) -> torch.Tensor:
    """``[items, 1, S, S]`` float32 additive logit bias: the groups of :func:`joint_attention_groups` as one mask.

    ``grid``: one ``[Bm, h, w]`` mask per region on the image's token grid (``h * w == image_len``);
    ``locality`` > 0 also scales image-to-image attention between different regions by ``1 - locality``.
    """
    if len(weights) != len(grid):
        raise ValueError(f"{len(grid)} region masks and {len(weights)} weights must match")
    memberships = item_memberships(grid, layout, items)
    bias = torch.stack([dense_bias(joint_attention_groups(membership, weights, layout), layout.seq_len,
                                   layout.seq_len, memberships.device) for membership in memberships])
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
