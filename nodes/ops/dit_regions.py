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


def joint_attention_bias(grid: Sequence[torch.Tensor], weights: Sequence[float], layout: JointLayout, items: int,
                         locality: float = 0.0) -> torch.Tensor:
    """``[items, 1, S, S]`` float32 additive logit bias (see module doc).

    ``grid``: one ``[Bm, h, w]`` mask per region on the image's token grid (``h * w == image_len``);
    ``locality`` > 0 also scales image-to-image attention between different regions by ``1 - locality``.
    """
    if len(grid) != len(layout.region_lens) or len(weights) != len(grid):
        raise ValueError(f"{len(grid)} region masks, {len(weights)} weights and {len(layout.region_lens)} region "
                         "prompts must match")
    seq, text, image = layout.seq_len, layout.text_len, layout.image_len
    device = grid[0].device
    membership = torch.zeros(len(grid), items, seq - text, device=device)
    for index, m in enumerate(grid):
        flat = match_batch(m, items, f"region {index + 1}'s mask").reshape(items, -1).float()
        if flat.shape[1] != image:
            raise ValueError(f"region {index + 1}'s mask has {flat.shape[1]} grid cells but the image has {image} tokens")
        membership[index, :, :image] = flat
    weighted = membership * torch.tensor([float(w) for w in weights], device=device).view(-1, 1, 1)
    share = 1.0 + weighted.sum(0)  # [items, S - T]

    bias = torch.zeros(items, seq, seq, device=device)
    image_rows = bias[:, text:, :]
    image_rows[:, :, :text] = (-torch.log(share)).unsqueeze(-1)  # base text (and the model's text padding)
    for index in range(len(grid)):
        start, end = layout.region_span(index)
        image_rows[:, :, start:end] = torch.log(weighted[index] / share).unsqueeze(-1)
        bias[:, :start, start:end] = float("-inf")            # text before the region (base, earlier regions)
        bias[:, end:text, start:end] = float("-inf")          # text after it (later regions, padding)
        own_rows = bias[:, start:end, :]
        own_rows[:, :, :start] = float("-inf")
        own_rows[:, :, end:text] = float("-inf")
        own_rows[:, :, text:] = torch.log(membership[index]).unsqueeze(1)
    if locality > 0:
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
