"""Regional conditioning in attention mode: one UNet pass per cond, cross-attention routed per region.

``apply_attention_regions`` returns a positive conditioning whose context is the base prompt's
tokens followed by every region's tokens, and a model clone with one attn2 replace patch
(:class:`RegionalCrossAttention`) on every transformer block. The patch routes the cond rows'
cross-attention as :mod:`..ops.region_groups` defines it for UNets and DiTs alike: a latent
token reads the base tokens and the tokens of the regions whose masks reach it, with the bias
``log(weight * coverage)`` relative to the base (coverage: the region mask area-averaged to that
block's token grid), and no other region's tokens at all, at every resolution. Tokens that read
the same prompts with the same shares run as one call of ComfyUI's attention over only those
keys, with no mask (or one bias row for a weight or a soft edge). Uncond rows (their own
context, possibly padded by ComfyUI to a common length) are computed unchanged.

Optional self-attention locality (a :class:`SelfAttentionDispatcher` extension) scales attention
between tokens of different regions by ``1 - locality``.

Both compose with other nodes' patches on the same model, in either order: another attn2 replace
patch (IPAdapter's) keeps acting under ours (``attention.ComposingReplace``), and IPAdapter's
``add`` on our patch adds its term to our output.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

import comfy.patcher_extension

from ..ops import region_groups
from ..ops import regions as region_ops
from . import compat
from .attention import (
    ComposingReplace, Extension, KeepOnTop, RowBias, appended_rows, attend_in_groups, attention, attn1_block_keys,
    batch_layout, block_patch, install_self_attention_extension, keep_on_top, replace_patches, token_grid, windows_on,
)
from .dit_regions import install_dit_region_attention
from .instances import apply_instance_regions
from .masked_control import apply_masked_control
from .sharing import SharedByCopies

logger = logging.getLogger(__name__)

CACHE_KEY = "selective_control.regions"  # ON_CLEANUP callbacks that empty the patches' caches after a run


@dataclass(frozen=True)
class Region:
    """One region: its prompt (core CONDITIONING), mask, weight and optional control."""

    conditioning: list
    mask: torch.Tensor
    weight: float = 1.0
    control_net: object | None = None
    control_image: torch.Tensor | None = None
    control_strength: float = 1.0
    control_mask: torch.Tensor | None = None
    control_vae: object | None = None  # for ControlNets that encode their image (Flux InstantX / Union, Qwen-Image)

    @property
    def empty(self) -> bool:
        return not bool((self.mask > 0).any()) or self.weight <= 0

    @property
    def context(self) -> torch.Tensor:
        """The region prompt's token embeddings (its first conditioning entry)."""
        if not self.conditioning:
            raise ValueError("a region's conditioning is empty; connect a CLIP Text Encode output")
        if len(self.conditioning) > 1:
            logger.warning("Selective Control: a region's conditioning has %d entries; only the first is used",
                           len(self.conditioning))
        return self.conditioning[0][0]


def model_context_dim(model) -> int | None:
    """The text-embedding width the model's cross-attention expects (None if unknown)."""
    if compat.dit_family(model) is not None:
        return compat.dit_context_dim(model)
    config = getattr(getattr(model, "model", None), "model_config", None)
    return None if config is None else config.unet_config.get("context_dim")


def check_context_dims(model, positive: list, regions: list[Region]) -> None:
    """Raise a clear error when a prompt was encoded for another model family."""
    expected = model_context_dim(model)
    base_dims = {t.shape[-1] for t, _ in positive}
    for dim in base_dims:
        if expected is not None and dim != expected:
            raise ValueError(f"the base positive conditioning has width {dim} but the model expects {expected}: "
                             "encode the prompt with this model's CLIP")
    for index, region in enumerate(regions):
        dim = region.context.shape[-1]
        if (expected is not None and dim != expected) or dim not in base_dims:
            raise ValueError(
                f"region {index + 1}'s conditioning has width {dim} but the model expects {expected or base_dims} "
                "(e.g. an SDXL prompt into an SD1.5 model): encode every region prompt with this model's CLIP"
            )


def usable_regions(regions: list[Region]) -> list[Region]:
    """Regions that can act (non-empty mask, positive weight); others are dropped with a warning."""
    kept = [r for r in regions if not r.empty]
    if len(kept) < len(regions):
        logger.warning("Selective Control: ignoring %d region(s) with an empty mask or zero weight",
                       len(regions) - len(kept))
    return kept


def joined_positive(positive: list, regions: list[Region]) -> tuple[list, dict[int, tuple[int, tuple[int, ...]]]]:
    """Base entries with all region tokens appended; ``layouts``: total length -> (base, region lengths)."""
    lengths = tuple(r.context.shape[1] for r in regions)
    layouts = {}
    out = []
    for tensor, options in positive:
        parts = [tensor] + [region_ops.match_batch(r.context, tensor.shape[0], f"region {i + 1}'s conditioning",
                                                   "prompt", "base prompt").to(tensor) for i, r in enumerate(regions)]
        joined = torch.cat(parts, dim=1)
        layouts[joined.shape[1]] = (tensor.shape[1], lengths)
        out.append([joined, options.copy()])
    return out, layouts


MAX_BATCHED_REPEATS = 4  # ComfyUI batches two contexts only if the longer is at most 4 repeats of the shorter


def batched_with_positive(negative: list, length: int) -> list:
    """The negative's contexts repeated to the joined positive's ``length`` where ComfyUI would not
    batch them with it (more than 4 repeats: from 4 regions of the base prompt's length).

    Unbatched, the uncond takes a UNet pass of its own: every convolution runs twice at batch 1.
    Repeated, it shares the cond's pass; its keys and values are projected from the longer context,
    but its attention still reads one period of them (:func:`repeating_length`), so the result is
    the same. SD1.5 widths (320 channels), 4 regions, 512 px: 1.06x -> 1.01x a single prompt."""
    out = []
    for tensor, options in negative:
        repeats = length // tensor.shape[1]
        if length % tensor.shape[1] == 0 and repeats > MAX_BATCHED_REPEATS:
            tensor = tensor.repeat(1, repeats, 1)
        out.append([tensor, options])
    return out


def rows_flagged(cond_or_uncond: list[int], items: int, want: int, device) -> torch.Tensor:
    """Row indices of the batch's chunks whose ``cond_or_uncond`` flag is ``want`` (0 cond, 1 uncond)."""
    return torch.tensor([c * items + i for c, flag in enumerate(cond_or_uncond) if flag == want for i in range(items)],
                        dtype=torch.long, device=device)


def latent_hw(extra_options: dict) -> tuple[int, int]:
    shape = extra_options.get("original_shape")
    if shape is None or len(shape) < 4:
        raise ValueError("regional attention needs original_shape in transformer_options")
    return int(shape[-2]), int(shape[-1])


@dataclass
class _GridCache:
    """Region masks per (latent size, token grid, device): computed once per run and resolution."""

    masks: tuple[torch.Tensor, ...]
    cache: dict = field(default_factory=dict)

    def get(self, latent: tuple[int, int], grid: tuple[int, int], device) -> list[torch.Tensor]:
        key = (latent, grid, device)
        if key not in self.cache:
            self.cache[key] = [m.to(device) for m in region_ops.grid_masks(self.masks, latent, grid)]
        return self.cache[key]

    def clear(self) -> None:
        self.cache.clear()


@dataclass(frozen=True)
class BatchRows:
    """Rows of a call's batch: taken as a view when they are consecutive (``span``), else gathered (``index``)."""

    index: torch.Tensor
    span: tuple[int, int] | None

    @classmethod
    def of(cls, rows: list[int], device) -> BatchRows:
        consecutive = bool(rows) and rows == list(range(rows[0], rows[0] + len(rows)))
        return cls(torch.tensor(rows, dtype=torch.long, device=device),
                   (rows[0], rows[0] + len(rows)) if consecutive else None)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, self.index) if self.span is None else t[self.span[0]:self.span[1]]

    def put(self, out: torch.Tensor, part: torch.Tensor) -> None:
        if self.span is None:
            out.index_copy_(0, self.index, part.to(out.dtype))
        else:
            out[self.span[0]:self.span[1]] = part


@dataclass(frozen=True)
class CrossAttentionPlan:
    """How one cross-attention call runs: each part's cond rows (latent items with the same masks) as
    groups of queries over the keys in ``order``; ``others`` (uncond and appended rows) as without regions,
    over one period of their keys when these repeat with one of ``periods`` (see :func:`repeating_length`)."""

    parts: tuple[tuple[BatchRows, tuple[region_groups.KeyWindow, ...]], ...]
    order: torch.Tensor
    others: BatchRows
    periods: tuple[int, ...]


def repeating_length(k: torch.Tensor, v: torch.Tensor, periods: tuple[int, ...]) -> int:
    """The shortest of ``periods`` with which the keys and values repeat along the tokens, else all tokens.

    ComfyUI pads a shorter context by repeating it when it batches the uncond rows with the longer
    joined positive (up to 4 repeats: 1 to 3 regions of the base prompt's length): softmax over ``c``
    copies of the same keys is the attention over one copy, at ``1 / c`` of the cost. Checked on the
    keys themselves, so any context is safe (keys that do not repeat are attended to in full)."""
    tokens = k.shape[1]
    for period in periods:
        if period < tokens and tokens % period == 0 and all(
                torch.equal(t[:, period:], t[:, :-period]) for t in (k, v)):
            return period
    return tokens


class RegionalCrossAttention(ComposingReplace):
    """attn2 replace patch: cond rows attend to the base tokens and their own regions' tokens only.

    Each group of queries (:func:`..ops.regions.cross_attention_groups`) is one call of ComfyUI's
    attention over only the keys it reads: no mask, or a bias row where a weight or a soft mask
    needs it. Composes with another node's attn2 replace patch (see :class:`ComposingReplace`) and
    follows IPAdapter_plus's ``Attn2Replace`` contract, because IPAdapter calls ``add`` on whatever
    patch it finds on a block: each added callback's term is added to our output within its sigma range.
    """

    def __init__(self, masks: list[torch.Tensor], weights: list[float],
                 layouts: dict[int, tuple[int, tuple[int, ...]]], uncond_lengths: tuple[int, ...] = ()) -> None:
        self.grids = _GridCache(tuple(masks))
        self.weights = tuple(weights)
        self.layouts = dict(layouts)
        self.periods = tuple(sorted(set(uncond_lengths)))  # where the other rows' keys may repeat
        self.plans: dict[tuple, CrossAttentionPlan] = {}
        self.callbacks: list[tuple] = []  # (callback, kwargs) added by IPAdapter-style nodes

    def __deepcopy__(self, memo):  # clones share the caches (derived masks only), not the added callbacks
        composed = copy.copy(self)
        composed.callbacks = list(self.callbacks)
        return composed

    def over(self, foreign) -> "RegionalCrossAttention":
        composed = self.__deepcopy__({})
        composed.foreign = foreign
        return composed

    def add(self, callback, **kwargs) -> None:
        """IPAdapter_plus's ``Attn2Replace.add``: ``out += callback(out, q, k, v, extra_options, **kwargs)``."""
        self.callbacks.append((callback, kwargs))

    def clear_caches(self, model_patcher) -> None:
        """ON_CLEANUP callback: a run's plans are not kept for the next (other sizes would pile up on the GPU)."""
        self.plans.clear()
        self.grids.clear()

    def layout(self, context_len: int) -> tuple[int, tuple[int, ...]] | None:
        fits = [total for total in self.layouts if context_len % total == 0]
        return self.layouts[max(fits)] if fits else None

    def __call__(self, q, k, v, extra_options, **kwargs):
        rows = q.shape[0] - appended_rows(extra_options)
        cond_or_uncond, items = batch_layout(extra_options, rows)
        layout = self.layout(k.shape[1])
        if layout is None or 0 not in cond_or_uncond:
            out = self.base(q, k, v, extra_options)
        else:
            plan = self.plan(extra_options, q, k.shape[1], layout, cond_or_uncond, items)
            out = self.on_top(self.routed(q, k, v, extra_options, plan), q, k, v, extra_options)
        return self.added_terms(out, q, k, v, extra_options)

    def added_terms(self, out, q, k, v, extra_options):
        if not self.callbacks:  # (reading sigma is a device sync per call)
            return out
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.flatten()[0]) if sigmas is not None else float("inf")
        for callback, kwargs in self.callbacks:
            if kwargs.get("sigma_end", 0.0) <= sigma <= kwargs.get("sigma_start", float("inf")):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def plan(self, extra_options: dict, q: torch.Tensor, context_len: int, layout: tuple[int, tuple[int, ...]],
             cond_or_uncond: list[int], items: int) -> CrossAttentionPlan:
        """The groups of this call's cond rows; cached per resolution and batch layout until the run ends
        (they are the same every step)."""
        grid_hw = token_grid(q.shape[1], extra_options)
        key = (latent_hw(extra_options), grid_hw, q.device, q.dtype, context_len, tuple(cond_or_uncond), items,
               q.shape[0])
        cached = self.plans.get(key)
        if cached is None:
            per_item = region_ops.memberships(self.grids.get(key[0], grid_hw, q.device), items).cpu()
            copies = context_len // (layout[0] + sum(layout[1]))
            order = region_ops.cross_key_order(*layout, copies)
            parts = []
            for membership, same in _distinct(per_item):
                groups = region_ops.cross_attention_groups(membership, self.weights, *layout, copies)
                windows = windows_on(region_groups.key_windows(groups, order, slack=1.0), q.device, q.dtype)
                cond = [chunk * items + item for chunk, flag in enumerate(cond_or_uncond) if flag == 0 for item in same]
                parts.append((BatchRows.of(cond, q.device), tuple(windows)))
            taken = {row for rows, _ in parts for row in rows.index.tolist()}
            others = BatchRows.of([row for row in range(q.shape[0]) if row not in taken], q.device)
            cached = CrossAttentionPlan(tuple(parts), order.to(q.device), others, self.periods)
            self.plans[key] = cached
        return cached

    @staticmethod
    def routed(q, k, v, extra_options: dict, plan: CrossAttentionPlan) -> torch.Tensor:
        """The attention of ``plan``: the groups' calls on the cond rows, one plain call on the others."""

        def attend(q, k, v, bias):
            return attention(q, k, v, extra_options, mask=None if bias is None else bias.unsqueeze(0))

        def grouped(rows: BatchRows, windows, out=None):
            q_rows, k_rows, v_rows = (rows.take(t) for t in (q, k, v))
            return attend_in_groups(attend, q_rows, k_rows.index_select(1, plan.order),
                                    v_rows.index_select(1, plan.order), windows, out=out)

        if len(plan.parts) == 1 and len(plan.parts[0][0]) == q.shape[0]:  # cond rows only (cfg 1)
            return grouped(*plan.parts[0])
        out = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
        for rows, windows in plan.parts:
            if rows.span is None:
                rows.put(out, grouped(rows, windows))
            else:  # the groups write into these rows of the output
                grouped(rows, windows, out[rows.span[0]:rows.span[1]])
        if len(plan.others):
            q_rows, k_rows, v_rows = (plan.others.take(t) for t in (q, k, v))
            length = repeating_length(k_rows, v_rows, plan.periods)
            plan.others.put(out, attention(q_rows, k_rows[:, :length], v_rows[:, :length], extra_options))
        return out


def _distinct(per_item: torch.Tensor) -> list[tuple[torch.Tensor, list[int]]]:
    """``(membership, items)`` for each distinct ``[regions, tokens]`` membership of the latent items."""
    found: list[tuple[torch.Tensor, list[int]]] = []
    for item, membership in enumerate(per_item):
        match = next((same for known, same in found if torch.equal(known, membership)), None)
        if match is None:
            found.append((membership, [item]))
        else:
            match.append(item)
    return found


class RegionLocality(SharedByCopies):
    """Self-attention extension: attention between tokens of different regions scaled by ``1 - strength``.

    The bias (``ops.regions.locality_rows``) is made a chunk of queries at a time
    (:class:`.attention.RowBias`): a call never holds the tokens x tokens matrix.
    """

    def __init__(self, masks: list[torch.Tensor], strength: float) -> None:
        self.grids = _GridCache(tuple(masks))
        self.strength = float(strength)

    def clear_caches(self, model_patcher) -> None:
        """ON_CLEANUP callback, as :meth:`RegionalCrossAttention.clear_caches`."""
        self.grids.clear()

    def extend(self, q, k, v, extra_options) -> list[Extension]:
        rows = q.shape[0] - appended_rows(extra_options)
        cond_or_uncond, items = batch_layout(extra_options, rows)
        if 0 not in cond_or_uncond:
            return []
        grid = self.grids.get(latent_hw(extra_options), token_grid(q.shape[1], extra_options), q.device)
        cond = rows_flagged(cond_or_uncond, items, 0, q.device)
        parts = region_ops.partition(grid, items)
        copies = cond.numel() // items

        def rows_of(start: int, stop: int) -> torch.Tensor:
            return region_ops.locality_rows(parts, self.strength, start, stop).repeat(copies, 1, 1)

        empty = k.new_zeros((cond.numel(), 0, k.shape[-1]))
        return [Extension(rows=cond, k=empty, v=empty, weight=1.0, bias=RowBias(rows_of))]


def install_cross_attention(model_patcher, patch: RegionalCrossAttention) -> None:
    """Put ``patch`` on every transformer block's cross-attention of ``model_patcher`` (a clone you own).

    Another node's attn2 replace patch on a block keeps acting under ours, whichever came first.
    """
    keys = attn1_block_keys(model_patcher)  # attn1 and attn2 share the block keys
    current = replace_patches(model_patcher.model_options, "attn2")

    def holds(found) -> bool:
        return isinstance(found, RegionalCrossAttention) and found.grids is patch.grids

    def compose(found):  # a copy per block (sharing the caches): IPAdapter adds its callbacks block by block
        return patch.over(found)

    for key in keys:
        model_patcher.set_model_attn2_replace(compose(block_patch(current, key)), *key)
    keep_on_top(model_patcher, KeepOnTop("attn2", keys, holds, compose))


def check_control_vaes(regions: list[Region]) -> None:
    """A ControlNet that reads its image as a latent needs the VAE; say where to connect it before sampling."""
    for index, region in enumerate(regions):
        net = region.control_net
        if net is not None and getattr(net, "latent_format", None) is not None and region.control_vae is None:
            raise ValueError(
                f"region {index + 1}'s ControlNet encodes its control image with a VAE (Flux InstantX / Union, "
                "Qwen-Image ControlNets): connect the model's VAE to that Region Prompt's control_vae input")


def apply_region_controls(positive: list, negative: list, regions: list[Region], masks: list[torch.Tensor]):
    """Each region's ControlNet, limited to its control mask (default: the region mask), as masked controls."""
    for region, mask in zip(regions, masks):
        if region.control_net is None or region.control_image is None:
            continue
        control_mask = mask if region.control_mask is None else region.control_mask
        positive, negative = apply_masked_control(positive, negative, region.control_net, region.control_image,
                                                  control_mask, region.control_strength, 0.0, 1.0,
                                                  vae=region.control_vae)
    return positive, negative


def apply_attention_regions(model, positive: list, negative: list, regions: list[Region], masks: list[torch.Tensor],
                            locality: float = 0.0):
    """``(model, positive, negative)`` for any core sampler: regions by masked cross-attention."""
    if compat.dit_family(model) is not None:
        return apply_dit_attention_regions(model, positive, negative, regions, masks, locality)
    joined, layouts = joined_positive(positive, regions)
    out = model.clone()
    patches = [RegionalCrossAttention(masks, [r.weight for r in regions], layouts,
                                      tuple(tensor.shape[1] for tensor, _ in negative))]
    install_cross_attention(out, patches[0])
    if locality > 0:
        patches.append(RegionLocality(masks, locality))
        install_self_attention_extension(out, patches[1])
    for patch in patches:  # cached per resolution and batch layout within a run, emptied after it
        out.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, CACHE_KEY, patch.clear_caches)
    joined, negative = apply_region_controls(joined, [[t, o.copy()] for t, o in negative], regions, masks)
    return out, joined, batched_with_positive(negative, joined[0][0].shape[1])


def with_region_token_masks(joined: list, layouts: dict[int, tuple[int, tuple[int, ...]]]) -> list:
    """A text ``attention_mask`` of the base prompt (some DiT text encoders return one) extended with
    ones over the appended region tokens, so the model keeps reading it."""
    out = []
    for tensor, options in joined:
        mask = options.get("attention_mask")
        if mask is not None and mask.shape[-1] == layouts[tensor.shape[1]][0]:
            extra = mask.new_ones((*mask.shape[:-1], tensor.shape[1] - mask.shape[-1]))
            options = {**options, "attention_mask": torch.cat((mask, extra), dim=-1)}
        out.append([tensor, options])
    return out


def apply_dit_attention_regions(model, positive: list, negative: list, regions: list[Region],
                                masks: list[torch.Tensor], locality: float = 0.0):
    """Attention mode on a DiT: region prompts joined to the base prompt, joint attention biased
    (``dit_regions``); each region's control as in UNet attention mode."""
    joined, layouts = joined_positive(positive, regions)
    out = model.clone()
    install_dit_region_attention(out, masks, [r.weight for r in regions], layouts, locality)
    joined, negative = apply_region_controls(with_region_token_masks(joined, layouts),
                                             [[t, o.copy()] for t, o in negative], regions, masks)
    return out, joined, negative


def apply_regions(model, positive: list, negative: list, regions: list[Region], mode: str, feather: int,
                  locality: float = 0.0):
    """``(model, positive, negative, masks)``: the sampler inputs for ``mode`` and the feathered masks used."""
    if mode not in ("attention", "instances"):
        raise ValueError(f"unknown regions mode {mode!r}; use attention or instances")
    regions = usable_regions(list(regions))
    if not regions:
        return model, positive, negative, []
    check_context_dims(model, positive, regions)
    check_control_vaes(regions)
    masks = region_ops.feather_masks([r.mask for r in regions], feather)
    if mode == "attention":
        return (*apply_attention_regions(model, positive, negative, regions, masks, locality), masks)
    return (*apply_instance_regions(model, positive, negative, regions, masks), masks)
