"""SCPreserveRegion's hook: the kept area of the denoised prediction becomes the source latent.

Extension point: ``ModelPatcher.set_model_sampler_post_cfg_function`` on a clone. After CFG, every
sampler asks the model for a denoised estimate x0; in the kept area we replace it by the source
latent (blended over the feathered band and scaled by the schedule). Samplers step towards x0, so
the latent in that area converges to the source while the rest is generated around it; at the
last step (sigma_next = 0) the sample *is* x0, so with a hard mask and a 0..1 schedule the final
latent equals the source there. The sampler's own latent ``noise_mask`` (inpainting) still applies
on top: ComfyUI keeps the input latent wherever noise_mask is 0.
"""
from __future__ import annotations

import torch

from ..ops import blending
from . import compat
from .sharing import SharedByCopies


def sigma_to_percent(model_sampling, sigma: float) -> float:
    """Sampling progress (0..1) of ``sigma``: the inverse of ``model_sampling.percent_to_sigma``.

    Bisection on the (decreasing) ``percent_to_sigma`` works for every ModelSampling type
    (discrete, EDM, flow) and matches how ComfyUI turns start/end percents into sigmas.
    """
    lo, hi = 0.0, 1.0
    if sigma <= 0.0:
        return 1.0
    if sigma >= model_sampling.percent_to_sigma(1e-6):
        return 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if model_sampling.percent_to_sigma(mid) > sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class PreserveRegionHook(SharedByCopies):
    """Post-CFG function: ``denoised = lerp(denoised, source, weight * schedule(sigma))``.

    ``source`` is the source LATENT's samples in the sampler's space (after
    ``process_latent_in``; ``[B,C,T,h,w]`` for Qwen-Image), ``weight`` the ``[1 or B,1,h,w]``
    latent-grid mask. Immutable.
    """

    def __init__(self, source: torch.Tensor, weight: torch.Tensor, start: float, end: float, falloff: str):
        blending.validate_schedule(start, end, falloff)
        self.source, self.weight = source, weight
        self.start, self.end, self.falloff = start, end, falloff

    def strength_at(self, model_sampling, sigma: float) -> float:
        if self.falloff == "none" and self.start == 0.0 and self.end == 1.0:
            return 1.0
        return blending.schedule_weight(sigma_to_percent(model_sampling, sigma), self.start, self.end, self.falloff)

    def __call__(self, args: dict, **kwargs) -> torch.Tensor:
        denoised = args["denoised"]
        sigma = args["sigma"]
        sigma = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
        strength = self.strength_at(args["model"].model_sampling, sigma)
        if strength <= 0.0:
            return denoised
        source = self.source.to(device=denoised.device, dtype=denoised.dtype)
        weight = self.weight.to(device=denoised.device, dtype=denoised.dtype)
        return blending.preserve(denoised, source, weight, strength)


def patch_preserve_region(model, source_samples: torch.Tensor, mask: torch.Tensor, feather_px: float,
                          start: float, end: float, falloff: str):
    """A clone of ``model`` whose denoised prediction keeps ``source_samples`` under ``mask``."""
    source = blending.as_latent(source_samples, "source latent")
    declared_cell_px, dimensions = compat.latent_layout(model)
    if dimensions == 3 and source.ndim == 4:  # as core's sampler does: Qwen-Image samples [B,C,1,h,w]
        source = source.unsqueeze(2)
    cell_px = blending.pixels_per_cell(source, declared_cell_px)
    weight = blending.latent_weight(mask, source.shape[-2], source.shape[-1], feather_px, direction="outward",
                                    cell_px=cell_px)
    if weight.shape[0] not in (1, source.shape[0]):
        raise ValueError(
            f"mask has batch {weight.shape[0]} but the source latent has shape {tuple(source.shape)}; "
            "use one mask for all items or one per item"
        )
    patched = model.clone()
    hook = PreserveRegionHook(model.model.process_latent_in(source.clone()), weight, start, end, falloff)
    patched.set_model_sampler_post_cfg_function(hook)
    return patched
