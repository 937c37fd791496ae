"""Shape rules shared by every op: normalising masks and images, batch broadcasting, resizing.

One place for these rules so every node reports the same errors and resizes the same way
(a batch of 1 broadcasts against a batch of N; other sizes are resized, never cropped).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return ``mask`` as ``[B,H,W]`` float; a ``[H,W]`` mask becomes a batch of one.

    Also accepts ``[B,1,H,W]`` (a channel axis some packs leave on). Never copies needlessly.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    elif mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(
            f"{name} must have shape [B,H,W] or [H,W], got {tuple(mask.shape)}; "
            "convert an IMAGE to a MASK with a 'Convert Image to Mask' node first"
        )
    if mask.shape[1] == 0 or mask.shape[2] == 0:
        raise ValueError(f"{name} has an empty size {tuple(mask.shape)}")
    return mask if mask.is_floating_point() else mask.float()


def as_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Check that ``image`` is ``[B,H,W,C]`` (a ``[H,W,C]`` image becomes a batch of one)."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(
            f"{name} must have shape [B,H,W,C], got {tuple(image.shape)}; "
            "convert a MASK to an IMAGE with a 'Convert Mask to Image' node first"
        )
    return image


def as_rgb(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """``[B,H,W,3]`` float image: alpha is dropped, one channel is repeated to three."""
    image = as_image(image, name)
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    if channels == 1:
        return image.expand(*image.shape[:3], 3)
    raise ValueError(f"{name} must have 1, 3 or 4 channels, got shape {tuple(image.shape)}")


def _expanded(tensor: torch.Tensor, items: int) -> torch.Tensor:
    """A batch of 1 as a view of ``items`` (no copy); a batch of ``items`` as it is."""
    return tensor if tensor.shape[0] == items else tensor.expand(items, *tensor.shape[1:])


def broadcast_batch(
    a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("a", "b")
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tensors to one batch size: a batch of 1 expands to the other's (a view, no copy).

    Any other batch mismatch is an error: silently repeating or cutting batches hides wiring mistakes.
    """
    na, nb = a.shape[0], b.shape[0]
    if na != nb and 1 not in (na, nb):
        raise ValueError(
            f"batch sizes differ: {names[0]} has shape {tuple(a.shape)} and {names[1]} has shape {tuple(b.shape)}; "
            "use the same batch size for both, or a batch of 1 that applies to every item"
        )
    return _expanded(a, max(na, nb)), _expanded(b, max(na, nb))


def match_batch(tensor: torch.Tensor, items: int, name: str = "region mask", kind: str = "mask",
                per: str = "latent") -> torch.Tensor:
    """One tensor ``[B,...]`` to a given batch of ``items`` (latents, or ``per``): a batch of 1 applies
    to all, else one each; the same rule as :func:`broadcast_batch`, against a count.

    ``name`` says whose tensor it is and ``kind`` what the user connects (mask, image, prompt), so
    the error tells them which input to change.
    """
    if tensor.shape[0] not in (1, items):
        raise ValueError(
            f"{name} has batch {tensor.shape[0]} but the {per} batch is {items} ({kind} shape {tuple(tensor.shape)}); "
            f"use one {kind} for all {per}s (a batch of 1) or one {kind} per {per}"
        )
    return _expanded(tensor, items)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Float 0..1 pixels (any shape) -> contiguous uint8 numpy on the CPU, rounded to the nearest level."""
    return np.ascontiguousarray((image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a ``[B,H,W]`` mask to ``height x width`` with bilinear filtering (no-op if equal).

    Bilinear (align_corners=False) is the pack's one rule for fitting a mask to an image, so a
    mask made at another resolution lines up with the image instead of being cropped.
    """
    if mask.shape[-2] == height and mask.shape[-1] == width:
        return mask
    out = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    return out.squeeze(1).clamp_(0.0, 1.0)


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a ``[B,H,W,C]`` image with bilinear filtering (antialiased when shrinking); no-op if equal."""
    if image.shape[1] == height and image.shape[2] == width:
        return image
    shrinking = height < image.shape[1] or width < image.shape[2]
    out = F.interpolate(
        image.movedim(-1, 1), size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking
    )
    return out.movedim(1, -1).clamp_(0.0, 1.0)


def fit_mask_to_image(mask: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(image, mask)`` with the mask resized to the image's size (bilinear) and batches broadcast."""
    mask = resize_mask(as_mask(mask), image.shape[1], image.shape[2])
    return broadcast_batch(image, mask, ("image", "mask"))
