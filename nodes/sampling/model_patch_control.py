"""Core's model-patch ControlNets (Z-Image Fun, Qwen-Image DiffSynth) limited to a region mask.

Core applies these controls as block patches on the MODEL (Apply Z-Image Fun ControlNet, Apply
Qwen Image DiffSynth ControlNet): after a transformer block, the patch runs its control block and
adds the result to the first image tokens, in place. ``MaskedModelPatch`` takes the place of
such a patch in the model's patch lists and calls it unchanged; it keeps the image tokens from
before the call and blends: ``before + w * (after - before)`` per token, ``w`` the mask's cover
of that token's patch. So:

- all-ones mask: every token is core's result bit for bit (``torch.lerp`` returns ``after`` at 1);
- all-zero mask: the patch is removed; the model runs as without it;
- the residual is exactly 0 on tokens the mask does not touch, at every block and step.

The model's attention still spreads the control's effect past the mask edge in later blocks,
as a ControlNet's does on a UNet; what the control *adds* is limited to the mask. Core's own
``mask`` input on those nodes is different: it is the inpainting mask the control model reads.
"""
from __future__ import annotations

import torch

from ..ops.control import blend_by_weight, token_weights, weights_per_row
from ..ops.shapes import as_mask
from . import compat


class MaskedModelPatch:
    """Stands in for one core model-patch ControlNet ``inner``; ``mask`` is in image space."""

    def __init__(self, inner, mask: torch.Tensor, patch_size: int) -> None:
        self.inner = inner
        self.mask = as_mask(mask).detach()
        self.patch_size = patch_size
        self._weights: dict[tuple, torch.Tensor] = {}

    def __call__(self, kwargs: dict) -> dict:
        img = kwargs["img"]
        before = img.clone()
        out = self.inner(kwargs)
        after = out.get("img", img)  # Z-Image Fun pops "img" and adds in place (the model reads its view)
        blended = blend_by_weight(before, after, self._weights_for(after, kwargs))
        if "img" in out:
            out["img"] = blended
        else:
            img.copy_(blended)
        return out

    def _weights_for(self, img: torch.Tensor, kwargs: dict) -> torch.Tensor:
        latent_shape = tuple(kwargs["x"].shape)
        conds = len(kwargs.get("transformer_options", {}).get("cond_or_uncond", [])) or 1
        key = (img.shape[0], img.shape[1], latent_shape, conds, img.device, img.dtype)
        weights = self._weights.get(key)
        if weights is None:
            weights = token_weights(self.mask, latent_shape, self.patch_size, img.shape[1])
            weights = weights_per_row(weights, img.shape[0], conds,
                                      f"model-patch ControlNet mask shape {tuple(self.mask.shape)}, image tokens "
                                      f"{tuple(img.shape)}").to(device=img.device, dtype=img.dtype)
            self._weights[key] = weights
        return weights

    # What ModelPatcher asks of a patch: the models to load with it, moving it between devices.
    def models(self) -> list:
        return self.inner.models()

    def to(self, device_or_dtype):
        self.inner = self.inner.to(device_or_dtype)
        self._weights = {}
        return self

    def __getattr__(self, name: str):
        """Anything else core calls on its patch (e.g. ``cleanup`` after sampling) goes to it."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def mask_model_patch_controls(model, mask: torch.Tensor):
    """A clone of ``model`` whose core model-patch ControlNets (those not masked yet) act only inside
    ``mask``; an all-zero mask removes them."""
    mask = as_mask(mask)
    empty = not bool((mask > 0).any())
    patched = model.clone()
    found = compat.replace_model_patch_controls(
        patched, lambda inner: None if empty else MaskedModelPatch(inner, mask, compat.dit_patch_size(model)))
    if found == 0:
        raise ValueError(
            "the connected model has no model-patch ControlNet to limit: connect this node after core's "
            "Apply Z-Image Fun ControlNet or Apply Qwen Image DiffSynth ControlNet (each such control is "
            "limited by the first of these nodes after it)"
        )
    return patched
