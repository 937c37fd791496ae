"""Regional conditioning in attention mode on DiTs (Flux.1, Flux.2, Chroma, Qwen-Image, Lumina 2 / Z-Image).

The positive conditioning's tokens are the base prompt followed by every region's prompt (as on
UNets); :class:`DiTRegionAttention` routes the model's joint attention as
:mod:`..ops.dit_regions` describes, through ComfyUI's own hooks only (no copied forwards):

- an APPLY_MODEL wrapper records each model call's latent size and context length in
  ``transformer_options`` (the block hooks see neither);
- Flux-family and Qwen-Image blocks: an ``attn1_patch`` gives each region prompt the rotary
  positions it has as the only prompt;
- every family: ComfyUI's attention override runs each joint attention as groups of queries over
  the keys they may see (:func:`grouped_attention`), through the attention function ComfyUI
  chose; where groups cannot express it (a mask already in place, self-attention locality,
  different masks per latent item) it passes the dense bias as the mask instead. Lumina 2 /
  Z-Image: joint layers only (the caption and image refiners' sequences have other lengths).

Uncond rows and conds that are not the joined prompt are computed unchanged. A family without a
hook gets a clear error (see ``compat.dit_hook_missing``).
"""
from __future__ import annotations

import torch

import comfy.patcher_extension

from ..ops import dit_regions as dit_ops
from ..ops import region_groups
from ..ops import regions as region_ops
from . import compat
from .attention import attend_in_groups, batch_layout, windows_on

WRAPPER_KEY = "selective_control.dit_regions"
CALL_KEY = "sc_dit_regions_call"  # transformer_options: (latent h, latent w, context length) of this model call


def _record_call(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
    """APPLY_MODEL wrapper: put the latent size and context length where the attention hooks can read them."""
    context_len = None if c_crossattn is None else int(c_crossattn.shape[1])
    options = {**transformer_options, CALL_KEY: (int(x.shape[-2]), int(x.shape[-1]), context_len)}
    return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def _combined(existing: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """Our additive bias plus a mask already in place (boolean: True = attend, or additive)."""
    if existing is None:
        return bias
    if existing.dtype == torch.bool:
        existing = torch.zeros_like(existing, dtype=bias.dtype).masked_fill(~existing, float("-inf"))
    while existing.ndim < bias.ndim:
        existing = existing.unsqueeze(1)
    return existing.to(bias.dtype) + bias


class DiTRegionAttention:
    """The bias and rotary-position hooks of one Apply Regions node on one DiT model clone."""

    def __init__(self, model_patcher, masks: list[torch.Tensor], weights: list[float],
                 layouts: dict[int, tuple[int, tuple[int, ...]]], locality: float = 0.0) -> None:
        self.family = compat.dit_family(model_patcher)
        self.patch_size = compat.dit_patch_size(model_patcher)
        self.text_pad_multiple = compat.dit_text_pad_multiple(model_patcher)
        self.masks = tuple(masks)
        self.weights = tuple(weights)
        self.layouts = dict(layouts)
        self.locality = float(locality)
        self.cache: dict[tuple, object] = {}

    def __deepcopy__(self, memo):  # shared by model clones; the cache only holds derived tensors
        return self

    def clear_caches(self, model_patcher) -> None:
        """ON_CLEANUP callback: a run's biases (S x S each) are not kept for the next run."""
        self.cache.clear()

    # ---------------------------------------------------------------- layout of one call

    def layout(self, options: dict, seq_len: int) -> dit_ops.JointLayout | None:
        """The token layout of a joint attention over ``seq_len`` tokens, or None when it is not ours."""
        call = options.get(CALL_KEY)
        if call is None or call[2] is None:
            return None
        latent_h, latent_w, context_len = call
        joined = context_len if context_len in self.layouts else None
        if joined is None and compat.dit_pads_text_left(self.family):
            joined = max((n for n in self.layouts if n < context_len), default=None)
        if joined is None:
            return None
        text = -(-context_len // self.text_pad_multiple) * self.text_pad_multiple
        image = -(-latent_h // self.patch_size) * -(-latent_w // self.patch_size)
        if seq_len < text + image:
            return None  # a text-only or image-only attention (Lumina 2's refiners)
        base_len, region_lens = self.layouts[joined]
        start = text - joined if compat.dit_pads_text_left(self.family) else 0
        return dit_ops.JointLayout(text, start, base_len, region_lens, image, seq_len)

    def _grid(self, call: tuple, device) -> list[torch.Tensor]:
        grid_hw = (-(-call[0] // self.patch_size), -(-call[1] // self.patch_size))
        return [m.to(device) for m in region_ops.grid_masks(self.masks, call[:2], grid_hw)]

    def bias(self, options: dict, rows: int, seq_len: int, device, dtype) -> torch.Tensor | None:
        """``[rows or 1, 1, S, S]`` bias for this call (cond rows only), None when no row is ours."""
        layout = self.layout(options, seq_len)
        if layout is None:
            return None
        cond_or_uncond, items = batch_layout(options, rows)
        if 0 not in cond_or_uncond:
            return None
        call = options[CALL_KEY]
        key = ("bias", layout, call[:2], tuple(cond_or_uncond), items, device, dtype)
        cached = self.cache.get(key)
        if cached is None:
            region = dit_ops.joint_attention_bias(self._grid(call, device), self.weights, layout, items, self.locality)
            if all(flag == 0 for flag in cond_or_uncond) and region.shape[0] == 1:
                cached = region  # broadcast over rows: no copy per row
            else:
                cached = region.new_zeros((rows, *region.shape[1:]))
                for chunk, flag in enumerate(cond_or_uncond):
                    if flag == 0:
                        cached[chunk * items:(chunk + 1) * items] = region.expand(items, *region.shape[1:])
            cached = cached.to(dtype)
            self.cache[key] = cached
        return cached

    def groups(self, options: dict, rows: int, seq_len: int, device, dtype) -> tuple | None:
        """``(cond rows, key order, key windows)`` when this call's cond rows can run as
        :func:`grouped_attention`, else None."""
        layout = self.layout(options, seq_len)
        if layout is None or self.locality > 0:
            return None
        cond_or_uncond, items = batch_layout(options, rows)
        call = options[CALL_KEY]
        key = ("groups", layout, call[:2], tuple(cond_or_uncond), items, device, dtype)
        if key not in self.cache:
            memberships = dit_ops.item_memberships(self._grid(call, device), layout, items)
            plan = None
            if 0 in cond_or_uncond and bool((memberships == memberships[:1]).all()):
                cond_rows = torch.tensor([chunk * items + item for chunk, flag in enumerate(cond_or_uncond)
                                          if flag == 0 for item in range(items)], device=device)
                order = dit_ops.key_order(layout)
                groups = dit_ops.joint_attention_groups(memberships[0].cpu(), self.weights, layout)
                windows = windows_on(region_groups.key_windows(groups, order), device, dtype)
                plan = (cond_rows, order.to(device), windows)
            self.cache[key] = plan
        return self.cache[key]

    def positions(self, options: dict, pe: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
        """``pe`` with each region prompt at the rotary positions it has as the only prompt."""
        layout = self.layout(options, seq_len)
        if pe is None or layout is None or pe.ndim < 3 or pe.shape[2] != seq_len:
            return pe
        key = ("positions", layout, pe.device)
        index = self.cache.get(key)
        if index is None:
            index = self.cache[key] = dit_ops.standalone_text_positions(layout).to(pe.device)
        return pe.index_select(2, index)

    # ---------------------------------------------------------------- hooks

    def attn1_patch(self, q, k, v, pe=None, attn_mask=None, extra_options=None, **kwargs):
        """Flux / Qwen-Image block hook (``transformer_options["patches"]["attn1_patch"]``): rotary positions."""
        return {"pe": self.positions(extra_options or {}, pe, q.shape[2])}

    def attention_override(self, func, *args, **kwargs):
        """ComfyUI attention override: joint attention calls run grouped, or with the dense bias added."""
        q, k, v, heads = args[:4]
        mask = args[4] if len(args) > 4 else kwargs.pop("mask", None)
        options = kwargs.get("transformer_options") or {}
        seq_len = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
        plan = None if mask is not None else self.groups(options, q.shape[0], seq_len, q.device, q.dtype)
        if plan is not None:
            return grouped_attention(func, q, k, v, heads, *plan, *args[5:], **kwargs)
        bias = self.bias(options, q.shape[0], seq_len, q.device, q.dtype)
        if bias is not None:
            mask = _combined(mask, bias)
        return func(q, k, v, heads, *args[5:], mask=mask, **kwargs)


def grouped_attention(func, q, k, v, heads, rows: torch.Tensor, order: torch.Tensor, windows: list,
                      *args, **kwargs) -> torch.Tensor:
    """``func`` (ComfyUI's attention) once per group of queries, on the batch ``rows`` the groups are for.

    Exactly the attention with the dense bias (every key a group leaves out has ``-inf``), but
    each call sees only its queries and a window of the keys reordered once (``order``), with no
    mask or a ``[1, 1, 1 or Q, K]`` one. Other rows (uncond) attend as without regions.
    """
    seq_dim = 2 if kwargs.get("skip_reshape") else 1
    out_dim = 2 if kwargs.get("skip_output_reshape") else 1
    every_row = len(rows) == q.shape[0]
    q_rows, k_rows, v_rows = (t if every_row else t.index_select(0, rows) for t in (q, k, v))
    k_rows, v_rows = (t.index_select(seq_dim, order) for t in (k_rows, v_rows))

    def attend(q, k, v, bias):
        return func(q, k, v, heads, *args, mask=None if bias is None else bias.view(1, 1, *bias.shape), **kwargs)

    out = attend_in_groups(attend, q_rows, k_rows, v_rows, windows, seq_dim, out_dim)
    if every_row:
        return out
    others = torch.ones(q.shape[0], dtype=torch.bool, device=rows.device)
    others[rows] = False
    others = others.nonzero().flatten()
    plain = func(q.index_select(0, others), k.index_select(0, others), v.index_select(0, others), heads, *args,
                 mask=None, **kwargs)  # the uncond rows: attention as without regions
    return plain.new_empty((q.shape[0], *plain.shape[1:])).index_copy_(0, rows, out).index_copy_(0, others, plain)


def check_dit_supported(model_patcher) -> None:
    """Raise a clear error when this ComfyUI gives the model's family no hook for regional attention."""
    family = compat.dit_family(model_patcher)
    reason = compat.dit_hook_missing(family)
    if reason is not None:
        raise ValueError(f"Apply Regions (attention mode) cannot act on this model: {reason}.")


def install_dit_region_attention(model_patcher, masks: list[torch.Tensor], weights: list[float],
                                 layouts: dict[int, tuple[int, tuple[int, ...]]], locality: float = 0.0):
    """Put the regional joint-attention hooks on ``model_patcher`` (a clone you own); returns the hook object."""
    check_dit_supported(model_patcher)
    hooks = DiTRegionAttention(model_patcher, masks, weights, layouts, locality)
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, _record_call)
    if compat.DIT_FAMILIES[hooks.family] == "attn1_patch":
        model_patcher.set_model_attn1_patch(hooks.attn1_patch)
    compat.add_attention_override(model_patcher, hooks.attention_override)
    model_patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, WRAPPER_KEY, hooks.clear_caches)
    return hooks
