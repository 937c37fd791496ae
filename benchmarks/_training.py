"""Measurements and the synthetic task of the local-control training benchmark (and its tests):
the stripes task, the mean losses of an adapter, and where an adapter acts. Not part of the pack:
nothing a user's workflow runs. (The leading underscore keeps ``run_all.py`` from running it.)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import pack_import  # noqa: E402


SD15_SCALE = 0.18215  # SD1.5's latent scale_factor: model space = LATENT samples x this


def _loop():
    return pack_import("nodes.sampling.training")


def _prepared(model_patcher, conditioning: list):
    """The training step's forward pass for ``model_patcher``, with the model loaded."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model_patcher])
    return _loop().TrainingStep(model_patcher, conditioning)


def stripes_task(n: int = 4, latent: int = 8, seed: int = 0, full_hint: bool = False, context_dim: int = 64):
    """A synthetic local-control task (tests and benchmarks): latent stripes that must appear only
    inside a per-image square mask; flat (a per-image colour) elsewhere.

    Returns ``(latents [n,4,latent,latent], hints [n,8*latent,8*latent,3], masks [n,8*latent,8*latent],
    conditioning, pattern [1,1,latent,latent])``: ``latents`` are LATENT samples (the VAE's space, as
    training takes them), which an SD1.5 model sees x ``SD15_SCALE`` as the amplitudes below;
    ``pattern`` is the +-1 stripe pattern in the model's latent space, the same in every channel. The control image shows the stripes inside the mask only, or
    everywhere with ``full_hint`` (a whole-image control that must act only inside the mask, the
    case mask-in-the-loop training is for). Masks cover 5/8 of each side at a random position.
    """
    g = torch.Generator().manual_seed(seed)
    size, side = latent * 8, latent * 5
    masks = torch.zeros(n, size, size)
    for i in range(n):
        top, left = (int(torch.randint(0, size - side + 1, (1,), generator=g)) for _ in range(2))
        masks[i, top : top + side, left : left + side] = 1.0
    stripes = (torch.arange(size) // 16 % 2).float().expand(size, -1)
    hints = (stripes if full_hint else stripes * masks).expand(n, -1, -1).unsqueeze(-1).expand(-1, -1, -1, 3)
    pattern = ((torch.arange(latent) // 2 % 2).float().expand(latent, -1) * 2.0 - 1.0).view(1, 1, latent, latent)
    latent_mask = F.adaptive_avg_pool2d(masks.unsqueeze(1), latent)
    latents = (0.2 * torch.randn(n, 4, 1, 1, generator=g) + latent_mask * pattern) / SD15_SCALE
    cond = [[torch.randn(1, 77, context_dim, generator=g), {}]]
    return latents, hints.contiguous(), masks, cond, pattern


def evaluate(model_patcher, adapter, latents, hints, masks, conditioning, sigmas: torch.Tensor, seed: int = 0):
    """Mean (noise loss, sobel loss) over the dataset at fixed noise and the given sigmas."""
    step = _prepared(model_patcher, conditioning)
    latents, hints, masks = _loop().check_dataset(latents, hints, masks)
    _loop().check_conditioning(conditioning, latents.shape[0])
    latents = step.base.process_latent_in(latents.to(step.device, torch.float32))
    generator = torch.Generator().manual_seed(seed)
    noise_total = sobel_total = 0.0
    with torch.no_grad():
        for sigma in sigmas:
            noise = torch.randn(latents.shape, generator=generator).to(step.device)
            s = torch.full((latents.shape[0],), float(sigma), device=step.device)
            noise_loss, sobel_loss, _ = step.losses(adapter, latents, hints, masks, noise, s,
                                                    index=list(range(latents.shape[0])))
            noise_total += noise_loss.item()
            sobel_total += sobel_loss.item()
    return noise_total / len(sigmas), sobel_total / len(sigmas)


def control_effect(model_patcher, adapter, latents, hints, masks, conditioning, sigmas: torch.Tensor,
                   inference_mask: bool = True, seed: int = 0, pattern: torch.Tensor | None = None) -> dict[str, float]:
    """Where an adapter acts, at fixed noise and the given sigmas, averaged over them.

    Regions of latent cells: ``inside`` (fully covered by the mask), ``outside`` (not touched by
    it) and ``far`` (outside and at least 2 cells from any touched cell). For each region:

    - ``<region>``: mean |z0'(with adapter) - z0'(model alone)|, the adapter's effect there;
    - ``<region>_error`` / ``<region>_error_base``: mean |z0' - z0| with the adapter / without;
    - with a latent-size ``pattern`` (e.g. the control's own pattern, ``[1|B,1|C,h,w]``),
      ``<region>_pattern``: how much of it the adapter adds there (least-squares amplitude of
      the difference along the pattern; 1 = the pattern itself, 0 = none of it).

    ``inference_mask`` True masks the features as Apply ControlNet (Masked) does; False applies
    the adapter unmasked (as core Apply ControlNet does).
    """
    step = _prepared(model_patcher, conditioning)
    latents, hints, masks = _loop().check_dataset(latents, hints, masks)
    _loop().check_conditioning(conditioning, latents.shape[0])
    latents = step.base.process_latent_in(latents.to(step.device, torch.float32))
    latent_hw = tuple(latents.shape[-2:])
    cells = pack_import("nodes.ops.control").mask_for_residual(masks, latent_hw, latent_hw).to(latents)
    near = F.max_pool2d((cells > 0).to(latents), 5, stride=1, padding=2)
    regions = {"inside": cells >= 1, "outside": cells == 0, "far": near == 0}
    regions = {name: where.expand_as(latents) for name, where in regions.items()}
    for name in ("inside", "outside"):
        if not bool(regions[name].any()):
            raise ValueError(f"control_effect needs masks with cells fully {name} the mask")
    if pattern is not None:
        pattern = pattern.to(latents).expand_as(latents)
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    with torch.no_grad():
        for sigma in sigmas:
            noise = torch.randn(latents.shape, generator=generator).to(step.device)
            s = torch.full((latents.shape[0],), float(sigma), device=step.device)
            x_t = step.sampling.noise_scaling(s, noise, latents)
            index = list(range(latents.shape[0]))
            base = step.predict(None, x_t, s, hints, masks, index)
            with_adapter = step.predict(adapter, x_t, s, hints, masks if inference_mask else torch.ones_like(masks),
                                        index)
            diff = with_adapter - base
            for name, where in regions.items():
                if not bool(where.any()):
                    continue
                values = {name: diff[where].abs().mean(),
                          f"{name}_error": (with_adapter - latents)[where].abs().mean(),
                          f"{name}_error_base": (base - latents)[where].abs().mean()}
                if pattern is not None:
                    p = pattern[where]
                    values[f"{name}_pattern"] = (diff[where] * p).sum() / p.square().sum().clamp_min(1e-12)
                for key, value in values.items():
                    totals[key] = totals.get(key, 0.0) + value.item() / len(sigmas)
    return totals
