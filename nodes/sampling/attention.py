"""Shared self-attention (attn1) patch machinery for UNet models (SD1.x, SD2.x, SDXL).

ComfyUI lets a patch replace a transformer block's self-attention through
``ModelPatcher.set_model_attn1_replace(patch, block_name, number, transformer_index)``; the patch
receives the projected ``q, k, v`` (``[rows, tokens, heads*dim_head]``) and ``extra_options`` (the
``transformer_options`` of the current model call plus ``n_heads``, ``dim_head``,
``attn_precision``). Only one replace patch fits a block, so every pack feature that wants more
keys/values in self-attention goes through one :class:`SelfAttentionDispatcher` per block that
holds a tuple of *extensions* (reference attention, cross-frame attention, regional
self-attention locality). Each extension says, for the current call, which rows get which
extra keys/values and with what weight; the dispatcher computes the attention once per group
of rows and blends:

    out = plain + weight * (attention(q, [k; k_extra], [v; v_extra]) - plain)

A full-weight group needs only its extended attention (one ComfyUI call). A blend needs the plain
and the extended attention; on CPU both come from torch's fused attention kernel, which also
returns each query's log-sum-exp: attention over the own keys and over the extra keys, merged
exactly (``_merged_blend``), costs one extended attention instead of a plain plus an extended one.
Elsewhere (other devices, a ComfyUI attention override, a group with a bias) a blend takes two
ComfyUI calls.

With no extension active the dispatcher computes exactly what ComfyUI's own ``CrossAttention``
computes (same function, same arguments), so an inactive patch is bit-identical to no patch.

Helpers read ``transformer_options`` the same way for every feature: the token grid from the
sequence length and ``activations_shape``/``original_shape``, the layout of the batch from
``cond_or_uncond``, and rows that a wrapper appended to the batch (:data:`APPENDED_ROWS`), which
every extension must leave alone. Every patch accepts and ignores unknown keyword arguments.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
from .sharing import SharedByCopies

logger = logging.getLogger(__name__)

# transformer_options key: how many rows a wrapper appended after the sampler's own rows
# (reference-attention rows). Features that work on the sampler's rows use only the first
# ``rows - appended`` rows.
APPENDED_ROWS = "sc_appended_rows"
COMPOSE_KEY = "selective_control.compose"  # OUTER_SAMPLE wrappers that keep our replace patches acting


# --------------------------------------------------------------------------- transformer_options


def appended_rows(transformer_options: dict) -> int:
    """Rows appended to the batch by a pack wrapper (0 if none)."""
    return int(transformer_options.get(APPENDED_ROWS, 0))


def batch_layout(transformer_options: dict, rows: int) -> tuple[list[int], int]:
    """``(cond_or_uncond, items)``: one 0 (cond) / 1 (uncond) per chunk and latent items per chunk.

    ComfyUI batches whole conds: ``rows`` (the sampler's rows, without appended ones) is
    ``len(cond_or_uncond)`` chunks of the same latent batch, in that order. Never assume the
    cond/uncond order: read it from here.
    """
    cond_or_uncond = list(transformer_options.get("cond_or_uncond") or [0])
    chunks = len(cond_or_uncond)
    if rows % chunks:
        # A caller that did not batch by conds (e.g. a custom sampler): treat rows as one chunk.
        return [cond_or_uncond[0]] * rows, 1
    return cond_or_uncond, rows // chunks


def row_latent_index(transformer_options: dict, rows: int, device=None) -> torch.Tensor:
    """For each of the sampler's ``rows``, the index of its item in the latent batch."""
    cond_or_uncond, items = batch_layout(transformer_options, rows)
    return torch.arange(items, device=device).repeat(len(cond_or_uncond))


def row_is_uncond(transformer_options: dict, rows: int, device=None) -> torch.Tensor:
    """Bool per row: True where the row belongs to the negative (uncond) prediction."""
    cond_or_uncond, items = batch_layout(transformer_options, rows)
    flags = torch.tensor([c == 1 for c in cond_or_uncond], dtype=torch.bool, device=device)
    return flags.repeat_interleave(items)


def token_grid(seq_len: int, transformer_options: dict) -> tuple[int, int]:
    """``(h, w)`` of the token grid of an attention call with ``seq_len`` tokens.

    Uses ``activations_shape`` (set by SpatialTransformer) when it matches, else works it out
    from the UNet input ``original_shape``: each downsample halves a side rounding up (stride-2
    conv with padding 1), so the grid at level k is ceil applied k times.
    """
    shape = transformer_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == seq_len:
        return int(shape[2]), int(shape[3])
    original = transformer_options.get("original_shape")
    if original is None or len(original) < 4:
        raise ValueError(f"cannot place {seq_len} attention tokens on a grid: no original_shape in transformer_options")
    h, w = int(original[-2]), int(original[-1])
    while h * w > seq_len and h > 1 and w > 1:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != seq_len:
        raise ValueError(f"{seq_len} attention tokens do not fit a downscaled {original[-2]}x{original[-1]} latent")
    return h, w


# --------------------------------------------------------------------------- attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """ComfyUI's active attention function, called exactly as ``CrossAttention.forward`` calls it.

    ``mask``: optional additive logit bias ``[rows, q_tokens, k_tokens]`` (every backend takes it).
    """
    import comfy.ldm.modules.attention as comfy_attention  # looked up per call: ComfyUI may swap it

    if mask is None:
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options,
        )
    return comfy_attention.optimized_attention(
        q, k, v, extra_options["n_heads"], mask=mask.to(q.dtype), attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options,
    )


def attend_in_groups(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, windows: Sequence,
                     seq_dim: int = 1, out_dim: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    """``attend(q, k, v, bias)`` once per group of queries, the outputs put back in token order.

    ``windows``: :class:`..ops.region_groups.KeyWindow` s over ``k``/``v`` (already in the windows'
    key order), whose queries cover every token once. A group of every query is computed in place.
    ``out``: where the outputs go (e.g. the cond rows of the call's output, a view), else a new tensor.
    """
    for window in windows:
        if window.gather is None:
            keys, values = (t.narrow(seq_dim, window.start, window.stop - window.start) for t in (k, v))
        else:
            keys, values = (t.index_select(seq_dim, window.gather) for t in (k, v))
        if len(window.queries) == q.shape[seq_dim]:  # the only group (its queries are in order)
            whole = attend(q, keys, values, window.bias)
            return whole if out is None else out.copy_(whole)
        part = attend(q.index_select(seq_dim, window.queries), keys, values, window.bias)
        if out is None:
            shape = list(part.shape)
            shape[out_dim] = q.shape[seq_dim]
            out = part.new_empty(shape)
        out.index_copy_(out_dim, window.queries, part if part.dtype == out.dtype else part.to(out.dtype))
    return out


def windows_on(windows: Sequence, device, dtype) -> list:
    """Key windows with their indices on ``device`` and their biases in ``dtype``: ready for every call."""
    return [dataclasses.replace(w, queries=w.queries.to(device), gather=None if w.gather is None else w.gather.to(device),
                                bias=None if w.bias is None else w.bias.to(device, dtype)) for w in windows]


@dataclass(frozen=True)
class Extension:
    """Extra self-attention keys/values for some rows of one attention call.

    ``rows``: LongTensor ``[M]`` of row indices; ``k``/``v``: ``[M, T_extra, inner]`` appended after
    each row's own keys/values; ``weight``: 1.0 (full extended attention), a float, or a tensor
    broadcastable to ``[M, T, 1]`` (per row and per query token) blending plain -> extended;
    ``bias``: optional additive logit bias ``[M, T, T + T_extra]`` for the extended attention, or a
    :class:`RowBias` that makes it a chunk of query tokens at a time.
    """

    rows: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    weight: float | torch.Tensor = 1.0
    bias: torch.Tensor | RowBias | None = None

    @property
    def full(self) -> bool:
        return isinstance(self.weight, (int, float)) and self.weight == 1.0


# The most bias values a chunked bias (:class:`RowBias`) holds at once: 64 MiB in float32. The
# attention runs in chunks of queries so a call's bias never grows with tokens x tokens.
BIAS_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RowBias:
    """An additive bias made a chunk of query tokens at a time: ``rows(start, stop)`` is ``[M, stop - start, K]``."""

    rows: Callable[[int, int], torch.Tensor]


def biased_attention(q, k, v, extra_options: dict, bias: torch.Tensor | RowBias | None) -> torch.Tensor:
    """:func:`attention` with ``bias``; a :class:`RowBias` in chunks of queries of at most :data:`BIAS_ELEMENTS` bias values."""
    if not isinstance(bias, RowBias):
        return attention(q, k, v, extra_options, mask=bias)
    tokens = q.shape[1]
    step = max(1, BIAS_ELEMENTS // (q.shape[0] * k.shape[1]))
    if step >= tokens:
        return attention(q, k, v, extra_options, mask=bias.rows(0, tokens))
    out = None
    for start in range(0, tokens, step):
        stop = min(start + step, tokens)
        part = attention(q.narrow(1, start, stop - start), k, v, extra_options, mask=bias.rows(start, stop))
        if out is None:
            out = part.new_empty((q.shape[0], tokens, part.shape[2]))
        out[:, start:stop] = part
    return out


class SelfAttentionExtension(Protocol):
    def extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> list[Extension]:
        """The extensions to apply in this call (empty list: this feature is inactive here)."""


# torch's fused CPU attention kernel also returns the log-sum-exp of every query's logits; other
# devices (and a ComfyUI attention override) keep two ComfyUI attention calls for a blend.
_FUSED_LSE_OP = "_scaled_dot_product_flash_attention_for_cpu"
_fused_lse_failed: set = set()  # dtypes the fused kernel refused once (then: two-call blends)


def _fused_attention_lse(q, k, v, extra_options):
    """``(out, lse)`` in head layout (``[M, H, T, d]``, ``[M, H, T]``), or None where unavailable."""
    if q.device.type != "cpu" or "optimized_attention_override" in extra_options or k.shape[1] == 0:
        return None
    dtype = q.dtype
    precision = extra_options.get("attn_precision")
    if precision == torch.float32 and dtype != torch.float32:
        dtype = torch.float32  # ComfyUI's attention upcasts these too
    if dtype in _fused_lse_failed:
        return None
    heads = extra_options["n_heads"]
    q, k, v = (t.to(dtype).view(t.shape[0], t.shape[1], heads, t.shape[2] // heads).transpose(1, 2) for t in (q, k, v))
    try:
        out, lse = getattr(torch.ops.aten, _FUSED_LSE_OP)(q, k, v)[:2]
    except (AttributeError, RuntimeError, NotImplementedError) as error:
        _fused_lse_failed.add(dtype)
        logger.info("Selective Control: fused attention with log-sum-exp unavailable for %s (%s); blending "
                    "with two attention calls", dtype, error)
        return None
    return out, lse


def _merged_blend(q, k, v, extension: Extension, extra_options):
    """``(plain, delta)`` of a blend group from one attention over its own keys and one over its extra keys.

    With ``A``, ``L`` the output and log-sum-exp of attention over the own keys and ``X``, ``L_x``
    over the extra keys, attention over both is ``A + s * (X - A)`` with ``s = sigmoid(L_x - L)``
    per head and query, so ``weight * (extended - plain) = weight * s * (X - A)``: exact, at the
    cost of one extended attention (instead of a plain plus an extended one). None where torch's
    fused kernel is unavailable.
    """
    own = _fused_attention_lse(q, k, v, extra_options)
    if own is None:
        return None
    extra = _fused_attention_lse(q, extension.k.to(k.dtype), extension.v.to(v.dtype), extra_options)
    if extra is None:
        return None
    (a, lse), (x, lse_x) = own, extra
    share = torch.sigmoid(lse_x - lse).unsqueeze(-1)
    rows, tokens = q.shape[:2]
    plain = a.transpose(1, 2).reshape(rows, tokens, -1).to(q.dtype)
    delta = ((x - a) * share).transpose(1, 2).reshape(rows, tokens, -1)
    weight = extension.weight.to(delta.dtype) if torch.is_tensor(extension.weight) else extension.weight
    return plain, (delta * weight).to(q.dtype)


class ComposingReplace(SharedByCopies):
    """Base of the pack's attn1/attn2 replace patches: another node's replace patch on the block keeps acting.

    A block holds one replace patch. When ours finds another node's there (``foreign``, e.g.
    IPAdapter's ``Attn2Replace`` or SelfAttentionGuidance's recorder), the block returns
    ``foreign(q, k, v) + (ours - plain attention)``: the other node's output with our change on
    top, which is exact for additive patches. With nothing to change the foreign output is
    returned untouched. Instances are immutable: ``over`` returns a copy.
    """

    foreign = None  # the replace patch ours sits on (None: ComfyUI's attention)

    def over(self, foreign) -> "ComposingReplace":
        composed = copy.copy(self)
        composed.foreign = foreign
        return composed

    def base(self, q, k, v, extra_options):
        """The block's output without our change: the foreign patch's, or ComfyUI's attention."""
        if self.foreign is None:
            return attention(q, k, v, extra_options)
        return self.foreign(q, k, v, extra_options)

    def on_top(self, own, q, k, v, extra_options):
        """``own`` (our output as if alone) applied over the foreign patch's output."""
        if self.foreign is None:
            return own
        return self.foreign(q, k, v, extra_options) + (own - attention(q, k, v, extra_options)).to(own.dtype)


def check_not_retiled(q, k, extra_options: dict) -> None:
    """Refuse self-attention that another attn1 patch re-tiled (HyperTile): our row and token maps would be wrong."""
    shape = extra_options.get("activations_shape")
    grid_rows = shape[0] if shape is not None and len(shape) == 4 else q.shape[0]
    if q.shape[0] != k.shape[0] or q.shape[0] != grid_rows:
        raise ValueError(
            f"another node re-tiles this model's self-attention ({q.shape[0]} query rows for {k.shape[0]} key rows, "
            f"activations {shape}), e.g. HyperTile. Reference Attention, Cross-Frame Attention and region locality "
            "need whole images in self-attention: remove HyperTile (or that node) from this model, or bypass ours"
        )


class SelfAttentionDispatcher(ComposingReplace):
    """The attn1 replace patch of one block: plain attention plus the extensions' extra keys."""

    def __init__(self, extensions: Sequence[SelfAttentionExtension]):
        self.extensions = tuple(extensions)

    def with_extension(self, extension: SelfAttentionExtension) -> "SelfAttentionDispatcher":
        return SelfAttentionDispatcher((*self.extensions, extension)).over(self.foreign)

    def __call__(self, q, k, v, extra_options, **kwargs):
        check_not_retiled(q, k, extra_options)
        groups: list[Extension] = []
        for extension in self.extensions:
            groups.extend(g for g in extension.extend(q, k, v, extra_options) if g.rows.numel())
        if not groups:
            return self.base(q, k, v, extra_options)
        return self.on_top(self.extended(q, k, v, extra_options, groups), q, k, v, extra_options)

    def extended(self, q, k, v, extra_options, groups: list[Extension]):
        """Plain attention with every group's extra keys/values, as if this patch were alone on the block."""
        rows = q.shape[0]
        plans = _plan_groups(q, k, v, extra_options, groups)
        # ComfyUI's plain attention: rows no extension touches (bit-identical to no patch) and
        # the base of every blend that could not be merged.
        touched = {r for plan in plans for r in plan.rows}
        has_plain = [r not in touched for r in range(rows)]
        for plan in plans:
            if plan.needs_plain:
                for r in plan.rows:
                    has_plain[r] = True
        out = plain_out = None
        plain_rows = [r for r in range(rows) if has_plain[r]]
        if plain_rows:
            index = torch.tensor(plain_rows, device=q.device)
            plain_out = attention(q[index], k[index], v[index], extra_options)
            out = plain_out.new_empty((rows, *plain_out.shape[1:]))
            out.index_copy_(0, index, plain_out)
            if any(plan.needs_plain for plan in plans):
                plain_out = out.clone()  # plain values, read by the two-call blends below
        for plan in plans:
            g = plan.group
            if plan.merged is not None:
                plain, delta = plan.merged
                if out is None:
                    out = plain.new_empty((rows, *plain.shape[1:]))
                missing = [i for i, r in enumerate(plan.rows) if not has_plain[r]]
                if missing:
                    picked = torch.tensor(missing, device=q.device)
                    out.index_copy_(0, g.rows[picked], plain[picked].to(out.dtype))
                    for i in missing:
                        has_plain[plan.rows[i]] = True
                out.index_add_(0, g.rows, delta.to(out.dtype))
                continue
            ki = torch.cat((k[g.rows], g.k.to(k.dtype)), dim=1)
            vi = torch.cat((v[g.rows], g.v.to(v.dtype)), dim=1)
            extended = biased_attention(q[g.rows], ki, vi, extra_options, g.bias)
            if out is None:
                out = extended.new_empty((rows, *extended.shape[1:]))
            if plan.alone:
                out.index_copy_(0, g.rows, extended.to(out.dtype))
            else:
                weight = g.weight.to(extended.dtype) if torch.is_tensor(g.weight) else g.weight
                out.index_add_(0, g.rows, ((extended - plain_out[g.rows]) * weight).to(out.dtype))
        return out


@dataclass(frozen=True, eq=False)
class _GroupPlan:
    """How :meth:`SelfAttentionDispatcher.extended` computes one group's rows.

    ``rows``: the group's batch rows as a Python tuple (the plan is worked out on a handful of
    rows in Python: no small tensor ops per call). ``alone``: full weight and no other group on
    these rows, so the group's extended attention is the output (one ComfyUI call). ``merged``:
    ``(plain, delta)`` of a blend without a bias, from one fused attention with log-sum-exps
    (:func:`_merged_blend`); None for a group that is alone, has a bias, or where the fused kernel
    is unavailable.
    """

    group: Extension
    rows: tuple[int, ...]
    alone: bool
    merged: tuple[torch.Tensor, torch.Tensor] | None

    @property
    def needs_plain(self) -> bool:
        """A blend computed as extended minus ComfyUI's plain attention of its rows (two calls)."""
        return not self.alone and self.merged is None


def _plan_groups(q, k, v, extra_options, groups: list[Extension]) -> list[_GroupPlan]:
    row_tuples = [tuple(g.rows.tolist()) for g in groups]
    groups_on_row = Counter(r for rows in row_tuples for r in rows)
    plans = []
    for g, rows in zip(groups, row_tuples):
        alone = g.full and all(groups_on_row[r] == 1 for r in rows)
        merged = None
        if not alone and g.bias is None:
            merged = _merged_blend(q[g.rows], k[g.rows], v[g.rows], g, extra_options)
        plans.append(_GroupPlan(g, rows, alone, merged))
    return plans


# --------------------------------------------------------------------------- installing


def attn1_block_keys(model_patcher) -> list[tuple[str, int, int]]:
    """``(block_name, number, transformer_index)`` of every self-attention in a UNet.

    These are the keys ``BasicTransformerBlock`` looks up in ``patches_replace["attn1"]``.
    """
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = model_patcher.get_model_object("diffusion_model")
    if not hasattr(unet, "input_blocks") or not hasattr(unet, "output_blocks"):
        raise ValueError(
            f"this node patches UNet self-attention (SD1.x, SD2.x, SDXL); the connected model is a "
            f"{type(unet).__name__}, which has no UNet input/output blocks"
        )
    keys = []
    sections: list[tuple[str, Iterable]] = [
        ("input", enumerate(unet.input_blocks)),
        ("middle", [(0, unet.middle_block)] if getattr(unet, "middle_block", None) is not None else []),
        ("output", enumerate(unet.output_blocks)),
    ]
    for name, blocks in sections:
        for number, block in blocks:
            for layer in block.modules():
                if isinstance(layer, SpatialTransformer):
                    keys.extend((name, number, i) for i in range(len(layer.transformer_blocks)))
    if not keys:
        raise ValueError("the connected model has no transformer blocks to patch")
    return keys


def block_patch(patches: dict, key: tuple[str, int, int]):
    """The replace patch ComfyUI calls on block ``key``: a ``(block, number, index)`` key wins over ``(block, number)``."""
    patch = patches.get(key)
    return patches.get(key[:2]) if patch is None else patch


def replace_patches(model_options: dict, kind: str) -> dict:
    return model_options.get("transformer_options", {}).get("patches_replace", {}).get(kind, {})


class KeepOnTop:
    """OUTER_SAMPLE wrapper: a replace patch another node put on our blocks after us is composed under ours.

    Runs once per sampling on the sampler's own copy of ``model_options`` (the model is untouched).
    ``holds(patch)``: our patch is there; ``compose(patch)``: ours over ``patch`` (None: alone).
    A ``(block, number)`` patch added after ours is shadowed by our ``(block, number, index)`` key
    in ComfyUI's lookup (IPAdapter's SD1.5 keys): it is composed under ours too.
    """

    def __init__(self, kind: str, keys: list[tuple[str, int, int]], holds, compose):
        self.kind, self.keys, self.holds, self.compose = kind, tuple(keys), holds, compose

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        from . import compat

        patches = replace_patches(compat.sampling_model_options(executor), self.kind)
        for key in self.keys:
            current = block_patch(patches, key)
            if not self.holds(current):
                patches[key] = self.compose(current)
                continue
            shadowed = patches.get(key[:2])
            if key in patches and current.foreign is None and shadowed is not None and not self.holds(shadowed):
                patches[key] = current.over(shadowed)
        return executor(*args, **kwargs)


def keep_on_top(model_patcher, wrapper: KeepOnTop) -> None:
    import comfy.patcher_extension

    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, COMPOSE_KEY, wrapper)


def install_self_attention_extension(model_patcher, extension: SelfAttentionExtension) -> None:
    """Add ``extension`` to every self-attention block of ``model_patcher`` (a clone you own).

    Keeps extensions already installed by this pack, and another node's attn1 replace patch on a
    block (ours acts on top of it, see :class:`ComposingReplace`), whichever node came first.
    """
    keys = attn1_block_keys(model_patcher)
    current = replace_patches(model_patcher.model_options, "attn1")

    def holds(patch) -> bool:
        return isinstance(patch, SelfAttentionDispatcher) and extension in patch.extensions

    def compose(patch):
        if isinstance(patch, SelfAttentionDispatcher):
            return patch.with_extension(extension)
        return SelfAttentionDispatcher((extension,)).over(patch)

    for key in keys:
        model_patcher.set_model_attn1_replace(compose(block_patch(current, key)), *key)
    keep_on_top(model_patcher, KeepOnTop("attn1", keys, holds, compose))
