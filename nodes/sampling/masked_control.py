"""A ControlNet / T2I-Adapter whose residuals are multiplied by a mask at every injection point.

``MaskedControl`` is a ``comfy.controlnet.ControlBase`` that wraps a copy of any control object
(ControlNet, T2I-Adapter, Control-LoRA, ...). ComfyUI calls ``get_control`` once per model call
for each cond batch; the wrapper asks the inner control for its residuals (the inner control
applies its own hint, strength and start/end range as usual), multiplies each residual by the
mask area-averaged to that residual's height x width, then adds the previous control of the
chain the same way core ``control_merge`` does. So:

- all-ones mask: residuals identical to core Apply ControlNet (Advanced) (x * 1.0 is exact);
- all-zero mask: the inner control is not even run; the chain behaves as if it were absent;
- residuals are exactly 0 wherever the mask does not touch a residual's cell.

The UNet itself still mixes features across the image after injection (convolutions, GroupNorm
statistics, self-attention), so pixels near or far outside the mask can change slightly; the
control's *input* is strictly limited to the mask.

DiT ControlNets (Flux XLabs / InstantX / Union, Qwen-Image InstantX and Fun) return token
residuals ``[N, L, D]`` that the model adds to its first ``L`` image tokens; the mask goes to the
model's token grid (the latent patchified 2x2, rows then columns, frames outermost) and
multiplies each token's residual, so the same rules hold per token.

The resized masks are computed once per residual shape and sampling run (dropped in
``cleanup``). Masks are in image space, like the control image, and are centre-cropped to the
latent's aspect with the same rule ComfyUI uses for the hint.
"""
from __future__ import annotations

import math

import torch

import comfy.controlnet

from ..ops.control import mask_for_residual, token_grid, token_weights, weights_per_row
from ..ops.shapes import as_mask
from . import compat


class MaskedControl(comfy.controlnet.ControlBase):
    """Wraps ``inner`` (a ControlBase with its hint set and no previous control) with a mask."""

    def __init__(self, inner: comfy.controlnet.ControlBase, mask: torch.Tensor) -> None:
        super().__init__()
        if inner.previous_controlnet is not None:
            raise ValueError("MaskedControl needs an inner control without a previous control; chain on the wrapper")
        self.inner = inner
        self.mask = as_mask(mask).detach()
        self.empty = not bool((self.mask > 0).any())
        # Shared with the inner control so ComfyUI's hook collection (which walks .extra_hooks
        # and .previous_controlnet directly) sees them.
        self.extra_hooks = inner.extra_hooks
        self.timestep_percent_range = inner.timestep_percent_range
        self.strength = inner.strength
        self._resized: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ ControlBase API

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options, **kwargs):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if self.empty:
            return control_prev
        own = self.inner.get_control(x_noisy, t, cond, batched_number, transformer_options)
        if own is None:
            return control_prev
        masked: dict[str, list] = {}
        for key, residuals in own.items():
            done: dict[int, torch.Tensor] = {}  # shared tensors stay shared (multiplied once)
            out = []
            for x in residuals:
                if x is None:
                    out.append(None)
                    continue
                if id(x) not in done:
                    done[id(x)] = x * self._weights(x, tuple(x_noisy.shape), batched_number)
                out.append(done[id(x)])
            masked[key] = out
        return _merge(masked, control_prev)

    def _weights(self, x: torch.Tensor, latent_shape: tuple[int, ...], batched_number: int) -> torch.Tensor:
        """The mask for residual ``x`` (``[N,C,h,w]`` or DiT tokens ``[N,L,D]``), broadcastable, cached per shape."""
        key = (tuple(x.shape[1:-1]) if x.ndim == 3 else tuple(x.shape[-2:]), x.shape[0], latent_shape,
               batched_number, x.device, x.dtype)
        weights = self._resized.get(key)
        if weights is None:
            m = residual_weights(self.mask, latent_shape, tuple(x.shape))  # [Bm,1,h,w] or [Bm,L,1]
            m = weights_per_row(m, x.shape[0], batched_number,
                                f"masked ControlNet, mask shape {tuple(self.mask.shape)}, control residual shape "
                                f"{tuple(x.shape)}")
            if x.ndim == 5:  # video models: [N,C,T,h,w]
                m = m.unsqueeze(2)
            weights = m.to(device=x.device, dtype=x.dtype)
            self._resized[key] = weights
        return weights

    def pre_run(self, model, percent_to_timestep_function):
        self.inner.pre_run(model, percent_to_timestep_function)
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        self.inner.cleanup()
        self._resized = {}
        super().cleanup()

    def get_models(self):
        return self.inner.get_models() + super().get_models()

    def inference_memory_requirements(self, dtype):
        return self.inner.inference_memory_requirements(dtype) + super().inference_memory_requirements(dtype)

    def copy(self):
        return MaskedControl(self.inner.copy(), self.mask)

    def deepclone_multigpu(self, load_device, autoregister=False):
        """ComfyUI's MultiGPU (0.33+) runs one copy of each control per device: this mask around a
        device copy of the inner control."""
        clone = MaskedControl(compat.device_copy(self.inner, load_device), self.mask)
        return compat.register_device_copy(self, load_device, clone, autoregister)


TOKEN_PATCH_SIZES = (2, 1)  # Flux, Chroma, Qwen-Image and SD3 patchify the latent 2x2; packed latents 1x1


def residual_weights(mask: torch.Tensor, latent_shape: tuple[int, ...], residual_shape: tuple[int, ...]) -> torch.Tensor:
    """The mask as weights for one control residual: ``[B,1,h,w]`` for a spatial residual,
    ``[B,L,1]`` for DiT tokens ``[N,L,D]``.

    Tokens: the latent ``[B,C,h,w]`` (or ``[B,C,T,h,w]``) is cut into ``p x p`` patches, padded at
    the bottom/right to whole patches, ``T * ceil(h/p) * ceil(w/p)`` tokens in row-major order
    with frames outermost; ``p`` is the patch size that gives the residual's ``L``. Each token gets
    the fraction of its patch the mask covers (0 where the mask does not touch it).
    """
    if len(residual_shape) != 3:
        return mask_for_residual(mask, tuple(latent_shape[-2:]), tuple(residual_shape[-2:]))
    tokens = residual_shape[1]
    for patch in TOKEN_PATCH_SIZES:
        if math.prod(token_grid(latent_shape, patch)) == tokens:
            return token_weights(mask, latent_shape, patch, tokens)
    raise ValueError(
        f"masked ControlNet: a control residual of shape {tuple(residual_shape)} does not fit the latent "
        f"{tuple(latent_shape)} as image tokens (patch size 1 or 2); this model's ControlNet is not supported "
        "with a mask: use core Apply ControlNet"
    )


def _merge(control: dict[str, list], control_prev: dict[str, list] | None) -> dict[str, list]:
    """Add the previous control's residuals, exactly as ``ControlBase.control_merge`` does."""
    out = {key: list(control.get(key, [])) for key in ("input", "middle", "output")}
    for key, values in control.items():
        out.setdefault(key, list(values))
    if control_prev is None:
        return out
    for key in ("input", "middle", "output"):
        o = out[key]
        for i, prev in enumerate(control_prev.get(key, [])):
            if i >= len(o):
                o.append(prev)
            elif prev is not None:
                o[i] = prev if o[i] is None else prev + o[i]
    return out


def apply_masked_control(
    positive: list,
    negative: list,
    control_net: comfy.controlnet.ControlBase,
    image: torch.Tensor,
    mask: torch.Tensor,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae=None,
    exact_outside: bool = False,
) -> tuple[list, list]:
    """Core Apply ControlNet (Advanced) plus a mask; conditioning lists and dicts are copied.

    Like core, positive and negative entries that share a previous control share one new
    control object (so ComfyUI can still batch them together).

    ``exact_outside``: every conditioning entry is split in two with ComfyUI's conditioning
    masks: one with this control, weighted by the mask, and one as it was, weighted by 1 - mask.
    ComfyUI's sampler then blends the two model outputs by the mask, so outside the mask the
    output is exactly the one without this control. Costs one more model pass per entry.
    """
    if strength == 0:
        return positive, negative
    mask = as_mask(mask)
    empty, full = not bool((mask > 0).any()), bool((mask >= 1).all())
    hint = image.movedim(-1, 1)
    made: dict = {}  # previous control -> the new wrapper chained on it
    out = []
    for conditioning in (positive, negative):
        entries = []
        for tensor, options in conditioning:
            previous = options.get("control", None)
            if previous not in made:
                inner = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent), vae=vae)
                inner.set_previous_controlnet(None)
                wrapper = MaskedControl(inner, mask)
                wrapper.set_previous_controlnet(previous)
                made[previous] = wrapper
            d = options.copy()
            d["control"] = made[previous]
            d["control_apply_to_uncond"] = False
            if not exact_outside or full:
                entries.append([tensor, d])
                continue
            if not empty:
                entries.append([tensor, _with_cond_mask(d, mask)])
            entries.append([tensor, _with_cond_mask(options.copy(), 1.0 - mask)])
        out.append(entries)
    return out[0], out[1]


def _with_cond_mask(d: dict, weight: torch.Tensor) -> dict:
    """``d`` with its conditioning mask multiplied by ``weight`` (resized to the existing mask)."""
    existing = d.get("mask")
    if existing is not None:
        existing = as_mask(existing)
        weight = torch.nn.functional.interpolate(
            weight.unsqueeze(1), size=existing.shape[-2:], mode="bilinear", align_corners=False
        ).squeeze(1).to(existing) * existing
    d["mask"] = weight
    d.setdefault("set_area_to_bounds", False)
    return d
