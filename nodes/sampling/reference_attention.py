"""SCReferenceAttention: reference-only self-attention, batched into the sampler's own model call.

Two extension points on a ``model.clone()``:

1. ``add_wrapper_with_key(WrappersMP.APPLY_MODEL, ...)``: every model call gets the reference
   latent, noised to the call's sigma (``model_sampling.noise_scaling`` with fixed seeded noise),
   appended to the batch as extra rows. Those rows take the text conditioning of the first
   positive chunk, zero ControlNet residuals, and are cut off the output again. The number of
   appended rows is published in ``transformer_options`` (``attention.APPENDED_ROWS``).
2. An attn1 extension (``attention.install_self_attention_extension``): in every self-attention,
   each target row also attends to the keys/values of its reference row. The weight is
   ``strength`` on positive rows and ``strength * (1 - style_fidelity)`` on negative rows (read
   from ``cond_or_uncond``, never assumed), times the optional mask on the token grid.

One reference row per reference item (1, or one per latent item) is added per model call, so a
cfg step runs 3 rows instead of 2. In self-attention the positive rows (full weight) take one
extended attention; the negative rows' blend (weight below 1) takes one too, merged from
log-sum-exps on CPU (see ``attention._merged_blend``). Outside the start/end range nothing is appended and the
attention is ComfyUI's own, bit for bit.
"""
from __future__ import annotations

import uuid

import torch
import torch.nn.functional as F

from ..ops.masks import mask_to_latent
from ..ops.shapes import as_mask
from . import attention
from .sharing import SharedByCopies

WRAPPER_KEY = "selective_control.reference_attention"
INFO_KEY = "sc_reference_attention"
NOISE_SEED = 0x5C0DE  # the reference's noise is fixed so runs are reproducible


def _sigma_range(model, start: float, end: float) -> tuple[float, float]:
    ms = model.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(start)), float(ms.percent_to_sigma(end))


class ReferenceBatchWrapper(SharedByCopies):
    """APPLY_MODEL wrapper: append the noised reference rows, then drop their outputs."""

    def __init__(self, key: str, reference: torch.Tensor, sigma_start: float, sigma_end: float):
        self.key = key  # transformer_options key telling the attention extension where our rows are
        self.reference = reference  # [R,C,h,w] as the VAE gave it (process_latent_in happens per call)
        self.sigma_start, self.sigma_end = sigma_start, sigma_end

    def _reference_rows(self, base_model, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        ref = self.reference
        if ref.shape[1] != x.shape[1]:
            raise ValueError(
                f"the reference latent has shape {tuple(ref.shape)} but the model samples latents with "
                f"{x.shape[1]} channels; encode the reference with this model's VAE"
            )
        if ref.shape[-2:] != x.shape[-2:]:
            ref = F.interpolate(ref.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        ref = base_model.process_latent_in(ref.to(device=x.device, dtype=x.dtype))
        generator = torch.Generator(device="cpu").manual_seed(NOISE_SEED)
        noise = torch.randn(ref.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        return base_model.model_sampling.noise_scaling(sigma[:1].to(x.dtype), noise, ref)

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = float(t.flatten()[0])
        if not (self.sigma_end <= sigma <= self.sigma_start) or self.key in transformer_options:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        rows = x.shape[0]
        already = attention.appended_rows(transformer_options)
        cond_or_uncond, items = attention.batch_layout(transformer_options, rows - already)
        n_ref = self.reference.shape[0]
        if n_ref not in (1, items):
            raise ValueError(
                f"the reference latent has batch {n_ref} (shape {tuple(self.reference.shape)}) but the sampled "
                f"latent has batch {items}; use one reference image, or one per latent item"
            )
        chunk = cond_or_uncond.index(0) if 0 in cond_or_uncond else 0
        src = torch.arange(n_ref, device=x.device) + chunk * items  # rows whose conditioning the reference reuses
        ref_x = self._reference_rows(executor.class_obj, x, t)

        def extend(value):
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
                return torch.cat((value, value[src.to(value.device)]))
            return value

        control2 = None
        if control is not None:
            control2 = {}
            for name, items_ in control.items():
                if isinstance(items_, list):
                    control2[name] = [
                        torch.cat((c, c.new_zeros((n_ref, *c.shape[1:])))) if torch.is_tensor(c) and c.shape[0] == rows else c
                        for c in items_
                    ]
                else:
                    control2[name] = items_
        options = dict(transformer_options)
        options[self.key] = _RowPlan.build(transformer_options, rows - already, rows, n_ref, x.device)
        options[attention.APPENDED_ROWS] = already + n_ref
        out = executor(
            torch.cat((x, ref_x)), extend(t), extend(c_concat), extend(c_crossattn), control2, options,
            **{k: extend(v) for k, v in kwargs.items()},
        )
        return out[:rows]


class ReferenceAttentionExtension(SharedByCopies):
    """Each target row also attends to its reference row's self-attention keys/values."""

    def __init__(self, key: str, strength: float, style_fidelity: float, mask: torch.Tensor | None):
        self.key = key
        self.strength, self.style_fidelity = strength, style_fidelity
        self.mask = None if mask is None else as_mask(mask)
        self._grids: dict = {}

    def _mask_tokens(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        if key not in self._grids:  # small: one value per token per mask item
            self._grids[key] = mask_to_latent(self.mask, h, w).flatten(1).unsqueeze(-1).to(device=device, dtype=dtype)
        return self._grids[key]

    def extend(self, q, k, v, extra_options) -> list[attention.Extension]:
        plan = extra_options.get(self.key)
        if plan is None:
            return []
        uncond_weight = self.strength * (1.0 - self.style_fidelity)
        if self.mask is None:
            # One group per row weight, so full-weight rows skip the plain attention.
            out = []
            for (rows, ref_rows), weight in ((plan.cond, self.strength), (plan.uncond, uncond_weight)):
                if rows.numel() and weight > 0:
                    out.append(attention.Extension(rows, k[ref_rows], v[ref_rows], float(weight)))
            return out
        h, w = attention.token_grid(q.shape[1], extra_options)
        tokens = self._mask_tokens(h, w, q.device, q.dtype)
        if tokens.shape[0] not in (1, plan.items):
            raise ValueError(
                f"the reference mask has batch {tokens.shape[0]} but the sampled latent has batch {plan.items}; "
                "use one mask, or one per latent item"
            )
        out = []
        for (rows, ref_rows), weight in ((plan.cond, self.strength), (plan.uncond, uncond_weight)):
            if rows.numel() and weight > 0:
                item_tokens = tokens[plan.latent_index[rows]] if tokens.shape[0] > 1 else tokens
                out.append(attention.Extension(rows, k[ref_rows], v[ref_rows], item_tokens * weight))
        return out


class _RowPlan:
    """Which rows of one model call attend to which reference row; built once per call."""

    def __init__(self, cond, uncond, latent_index, items):
        self.cond, self.uncond, self.latent_index, self.items = cond, uncond, latent_index, items

    @classmethod
    def build(cls, transformer_options: dict, targets: int, ref_start: int, n_ref: int, device) -> "_RowPlan":
        latent_index = attention.row_latent_index(transformer_options, targets, device=device)
        uncond = attention.row_is_uncond(transformer_options, targets, device=device)
        ref_rows = ref_start + (latent_index if n_ref > 1 else torch.zeros_like(latent_index))
        groups = []
        for flag in (False, True):
            rows = (uncond == flag).nonzero().flatten()
            groups.append((rows, ref_rows[rows]))
        return cls(groups[0], groups[1], latent_index, attention.batch_layout(transformer_options, targets)[1])


def patch_reference_attention(model, reference: torch.Tensor, strength: float, style_fidelity: float,
                              mask: torch.Tensor | None, start: float, end: float):
    """A clone of ``model`` with reference-only attention to ``reference`` (``[R,C,h,w]``)."""
    if reference.ndim != 4:
        raise ValueError(f"reference must be a LATENT with samples [B,C,h,w], got shape {tuple(reference.shape)}")
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"need 0 <= start_percent <= end_percent <= 1, got {start} and {end}")
    patched = model.clone()
    if strength == 0.0:
        return patched  # nothing to add: the plain model, bit for bit
    attention.attn1_block_keys(patched)  # fails early, with a clear message, on non-UNet models
    sigma_start, sigma_end = _sigma_range(model, start, end)
    import comfy.patcher_extension

    key = f"{INFO_KEY}.{uuid.uuid4().hex[:8]}"

    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
        ReferenceBatchWrapper(key, reference.clone(), sigma_start, sigma_end),
    )
    attention.install_self_attention_extension(patched, ReferenceAttentionExtension(key, strength, style_fidelity, mask))
    return patched
