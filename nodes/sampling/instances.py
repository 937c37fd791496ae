"""Regional conditioning in instances mode (FineControlNet): one path per region, one batched UNet call.

What the sampler receives is plain core conditioning: the base prompt masked to the part no
region covers (``1 - sum of region masks``, clamped), and one entry per region with the region's
prompt, its mask, its weight as the cond strength and its own ControlNet. Run by ComfyUI alone,
that *is* core masked conds with a ControlNet per cond: N + 1 model calls per step, blended by
``sum(mult_i * out_i) / sum(mult_i)``.

The model clone adds two wrappers that compute the same maths in one call:

1. ``CALC_COND_BATCH`` (:class:`CollapseInstances`): every step, the group's entries are taken out
   of the cond list, each is prepared with ComfyUI's own ``get_area_and_mult`` (its processed
   model conds and its blend weight ``mult``), and the carrier (the base entry) goes on alone,
   weighted by the paths' total weight. The prepared paths travel to the model call in
   ``transformer_options`` under :data:`PATHS_KEY`, keyed by the carrier's uuid. Negative entries
   without a ControlNet get the carrier's :class:`InstanceControl` so they share the call too.
2. ``APPLY_MODEL`` (:class:`InstanceBatch`): the carrier's rows are replaced by one chunk per
   path (its own text, pooled output, ...), the UNet runs once on the expanded batch (split only
   when it would not fit in free memory), and the paths are blended back into the carrier's rows.

:class:`InstanceControl` (a ``ControlBase``) computes every region's ControlNet for the expanded
batch: one batched call per ControlNet model, each row with its own region's hint, text and
strength (and control mask, if given); rows without a control get zeros. A ControlNet that was
on the base prompt before the regions stays chained before it and runs on every row.

Entries with an area, hooks or GLIGEN patches are left to ComfyUI unchanged (correct, unbatched).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.controlnet
import comfy.model_management
import comfy.patcher_extension

from ..ops import regions as region_ops
from ..ops.shapes import as_mask
from . import compat
from .attention import appended_rows
from .masked_control import _merge, _with_cond_mask, apply_masked_control, residual_weights
from .sharing import SharedByCopies

logger = logging.getLogger(__name__)

GROUP_KEY = "sc_instance_group"  # conditioning option: the InstanceGroup an entry belongs to
ROLE_KEY = "sc_instance_role"  # "carrier" for the base entry, the region index for a region entry
PATHS_KEY = "sc_instance_paths"  # transformer_options: carrier uuid -> list[InstancePath] for this call
EXPANSION_KEY = "sc_instance_expansion"  # transformer_options: this call's Expansion, with what it was made from
WRAPPER_KEY = "selective_control.instances"
MEMORY_MARGIN = 1.5  # the same safety factor ComfyUI's cond batching uses


@dataclass(frozen=True)
class InstanceSpec:
    """One region as instances mode needs it: its control (optional), hint, strength, control mask and VAE."""

    control_net: comfy.controlnet.ControlBase | None
    hint: torch.Tensor | None  # [B,3,H,W]
    strength: float
    control_mask: torch.Tensor | None
    vae: object | None = None  # ControlNets with a latent_format encode the hint with it


class InstanceGroup(SharedByCopies):
    """Identity of one Apply Regions result; marks its entries in the conditioning."""

    def __init__(self, specs: list[InstanceSpec]) -> None:
        self.specs = tuple(specs)


@dataclass(frozen=True)
class InstancePath:
    """One prepared path of a carrier for this step: processed model conds, blend weight, region index."""

    conditioning: dict  # name -> comfy.conds.CONDRegular, processed for the latent batch
    mult: torch.Tensor  # [B,C,h,w]
    role: object  # "carrier" or the region index


# --------------------------------------------------------------------------- expanded batches


@dataclass(frozen=True)
class Expansion:
    """How the sampler's rows map to the expanded batch: one entry per expanded chunk."""

    items: int  # latent items per chunk
    sources: tuple[int, ...]  # for each expanded chunk, the sampler chunk it comes from
    paths: tuple[InstancePath | None, ...]  # for each expanded chunk, the path it computes (None: the chunk itself)
    extra_rows: int  # rows appended after the sampler's chunks by another wrapper (kept as they are)

    @property
    def rows(self) -> int:
        return len(self.sources) * self.items + self.extra_rows


def expansion(transformer_options: dict, rows: int) -> Expansion | None:
    """The expansion for a model call, or None when no chunk of it carries instance paths.

    Both the carrier's :class:`InstanceControl` (before the model call) and :class:`InstanceBatch`
    (in it) need it and get the call's own ``transformer_options`` (a fresh dict, and a fresh
    paths dict, per call), so it is made once and kept there with everything it depends on; a
    copy of the options with other rows (e.g. with appended reference rows) gets its own.
    """
    paths_by_uuid = transformer_options.get(PATHS_KEY)
    uuids = transformer_options.get("uuids")
    if not paths_by_uuid or not uuids:
        return None
    made_from = (rows, appended_rows(transformer_options), tuple(uuids))
    kept = transformer_options.get(EXPANSION_KEY)
    if kept is not None and kept[0] is paths_by_uuid and kept[1] == made_from:
        return kept[2]
    plan = _expansion(paths_by_uuid, uuids, rows, made_from[1])
    transformer_options[EXPANSION_KEY] = (paths_by_uuid, made_from, plan)
    return plan


def _expansion(paths_by_uuid: dict, uuids: list, rows: int, extra: int) -> Expansion | None:
    chunks = len(uuids)
    if (rows - extra) % chunks:
        return None
    sources, paths = [], []
    for chunk, uuid in enumerate(uuids):
        for path in paths_by_uuid.get(uuid, (None,)):
            sources.append(chunk)
            paths.append(path)
    if len(sources) == chunks:
        return None
    return Expansion((rows - extra) // chunks, tuple(sources), tuple(paths), extra)


def _chunk_rows(tensor: torch.Tensor, items: int, chunk: int) -> torch.Tensor:
    return tensor[chunk * items:(chunk + 1) * items]


def expand_rows(plan: Expansion, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor with one row per sampler row, laid out for the expanded batch (paths repeat their chunk)."""
    pieces = [_chunk_rows(tensor, plan.items, chunk) for chunk in plan.sources]
    if plan.extra_rows:
        pieces.append(tensor[tensor.shape[0] - plan.extra_rows:])
    return torch.cat(pieces)


def expand_conds(plan: Expansion, conds: dict, rows: int) -> dict:
    """Model conds for the expanded batch: each path's own conds, other chunks' rows as they were.

    Joined with ComfyUI's own ``CONDRegular.concat`` so text contexts of different lengths are
    padded exactly as core pads them. Values that are not per-row tensors pass through.
    """
    out = dict(conds)
    for name, value in conds.items():
        if not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != rows:
            continue
        template = next((p.conditioning[name] for p in plan.paths if p is not None and name in p.conditioning), None)
        if template is None:
            out[name] = expand_rows(plan, value)
            continue
        pieces = [type(template)(_chunk_rows(value, plan.items, chunk)) if path is None or name not in path.conditioning
                  else path.conditioning[name] for chunk, path in zip(plan.sources, plan.paths)]
        if plan.extra_rows:
            pieces.append(type(template)(value[rows - plan.extra_rows:]))
        out[name] = pieces[0].concat(pieces[1:]).to(device=value.device, dtype=value.dtype)
    return out


def expand_transformer_options(plan: Expansion, transformer_options: dict) -> dict:
    out = transformer_options.copy()
    for key in ("cond_or_uncond", "uuids"):
        if key in transformer_options:
            out[key] = [transformer_options[key][chunk] for chunk in plan.sources]
    return out


def collapse(plan: Expansion, output: torch.Tensor) -> torch.Tensor:
    """Back to the sampler's rows: each carrier chunk is its paths blended by their weights."""
    chunks: dict[int, list[tuple[torch.Tensor, InstancePath | None]]] = {}
    for index, (chunk, path) in enumerate(zip(plan.sources, plan.paths)):
        chunks.setdefault(chunk, []).append((_chunk_rows(output, plan.items, index), path))
    pieces = []
    for chunk in sorted(chunks):
        parts = chunks[chunk]
        if parts[0][1] is None:
            pieces.append(parts[0][0])
            continue
        outputs = torch.stack([o for o, _ in parts])
        weights = torch.stack([p.mult.to(o) for o, p in parts])
        pieces.append(region_ops.blend_paths(outputs, weights))
    if plan.extra_rows:
        pieces.append(output[output.shape[0] - plan.extra_rows:])
    return torch.cat(pieces)


# --------------------------------------------------------------------------- the wrappers


def _prepare_paths(members: list[dict], x_in: torch.Tensor, timestep) -> list[InstancePath] | None:
    """The group's paths for this step, or None when ComfyUI must run the entries itself."""
    for entry in (*members[1:], members[0]):  # regions first: the base prompt's mask is derived from theirs
        if entry.get("mask") is not None:  # checked here: ComfyUI's own error would come from deep in torch
            name = "the base prompt" if entry[ROLE_KEY] == "carrier" else f"region {entry[ROLE_KEY] + 1}"
            region_ops.match_batch(entry["mask"], x_in.shape[0], f"{name}'s mask")
    paths = []
    for entry in members:
        prepared = compat.area_and_mult(entry, x_in, timestep)
        if prepared is None:  # outside its own timestep range this step
            continue
        if prepared.area is not None or prepared.hooks is not None or prepared.patches is not None:
            return None
        if bool((prepared.mult > 0).any()):
            paths.append(InstancePath(prepared.conditioning, prepared.mult, entry[ROLE_KEY]))
    return paths


def _collapse_entries(entries: list[dict], x_in, timestep, paths_by_uuid: dict) -> tuple[list[dict], list]:
    """``entries`` with each instance group replaced by its carrier; returns it and the carriers' controls."""
    groups: dict[InstanceGroup, list[dict]] = {}
    out = []
    for entry in entries:
        group = entry.get(GROUP_KEY)
        if group is None:
            out.append(entry)
        else:
            groups.setdefault(group, []).append(entry)
    controls = []
    for members in groups.values():
        members.sort(key=lambda e: -1 if e[ROLE_KEY] == "carrier" else e[ROLE_KEY])
        carrier = members[0]
        paths = _prepare_paths(members, x_in, timestep) if carrier[ROLE_KEY] == "carrier" else None
        if paths is None or len(paths) < 2:  # nothing to batch: ComfyUI runs the entries as they are
            out.extend(members)
            continue
        merged = {k: v for k, v in carrier.items()
                  if k not in (GROUP_KEY, "mask_strength", "strength", "timestep_start", "timestep_end")}
        merged["mask"] = torch.stack([p.mult for p in paths]).sum(0)[:, 0]
        paths_by_uuid[carrier["uuid"]] = paths
        controls.append(carrier["control"])
        out.append(merged)
    return out, controls


class CollapseInstances(SharedByCopies):
    """CALC_COND_BATCH wrapper: instance groups become one carrier entry with its prepared paths."""

    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        if not any(entry.get(GROUP_KEY) is not None for entries in conds if entries for entry in entries):
            return executor(model, conds, x_in, timestep, model_options)
        paths_by_uuid: dict = {}
        collapsed, controls = [], []
        for entries in conds:
            if entries is None:
                collapsed.append(None)
                continue
            entries, found = _collapse_entries(entries, x_in, timestep, paths_by_uuid)
            collapsed.append(entries)
            controls.extend(found)
        if controls:  # entries with the carrier's previous control (or none) share its call
            shared = controls[0]
            collapsed = [None if entries is None else
                         [dict(e, control=shared) if e.get("control") is shared.previous_controlnet
                          and GROUP_KEY not in e else e for e in entries] for entries in collapsed]
        options = model_options.copy()
        options["transformer_options"] = {**model_options.get("transformer_options", {}), PATHS_KEY: paths_by_uuid}
        return executor(model, collapsed, x_in, timestep, options)


class InstanceBatch(SharedByCopies):
    """APPLY_MODEL wrapper: expand carrier rows into their paths, run once, blend them back."""

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        plan = expansion(transformer_options, x.shape[0])
        if plan is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        conds = expand_conds(plan, {"c_concat": c_concat, "c_crossattn": c_crossattn, **kwargs}, x.shape[0])
        x_e, t_e = expand_rows(plan, x), expand_rows(plan, t)
        options = expand_transformer_options(plan, transformer_options)
        output = run_in_parts(executor, plan, x_e, t_e, conds, control, options)
        return collapse(plan, output)


def _fitting_chunks(model, plan: Expansion, x: torch.Tensor) -> int:
    """How many expanded chunks fit in one UNet call (all of them unless free memory says otherwise)."""
    chunks = len(plan.sources)
    if plan.extra_rows:  # appended rows are attended to by every row: they cannot be split off
        return chunks
    free = comfy.model_management.get_free_memory(x.device)
    for count in range(chunks, 0, -1):
        shape = [count * plan.items, *x.shape[1:]]
        if model.memory_required(shape) * MEMORY_MARGIN < free:
            return count
    return 1


def _take_rows(conds: dict, rows, total: int) -> dict:
    """``conds`` with every per-row tensor (first dimension ``total``) cut to ``rows``; other values as they are."""
    return {k: v[rows] if torch.is_tensor(v) and v.ndim and v.shape[0] == total else v for k, v in conds.items()}


def _slice_control(control: dict | None, rows: slice) -> dict | None:
    if control is None:
        return None
    return {key: [None if r is None else r[rows] for r in residuals] for key, residuals in control.items()}


def run_in_parts(executor, plan: Expansion, x, t, conds: dict, control, transformer_options: dict) -> torch.Tensor:
    """The UNet on the expanded batch: one call, or whole-chunk parts when it would not fit in memory."""
    step = _fitting_chunks(executor.class_obj, plan, x)
    chunks = len(plan.sources)
    if step >= chunks:
        return executor(x, t, conds.pop("c_concat"), conds.pop("c_crossattn"), control, transformer_options, **conds)
    logger.info("Selective Control: instances batch of %d chunks split into parts of %d to fit in memory",
                chunks, step)
    outputs = []
    for first in range(0, chunks, step):
        rows = slice(first * plan.items, min(chunks, first + step) * plan.items)
        part = _take_rows(conds, rows, x.shape[0])
        options = transformer_options.copy()
        for key in ("cond_or_uncond", "uuids"):
            if key in transformer_options:
                options[key] = transformer_options[key][first:first + step]
        outputs.append(executor(x[rows], t[rows], part.pop("c_concat"), part.pop("c_crossattn"),
                                _slice_control(control, rows), options, **part))
    return torch.cat(outputs)


# --------------------------------------------------------------------------- the batched ControlNet


class InstanceControl(comfy.controlnet.ControlBase):
    """Every region's ControlNet for the expanded batch, one batched call per ControlNet model.

    Outside an instances call (no paths in ``transformer_options``) it is just its previous
    control, so ComfyUI running the entries unbatched gives the same result.
    """

    def __init__(self, group: InstanceGroup) -> None:
        super().__init__()
        self.group = group
        self._model = None
        self._percent_to_timestep = None
        self._copies: dict[tuple, comfy.controlnet.ControlBase] = {}
        self._weights: dict[tuple, torch.Tensor] = {}

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options, **kwargs):
        plan = expansion(transformer_options, x_noisy.shape[0])
        if plan is None:
            if self.previous_controlnet is None:
                return None
            return self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        x_e, t_e = expand_rows(plan, x_noisy), expand_rows(plan, t)
        cond_e = expand_conds(plan, cond, x_noisy.shape[0])
        options = expand_transformer_options(plan, transformer_options)
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_e, t_e, cond_e, len(plan.sources), options)
        return _merge(self._instance_residuals(plan, x_e, t_e, cond_e, options), previous)

    def _instance_residuals(self, plan: Expansion, x, t, cond: dict, options: dict) -> dict[str, list]:
        """Residuals of every region's control on its own rows, zeros on all other rows."""
        by_net: dict[tuple, list[tuple[int, int]]] = {}  # (ControlNet, VAE) -> (expanded chunk, region index)
        for index, path in enumerate(plan.paths):
            if path is not None and path.role != "carrier" and self.group.specs[path.role].control_net is not None:
                spec = self.group.specs[path.role]
                by_net.setdefault((id(spec.control_net), id(spec.vae)), []).append((index, path.role))
        out: dict[str, list] = {}
        for members in by_net.values():
            rows = torch.cat([torch.arange(i * plan.items, (i + 1) * plan.items) for i, _ in members]).to(x.device)
            regions = tuple(role for _, role in members)
            inner = self._batched_copy(regions, plan.items)
            part = _take_rows(cond, rows, x.shape[0])
            residuals = inner.get_control(x[rows], t[rows], part, 1, options)
            for key, values in (residuals or {}).items():
                target = out.setdefault(key, [])
                while len(target) < len(values):
                    target.append(None)
                for level, r in enumerate(values):
                    if r is None:
                        continue
                    weighted = r * self._row_weights(regions, plan.items, r, x.shape)
                    if target[level] is None:
                        target[level] = weighted.new_zeros((plan.rows, *weighted.shape[1:]))
                    target[level] = target[level].index_add(0, rows, weighted)
        return out

    def _batched_copy(self, regions: tuple[int, ...], items: int) -> comfy.controlnet.ControlBase:
        """A copy of the regions' shared ControlNet whose hint holds one image per row (strength 1)."""
        key = (regions, items)
        if key not in self._copies:
            specs = [self.group.specs[r] for r in regions]
            size = specs[0].hint.shape[-2:]
            hints = [region_ops.match_batch(_hint_at(s.hint, size), items, f"region {r + 1}'s control image", "image")
                     for s, r in zip(specs, regions)]
            copy = specs[0].control_net.copy().set_cond_hint(torch.cat(hints), 1.0, (0.0, 1.0), vae=specs[0].vae)
            copy.set_previous_controlnet(None)
            if self._model is not None:
                copy.pre_run(self._model, self._percent_to_timestep)
            self._copies[key] = copy
        return self._copies[key]

    def _row_weights(self, regions: tuple[int, ...], items: int, residual: torch.Tensor, latent_shape) -> torch.Tensor:
        """Each row's region strength times its control mask: ``[rows,1,h,w]`` (spatial residuals) or
        ``[rows,L,1]`` (DiT tokens), ones-shaped where a region has no control mask."""
        key = (regions, items, tuple(residual.shape[1:]), tuple(latent_shape), residual.device, residual.dtype)
        if key not in self._weights:
            rows = []
            for r in regions:
                spec = self.group.specs[r]
                if spec.control_mask is None:
                    weight = torch.full((1,) * residual.ndim, spec.strength)
                else:
                    weight = residual_weights(spec.control_mask, tuple(latent_shape), tuple(residual.shape))
                    weight = weight * spec.strength
                rows.append(region_ops.match_batch(weight, items, f"region {r + 1}'s control mask"))
            full = max((w.shape[1:] for w in rows), key=lambda shape: shape.numel())
            rows = [w.expand(-1, *full) for w in rows]
            self._weights[key] = torch.cat(rows).to(device=residual.device, dtype=residual.dtype)
        return self._weights[key]

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self._model, self._percent_to_timestep = model, percent_to_timestep_function
        for copy in self._copies.values():
            copy.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        for copy in self._copies.values():
            copy.cleanup()
        self._copies, self._weights = {}, {}
        self._model = self._percent_to_timestep = None
        super().cleanup()

    def get_models(self):
        models = super().get_models()
        for spec in self.group.specs:
            if spec.control_net is not None:
                models += [m for m in spec.control_net.get_models() if m not in models]
        return models

    def inference_memory_requirements(self, dtype):
        nets = {id(s.control_net): s.control_net for s in self.group.specs if s.control_net is not None}
        return super().inference_memory_requirements(dtype) + sum(
            n.inference_memory_requirements(dtype) for n in nets.values())

    def copy(self):
        out = InstanceControl(self.group)
        self.copy_to(out)
        return out

    def deepclone_multigpu(self, load_device, autoregister=False):
        """ComfyUI's MultiGPU (0.33+) asks for a copy per device; the batched ControlNet serves every
        region from the regions' own ControlNets on one device, so it is refused with what to do."""
        raise ValueError("Apply Regions in instances mode does not run under ComfyUI's MultiGPU: its batched "
                         "ControlNet runs every region's ControlNet on one device. Set Apply Regions' mode to "
                         "attention, or sample this model on one GPU (without the MultiGPU node)")


def _hint_at(hint: torch.Tensor, size) -> torch.Tensor:
    """A control image at ``size`` (ComfyUI's centre-crop resize) so one ControlNet call takes all of them."""
    if tuple(hint.shape[-2:]) == tuple(size):
        return hint
    import comfy.utils

    return comfy.utils.common_upscale(hint, size[1], size[0], "nearest-exact", "center")


# --------------------------------------------------------------------------- building the sampler inputs


def _with_mask(options: dict, mask: torch.Tensor) -> dict:
    """``options`` (copied) with its conditioning mask multiplied by ``mask``; the mask, never an area, bounds it."""
    d = _with_cond_mask(options.copy(), mask)
    d["set_area_to_bounds"] = False
    return d


def apply_instance_regions(model, positive: list, negative: list, regions: list, masks: list[torch.Tensor]):
    """``(model, positive, negative)`` for any core sampler: instances mode (see the module docstring)."""
    specs = [InstanceSpec(r.control_net, None if r.control_image is None else r.control_image.movedim(-1, 1),
                          r.control_strength, None if r.control_mask is None else as_mask(r.control_mask),
                          r.control_vae)
             for r in regions]
    group = InstanceGroup(specs)
    background = region_ops.background(masks)
    out = []
    for index, (tensor, options) in enumerate(positive):
        d = _with_mask(options, background)
        if index == 0:  # the first base entry carries the group; others stay ordinary masked conds
            control = InstanceControl(group)
            control.set_previous_controlnet(options.get("control"))
            d.update({"control": control, GROUP_KEY: group, ROLE_KEY: "carrier"})
        out.append([tensor, d])
    previous = positive[0][1].get("control") if positive else None
    for index, (region, mask) in enumerate(zip(regions, masks)):
        options = region.conditioning[0][1].copy()
        if previous is not None:
            options["control"] = previous
        entry = [[region.context, options]]
        if region.control_net is not None:  # the same control unbatched: what ComfyUI runs without the wrappers
            control_mask = torch.ones(1, 1, 1) if region.control_mask is None else region.control_mask
            entry, _ = apply_masked_control(entry, [], region.control_net, region.control_image, control_mask,
                                            region.control_strength, 0.0, 1.0, vae=region.control_vae)
        tensor, options = entry[0]
        options = _with_mask(options, mask)
        options.update({"strength": region.weight, GROUP_KEY: group, ROLE_KEY: index})
        out.append([tensor, options])
    patched = model.clone()
    wrappers = patched.model_options.get("transformer_options", {}).get("wrappers", {})
    if WRAPPER_KEY not in wrappers.get(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, {}):
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY,
                                     CollapseInstances())
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, InstanceBatch())
    return patched, out, negative
