"""Mask operations: feather, grow/shrink, combine, clean up, crop/uncrop, fit to a latent.

Pure torch (plus scipy for connected components in ``cleanup``); no ComfyUI imports, so the
functions are unit-tested and benchmarked directly. Every function works batched on the
mask's device and returns new tensors (ComfyUI caches node outputs; inputs are never written).

Distances: feather and grow need the Euclidean distance from each pixel to the nearest pixel on
the other side of the mask edge, but only up to the radius. ``_edge_sqdist_apply`` computes that
*exactly* (same numbers as scipy's full EDT) in a radius-limited way, which is what makes it fast:
1. per column, the distance to the nearest pixel of the other label (log-step min scans, int8,
   capped at K+1), over the whole image;
2. only for row segments within K px of an edge (found on 8x8 blocks), gathered with a K px
   halo: the same distance along the row, then the row pass
   d2 = min(row_dist^2, min_{|k|<=K} col_dist(x+k)^2 + k^2) in cache-sized int16 chunks.
Pixels farther than K from any edge keep their label (0 or 1): nothing there changes.
The image border is not an edge: masks are treated as continuing beyond the frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .shapes import as_image, as_mask, broadcast_batch, fit_mask_to_image, resize_image, resize_mask

Direction = Literal["inward", "outward", "centred"]
Falloff = Literal["linear", "smoothstep", "gaussian"]
CombineOp = Literal["union", "intersection", "difference", "xor"]

DIRECTIONS: tuple[str, ...] = ("inward", "outward", "centred")
FALLOFFS: tuple[str, ...] = ("linear", "smoothstep", "gaussian")
COMBINE_OPS: tuple[str, ...] = ("union", "intersection", "difference", "xor")

_BLOCK = 8  # granularity (px) of the "near an edge" map
_CHUNK_ELEMENTS = 1 << 20  # int16 work per chunk of the row pass: cache-sized, few ops
_GROUP_PIXELS = 1 << 24  # masks handled together in the full-image passes
_GAUSS_K = 4.5  # gaussian falloff exp(-4.5 (1-t)^2): sigma = radius / 3


# --------------------------------------------------------------------------- distances


def _dist1d_(d: torch.Tensor, dim: int, cap: int) -> torch.Tensor:
    """In place: exact 1-D distance along ``dim`` to the nearest 0 entry, for distances < ``cap``.

    ``d`` holds 0 at targets and ``cap`` elsewhere. Min-scans with steps 1, 2, 4, ... in both
    directions reach every offset up to 2*step-1 at its true cost, so log2(cap) passes suffice.
    """
    n = d.shape[dim]
    step = 1
    while step < cap and step < n:
        ahead, behind = d.narrow(dim, step, n - step), d.narrow(dim, 0, n - step)
        torch.minimum(ahead, behind + step, out=ahead)
        torch.minimum(behind, ahead + step, out=behind)
        step *= 2
    return d.clamp_(max=cap)


def _boundary(lab: torch.Tensor, dim: int) -> torch.Tensor:
    """Pixels whose neighbour along ``dim`` has the other label."""
    n = lab.shape[dim]
    if n < 2:
        return torch.zeros_like(lab)
    change = lab.narrow(dim, 1, n - 1) != lab.narrow(dim, 0, n - 1)
    boundary = torch.empty_like(lab)
    boundary.narrow(dim, 0, 1).copy_(change.narrow(dim, 0, 1))
    boundary.narrow(dim, n - 1, 1).copy_(change.narrow(dim, n - 2, 1))
    torch.logical_or(change.narrow(dim, 1, n - 2), change.narrow(dim, 0, n - 2), out=boundary.narrow(dim, 1, n - 2))
    return boundary


def _run_dist(boundary: torch.Tensor, dim: int, cap: int, dtype: torch.dtype) -> torch.Tensor:
    """Distance (1..cap) along ``dim`` to the nearest pixel of the other label.

    Within a run of one label the nearest such pixel lies just past the run's nearest
    ``boundary`` pixel, hence 1 + the distance to that pixel.
    """
    if 2 * cap < torch.iinfo(torch.int8).max:  # int8 halves the memory traffic
        d = boundary.contiguous().view(torch.int8).bitwise_xor(1).mul_(cap - 1)  # 0 on boundary, cap-1 elsewhere
    else:
        d = boundary.logical_not().to(dtype).mul_(cap - 1)
    return _dist1d_(d, dim, cap - 1).add_(1).to(dtype)


def _blocks_any(flags: torch.Tensor) -> torch.Tensor:
    """Any-reduce a bool ``[G,H,W]`` (H, W multiples of 8) over 8x8 blocks -> ``[G,H/8,W/8]``.

    Eight bools are one int64, so the horizontal reduce is a single compare.
    """
    g, height, width = flags.shape
    packed = flags.contiguous().view(torch.uint8).view(g, height, width // _BLOCK, _BLOCK).view(torch.int64)
    return (packed[..., 0] != 0).view(g, height // _BLOCK, _BLOCK, width // _BLOCK).any(dim=2)


def _edge_sqdist_apply(
    lab: torch.Tensor,
    reach: int,
    finish: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Return the mask ``lab`` (as ``out_dtype``) with ``finish(d2, inside)`` written near edges.

    ``d2`` is the exact squared distance to the nearest pixel of the other label wherever that
    distance is <= ``reach``; elsewhere it is some value > reach^2. Pixels farther than ``reach``
    from every edge keep their label (0 or 1). The frame is padded by repeating its border
    pixels, which never brings a pixel of the other label closer, so it adds no edge.
    Masks are processed in groups (~16 Mpx) so big batches need bounded memory and few ops.
    """
    batch, height, width = lab.shape
    # No two pixels are farther apart than height + width, so a larger reach changes nothing but the integer
    # sizes: capping it keeps any radius (a linked 10^6) exact instead of overflowing into NaN.
    k = min(max(0, int(reach)), height + width)
    kh = min(k, width - 1)  # horizontal offsets beyond the image only meet padding
    dtype = next(t for t in (torch.int16, torch.int32, torch.int64) if (k + 1) ** 2 + kh**2 <= torch.iinfo(t).max)
    seg = 64 if k <= 64 else 256
    n_seg = -(-width // seg)
    wp, win = n_seg * seg, seg + 2 * kh
    hp = -(-height // _BLOCK) * _BLOCK
    rb = -(-k // _BLOCK)
    out = torch.empty((batch, height, width), dtype=out_dtype, device=lab.device)
    group = max(1, _GROUP_PIXELS // (hp * (wp + 2 * kh)))
    for first in range(0, batch, group):
        lb = lab[first : first + group]
        g = lb.shape[0]
        # Repeat border pixels: kh columns left, kh + (wp - width) right, hp - height rows below.
        lb = torch.cat([lb[..., :1].expand(g, height, kh), lb, lb[..., -1:].expand(g, height, kh + wp - width)], 2)
        lb = torch.cat([lb, lb[:, -1:].expand(g, hp - height, -1)], dim=1)
        vb = _boundary(lb, 1)
        inner = lb[..., kh : kh + wp]
        whole = (hp, wp) == (height, width)
        outp = out[first : first + g] if whole else torch.empty((g, hp, wp), dtype=out_dtype, device=lab.device)
        outp[:, :height, :width] = lab[first : first + g]  # from the contiguous input: a fast convert
        # Row segments within k px of an edge, found on 8x8 blocks.
        blocks = _blocks_any(vb[..., kh : kh + wp] | _boundary(inner, 2))
        if bool(blocks.any()):
            if rb:
                blocks = F.max_pool2d(blocks[:, None].to(torch.float16 if lab.is_cuda else torch.float32),
                                      2 * rb + 1, stride=1, padding=rb)[:, 0] > 0
            near = blocks.view(g, hp // _BLOCK, n_seg, seg // _BLOCK).any(-1)
            bs, ys, ss = near.repeat_interleave(_BLOCK, dim=1)[:, :height].nonzero(as_tuple=True)
            col = _run_dist(vb, 1, k + 1, dtype)
            windows = col.mul_(col).unfold(2, win, seg)  # [g, hp, n_seg, win], a view
            lab_windows = lb.unfold(2, win, seg)
            out_v = outp.view(g, hp, n_seg, seg)
            chunk = max(1, _CHUNK_ELEMENTS // win)
            for start in range(0, ys.numel(), chunk):
                idx = bs[start : start + chunk], ys[start : start + chunk], ss[start : start + chunk]
                cols = windows[idx]  # [n, win] contiguous copies
                lw = lab_windows[idx]
                # Row distances only where needed: the kh halo holds every offset that matters.
                row = _run_dist(_boundary(lw, 1), 1, k + 1, dtype)[:, kh : kh + seg]
                acc = torch.minimum(row.mul_(row), cols[:, kh : kh + seg])
                tmp = torch.empty_like(acc)
                for off in range(1, kh + 1):
                    torch.minimum(cols[:, kh + off : kh + off + seg], cols[:, kh - off : kh - off + seg], out=tmp)
                    tmp.add_(off * off)
                    torch.minimum(acc, tmp, out=acc)
                out_v[idx] = finish(acc, lw[:, kh : kh + seg]).to(out_dtype)
        if not whole:
            out[first : first + g] = outp[:, :height, :width]
    return out


# --------------------------------------------------------------------------- feather / grow


def _falloff(t: torch.Tensor, falloff: str) -> torch.Tensor:
    """Map ramp position t in [0,1] to a weight in [0,1] with f(0)=0 and f(1)=1."""
    if falloff == "linear":
        return t
    if falloff == "smoothstep":
        return t * t * (3.0 - 2.0 * t)
    if falloff == "gaussian":
        floor = math.exp(-_GAUSS_K)
        return ((torch.exp(-_GAUSS_K * (1.0 - t) ** 2) - floor) / (1.0 - floor)).clamp_(0.0, 1.0)
    raise ValueError(f"unknown falloff {falloff!r}; use one of {', '.join(FALLOFFS)}")


def feather_profile(
    signed_distance: torch.Tensor, radius: float, direction: Direction, falloff: Falloff
) -> torch.Tensor:
    """Feather weight from the signed distance to the edge (positive inside, in px).

    The edge lies half-way between an inside and an outside pixel, so a pixel at Euclidean
    distance d from the nearest pixel of the other side is at |s| = d - 0.5 from the edge.
    Ramp position t = s/r (inward), 1 + s/r (outward), 0.5 + s/r (centred), clamped to [0,1].
    """
    offset = {"inward": 0.0, "outward": 1.0, "centred": 0.5}.get(direction)
    if offset is None:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    t = (signed_distance / float(radius) + offset).clamp_(0.0, 1.0)
    return _falloff(t, falloff)


def feather(
    mask: torch.Tensor, radius: float, direction: Direction = "centred", falloff: Falloff = "smoothstep"
) -> torch.Tensor:
    """Soften the edge of the mask's shape (``mask >= 0.5``) over ``radius`` px.

    - inward: 0 at the edge rising to 1 at ``radius`` inside; outside stays 0 (never grows).
    - outward: 1 inside, falling to 0 at ``radius`` outside (never shrinks).
    - centred: the ramp spans radius/2 on each side of the edge.
    Distances are exact Euclidean (pixel centres). Radius 0 returns the input values unchanged;
    an empty mask stays 0 and an all-ones mask stays 1 (the image border is not an edge);
    a radius larger than the image is fine (the ramp is then cut by the frame).
    """
    if falloff not in FALLOFFS:
        raise ValueError(f"unknown falloff {falloff!r}; use one of {', '.join(FALLOFFS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {', '.join(DIRECTIONS)}")
    if radius < 0:
        raise ValueError(f"feather radius must be >= 0, got {radius}; use grow with a negative value to shrink")
    mask = as_mask(mask)
    if radius == 0:
        return mask.clone()
    lab = mask >= 0.5
    reach = (radius / 2 if direction == "centred" else radius) + 0.5  # beyond it the ramp is flat

    def finish(d2: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        signed = d2.to(torch.float32).sqrt_().sub_(0.5).mul_(inside.to(torch.float32).mul_(2).sub_(1))
        return feather_profile(signed, radius, direction, falloff)

    return _edge_sqdist_apply(lab, math.floor(reach), finish, mask.dtype)


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow (pixels > 0) or shrink (pixels < 0) the mask's shape by a round (disk) element.

    Exact binary dilation/erosion of ``mask >= 0.5`` by the digital disk x^2 + y^2 <= n^2; the
    result is binary (feather afterwards for a soft edge). 0 returns the input unchanged.
    The image border is not an edge, so shrinking an all-ones mask keeps it all ones.
    """
    mask = as_mask(mask)
    n = int(pixels)
    if n == 0:
        return mask.clone()
    lab = mask >= 0.5
    r2 = n * n

    def finish(d2: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        return inside | (d2 <= r2) if n > 0 else inside & (d2 > r2)

    return _edge_sqdist_apply(lab, abs(n), finish, mask.dtype)


# --------------------------------------------------------------------------- combine / cleanup


def combine(a: torch.Tensor, b: torch.Tensor, op: CombineOp) -> torch.Tensor:
    """Combine two soft masks: union=max, intersection=min, difference=clamp(a-b), xor=|a-b|.

    On binary masks these are the set operations; on soft masks they are the usual fuzzy ones
    (xor = max - min = |a-b|). ``b`` is resized to ``a``'s size (bilinear); a batch of 1
    broadcasts against the other batch.
    """
    a, b = as_mask(a, "mask_a"), as_mask(b, "mask_b")
    b = resize_mask(b, a.shape[1], a.shape[2])
    a, b = broadcast_batch(a, b, ("mask_a", "mask_b"))
    if op == "union":
        return torch.maximum(a, b)
    if op == "intersection":
        return torch.minimum(a, b)
    if op == "difference":
        return (a - b).clamp_(0.0, 1.0)
    if op == "xor":
        return (a - b).abs_()
    raise ValueError(f"unknown combine op {op!r}; use one of {', '.join(COMBINE_OPS)}")


def cleanup(
    mask: torch.Tensor, threshold: float = 0.5, fill_holes: bool = True, min_island_px: int = 0
) -> torch.Tensor:
    """Binary clean-up: threshold, fill holes, drop islands smaller than ``min_island_px``.

    Holes are 4-connected regions of 0 that do not touch the border; islands are 8-connected
    regions of 1 (counted after filling holes). Connected-component labelling is sequential by
    nature, so it runs in scipy on the CPU and the result is moved back to the mask's device.
    """
    from scipy import ndimage  # scipy ships with ComfyUI; imported here so the other ops don't need it

    mask = as_mask(mask)
    lab = (mask >= threshold).cpu().numpy()
    if fill_holes or min_island_px > 0:
        eight = ndimage.generate_binary_structure(2, 2)
        for i in range(lab.shape[0]):
            item = lab[i]
            if fill_holes:
                item = ndimage.binary_fill_holes(item)
            if min_island_px > 0:
                labels, count = ndimage.label(item, structure=eight)
                if count:
                    sizes = ndimage.sum_labels(item, labels, index=range(1, count + 1))
                    keep = torch.zeros(count + 1, dtype=torch.bool).numpy()
                    keep[1:] = sizes >= min_island_px
                    item = keep[labels]
            lab[i] = item
    return torch.from_numpy(lab).to(device=mask.device, dtype=mask.dtype)


# --------------------------------------------------------------------------- crop / uncrop


@dataclass(frozen=True)
class CropInfo:
    """Where a crop came from, so ``uncrop`` can put it back.

    ``box`` = (left, top, right, bottom) in original pixels (right/bottom exclusive);
    sizes are (height, width): the original image, the box, and the crop as output (after any resize).
    """

    box: tuple[int, int, int, int]
    original_size: tuple[int, int]
    crop_size: tuple[int, int]
    output_size: tuple[int, int]


def _expand_span(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to ``size`` around its centre, shifted to stay inside [0, limit)."""
    size = min(size, limit)
    extra = size - (hi - lo)
    lo -= extra // 2
    lo = max(0, min(lo, limit - size))
    return lo, lo + size


def mask_box(mask: torch.Tensor, padding: int = 0, multiple_of: int = 1) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of every nonzero pixel of the whole batch.

    Padded by ``padding`` px and clipped to the image; each side then widened to a multiple of
    ``multiple_of`` (centred, shifted to stay inside; capped at the image size). An empty mask
    gives the whole image.
    """
    mask = as_mask(mask)
    height, width = mask.shape[1:]
    any_px = (mask > 0).any(dim=0)
    rows, cols = any_px.any(dim=1).nonzero(), any_px.any(dim=0).nonzero()
    if rows.numel() == 0:
        return 0, 0, width, height
    top, bottom = int(rows[0]) - padding, int(rows[-1]) + 1 + padding
    left, right = int(cols[0]) - padding, int(cols[-1]) + 1 + padding
    top, left, bottom, right = max(0, top), max(0, left), min(height, bottom), min(width, right)
    if multiple_of > 1:
        up = lambda n: -(-n // multiple_of) * multiple_of  # noqa: E731
        top, bottom = _expand_span(top, bottom, up(bottom - top), height)
        left, right = _expand_span(left, right, up(right - left), width)
    return left, top, right, bottom


def crop_to_mask(
    image: torch.Tensor,
    mask: torch.Tensor,
    padding: int = 32,
    round_to_8: bool = True,
    target_size: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, CropInfo]:
    """Crop image and mask to the mask's bounding box (+ ``padding``), one box for the batch.

    The box is the union of all the batch's masks, so every item is cut at the same place.
    The mask is first resized to the image (bilinear). ``round_to_8`` widens each side to a
    multiple of 8 (what VAEs need). ``target_size`` > 0 resizes the crop so its longest side is
    that many px (bilinear, kept a multiple of 8 when ``round_to_8``). An empty mask crops to the
    whole image.
    """
    image = as_image(image)
    image, mask = fit_mask_to_image(mask, image)
    height, width = image.shape[1:3]
    left, top, right, bottom = mask_box(mask, max(0, int(padding)), 8 if round_to_8 else 1)
    crop_img = image[:, top:bottom, left:right].clone()
    crop_mask = mask[:, top:bottom, left:right].clone()
    box, size = (left, top, right, bottom), (bottom - top, right - left)
    if target_size and target_size > 0:
        scale = target_size / max(size)
        h, w = (max(1, round(n * scale)) for n in size)
        if round_to_8:
            h, w = (max(8, round(n / 8) * 8) for n in (h, w))
        crop_img, crop_mask = resize_image(crop_img, h, w), resize_mask(crop_mask, h, w)
    return crop_img, crop_mask, CropInfo(box, (height, width), size, tuple(crop_img.shape[1:3]))


def uncrop(
    original: torch.Tensor, crop: torch.Tensor, info: CropInfo, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Paste a processed crop back into the original image at ``info.box``.

    The crop (and ``mask``, in crop coordinates) is resized to the box size if it differs
    (bilinear), then blended: out = lerp(original, crop, mask). No mask = paste everything.
    Outside the box the original is untouched; an unprocessed crop pasted back with a full
    mask gives the original exactly. Batches broadcast (1 against N).
    """
    original, crop = as_image(original, "original"), as_image(crop, "crop")
    height, width = info.original_size
    if original.shape[1:3] != (height, width):
        raise ValueError(
            f"original image has size {tuple(original.shape[1:3])} but the crop was taken from a "
            f"{height}x{width} image; connect the same image that went into Crop To Mask"
        )
    if crop.shape[-1] != original.shape[-1]:
        raise ValueError(
            f"crop has {crop.shape[-1]} channels and the original {original.shape[-1]}; "
            "convert both to the same channel count (RGB) first"
        )
    left, top, right, bottom = info.box
    bh, bw = bottom - top, right - left
    crop = resize_image(crop, bh, bw).to(original.dtype)
    original, crop = broadcast_batch(original, crop, ("original", "crop"))
    if mask is None:
        pasted = crop
    else:
        m = resize_mask(as_mask(mask), bh, bw).to(original.dtype)
        original, m = broadcast_batch(original, m, ("original", "mask"))
        crop, m = broadcast_batch(crop, m, ("crop", "mask"))
        pasted = torch.lerp(original[:, top:bottom, left:right], crop, m.unsqueeze(-1))
    out = original.clone(memory_format=torch.contiguous_format)
    out[:, top:bottom, left:right] = pasted
    return out


# --------------------------------------------------------------------------- latent


def mask_to_latent(mask: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """Average the mask over each latent cell (area interpolation), giving ``[B,latent_h,latent_w]``.

    Area averaging keeps the fraction of each cell that is covered, so a half-covered cell gets
    0.5, instead of bilinear sampling that would skip thin parts of the mask.
    """
    mask = as_mask(mask)
    if latent_h <= 0 or latent_w <= 0:
        raise ValueError(f"latent size must be positive, got {latent_h}x{latent_w}")
    if mask.shape[1:] == (latent_h, latent_w):
        return mask.clone()
    return F.interpolate(mask.unsqueeze(1), size=(latent_h, latent_w), mode="area").squeeze(1)
