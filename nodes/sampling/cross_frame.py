"""SCCrossFrameAttention: frames in a latent batch also attend to anchor frames' self-attention.

Extension point: an attn1 extension (``attention.install_self_attention_extension``) on a
``model.clone()``. In each self-attention call the sampler's rows are ``len(cond_or_uncond)``
chunks of the latent batch (the frames); within each chunk, frame j gets the keys/values of the
anchor frames other than itself appended to its own (so an anchor frame never sees its own keys
twice). The output is ``plain + strength * (extended - plain)``. A batch of one frame, or rows
that only anchor to themselves, get ComfyUI's plain attention bit for bit. Rows appended by other
wrappers (reference attention) are left alone.
"""
from __future__ import annotations

import torch

from . import attention
from .sharing import SharedByCopies


MAX_ANCHORS = 64  # every anchor adds its keys and values to every frame's self-attention


def parse_anchors(text: str) -> tuple[int, ...]:
    """``"0"``, ``"0, 4"`` or ``"-1"`` → frame indices (negative counts from the end), at most MAX_ANCHORS."""
    if len(str(text)) > 10 * MAX_ANCHORS:
        raise ValueError(f"anchor_frames is {len(str(text))} characters long; give at most {MAX_ANCHORS} frame "
                         "indices, like '0' or '0, 8'")
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        anchors = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"anchor_frames must be frame indices separated by commas, like '0' or '0, 8'; got {text!r}") from None
    if not anchors:
        raise ValueError("anchor_frames is empty; give at least one frame index, like '0'")
    if len(anchors) > MAX_ANCHORS:
        raise ValueError(f"anchor_frames names {len(anchors)} frames; at most {MAX_ANCHORS}")
    return anchors


class CrossFrameExtension(SharedByCopies):
    """Appends the anchor frames' k/v (same cond/uncond chunk) to every frame's own."""

    def __init__(self, anchors: tuple[int, ...], strength: float):
        self.anchors, self.strength = anchors, strength

    def resolve(self, frames: int) -> list[int]:
        out = []
        for a in self.anchors:
            if not -frames <= a < frames:
                raise ValueError(
                    f"anchor frame {a} does not exist: the batch has {frames} frames (indices 0..{frames - 1}, "
                    "or negative from the end); change anchor_frames"
                )
            if a % frames not in out:
                out.append(a % frames)
        return out

    def extend(self, q, k, v, extra_options) -> list[attention.Extension]:
        if self.strength == 0.0:
            return []
        rows = q.shape[0] - attention.appended_rows(extra_options)
        cond_or_uncond, frames = attention.batch_layout(extra_options, rows)
        if frames < 2:
            return []
        anchors = self.resolve(frames)
        # Group rows by the set of other anchors they see: non-anchor frames see all anchors,
        # each anchor frame sees the others (and is plain if there are none).
        groups: dict[tuple[int, ...], list[int]] = {}
        for frame in range(frames):
            others = tuple(a for a in anchors if a != frame)
            if others:
                groups.setdefault(others, []).append(frame)
        out = []
        for others, members in groups.items():
            row_list, key_rows = [], []
            for c in range(len(cond_or_uncond)):
                base = c * frames
                for frame in members:
                    row_list.append(base + frame)
                    key_rows.append([base + a for a in others])
            idx = torch.tensor(row_list, device=q.device)
            src = torch.tensor(key_rows, device=q.device)  # [M, n_anchors]
            k_extra = k[src.flatten()].reshape(len(row_list), -1, k.shape[-1])
            v_extra = v[src.flatten()].reshape(len(row_list), -1, v.shape[-1])
            out.append(attention.Extension(idx, k_extra, v_extra, float(self.strength)))
        return out


def patch_cross_frame(model, anchor_frames: str, strength: float):
    """A clone of ``model`` whose frames also attend to the anchor frames."""
    anchors = parse_anchors(anchor_frames)
    patched = model.clone()
    if strength == 0.0:
        return patched
    attention.install_self_attention_extension(patched, CrossFrameExtension(anchors, strength))
    return patched
