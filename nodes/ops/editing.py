"""Selective editing with edit models (Qwen-Image-Edit, Flux Kontext, Flux.2): crop, undo the drift, stitch.

Edit models regenerate the whole picture they are given, and their output is shifted and zoomed a
little against the input. So the part to edit is cut out with context (``crop_for_edit``), at a
size the model likes; after the edit, the model's shift / zoom / rotation is measured on the area
*outside* the mask, where the picture should not have changed (``register``), the edit is warped
back, changes the model made outside the mask are mapped (``change_map``), and only the (grown,
feathered) mask is written back into the source picture (``stitch_edit``). Every pixel the stitch
weight leaves at 0 is the source's, bit for bit, at full resolution.

Pure torch (no ComfyUI import). Coordinates of a crop are "crop pixels" centred on the crop: the
pixel with index ``u`` along a side of ``n`` pixels sits at ``u + 0.5 - n / 2``, at every
resolution of a pyramid, so a transform found at one level holds at all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .masks import feather, grow
from .metrics import LUMA, gaussian_kernel
from .shapes import as_image, as_mask, as_rgb, resize_image, resize_mask

# --------------------------------------------------------------------------- sizes per model family

# Flux.1 Kontext's training resolutions (width, height), as core's FluxKontextImageScale lists them.
KONTEXT_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)


@dataclass(frozen=True)
class SizeRule:
    """How a model family wants its input sized: a list of resolutions, or a pixel budget and a multiple."""

    multiple: int
    megapixels: float = 1.0
    resolutions: tuple[tuple[int, int], ...] = ()


FAMILIES: dict[str, SizeRule] = {
    "qwen_image_edit": SizeRule(multiple=32, megapixels=1.0),  # best at <= 1024^2, sides multiples of 32
    "flux_kontext": SizeRule(multiple=16, resolutions=KONTEXT_RESOLUTIONS),
    "flux2": SizeRule(multiple=16, megapixels=1.0),
    "any": SizeRule(multiple=16, megapixels=1.0),  # the node fills in the user's multiple and budget
}
MEGAPIXEL = 1024 * 1024


def size_rule(family: str, multiple: int = 16, megapixels: float = 0.0) -> SizeRule:
    """The family's rule; ``megapixels`` > 0 replaces a budget family's budget, ``multiple`` is used by "any"."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    rule = FAMILIES[family]
    if family == "any":
        if multiple < 1:
            raise ValueError(f"multiple must be at least 1, got {multiple}")
        rule = SizeRule(multiple=int(multiple), megapixels=rule.megapixels)
    if megapixels > 0 and not rule.resolutions:
        rule = SizeRule(multiple=rule.multiple, megapixels=float(megapixels))
    return rule


def target_size(height: int, width: int, rule: SizeRule) -> tuple[int, int]:
    """(height, width) the model gets for a window of ``height`` x ``width``: the listed resolution of the
    nearest aspect ratio, or the window scaled to the pixel budget with sides rounded down to the multiple."""
    if rule.resolutions:
        aspect = math.log(width / height)
        w, h = min(rule.resolutions, key=lambda r: abs(math.log(r[0] / r[1]) - aspect))
        return h, w
    scale = math.sqrt(rule.megapixels * MEGAPIXEL / (height * width))
    m = rule.multiple
    return max(m, int(height * scale) // m * m), max(m, int(width * scale) // m * m)


# --------------------------------------------------------------------------- windows and crops


@dataclass(frozen=True)
class EditRegion:
    """One region to edit: the window cut from picture ``image_index`` (left, top, right, bottom in source
    pixels; it may reach past the picture, where the crop is padded) and the region's mask [H, W]."""

    image_index: int
    window: tuple[int, int, int, int]
    mask: torch.Tensor


@dataclass(frozen=True)
class EditStitch:
    """What Stitch Edit Back needs: the source pictures, the crops sent to the model and where they came from."""

    source: torch.Tensor          # [B, H, W, C] as given to Crop For Edit
    crops: torch.Tensor           # [N, h, w, C] the crops, all one size
    crop_masks: torch.Tensor      # [N, h, w]
    regions: tuple[EditRegion, ...]
    family: str = ""


def _place(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """A span of ``size`` centred on [lo, hi): shifted to stay inside [0, limit) when it fits; when it is
    wider than the picture, it is kept centred on the mask but never pads more than it must on a side."""
    start = (lo + hi - size) // 2
    low, high = (0, limit - size) if size <= limit else (limit - size, 0)
    start = min(max(start, low), high)
    return start, start + size


def _mask_boxes(mask: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """(left, top, right, bottom) of each mask's pixels >= 0.5 (None for an empty mask)."""
    boxes = []
    for item in mask >= 0.5:
        rows, cols = item.any(dim=1).nonzero(), item.any(dim=0).nonzero()
        boxes.append(None if rows.numel() == 0 else (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    return boxes


def plan_windows(
    boxes: list[tuple[int, int, int, int]], height: int, width: int, margin: int, rule: SizeRule
) -> tuple[list[tuple[int, int, int, int]], tuple[int, int]]:
    """Windows around each box (+ ``margin``) and the one output size they all scale to.

    The output size comes from the largest window; every window is then grown (never squashed) to that
    size's aspect ratio, so the scale is the same along both sides. A window is shifted to stay inside
    the picture, and only where it is larger than the picture does it reach past the edge (padded).
    """
    spans = []
    for left, top, right, bottom in boxes:
        l, t = max(0, left - margin), max(0, top - margin)
        r, b = min(width, right + margin), min(height, bottom + margin)
        spans.append((l, t, r, b))
    largest = max(spans, key=lambda s: (s[2] - s[0]) * (s[3] - s[1]))
    out_h, out_w = target_size(largest[3] - largest[1], largest[2] - largest[0], rule)
    aspect = out_w / out_h
    windows = []
    for (l, t, r, b), (left, top, right, bottom) in zip(spans, boxes):
        win_h, win_w = b - t, r - l
        if win_w / win_h < aspect:
            win_w = round(win_h * aspect)
            if win_w > width and not rule.resolutions:  # a budget family may take the picture's own width
                win_w = width
        else:
            win_h = round(win_w / aspect)
            if win_h > height and not rule.resolutions:
                win_h = height
        x0, x1 = _place(left, right, win_w, width)
        y0, y1 = _place(top, bottom, win_h, height)
        windows.append((x0, y0, x1, y1))
    if not rule.resolutions and len(windows) == 1:  # one region: its size follows its own clipped window
        x0, y0, x1, y1 = windows[0]
        out_h, out_w = target_size(y1 - y0, x1 - x0, rule)
    return windows, (out_h, out_w)


def cut_window(image: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
    """``image[..., window]`` for a [H, W, C] or [H, W] tensor; beyond the picture the edge pixel repeats
    (replicate padding: the model sees the border continue, never a mirrored copy of the picture)."""
    x0, y0, x1, y1 = window
    height, width = image.shape[0], image.shape[1]
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return image[y0:y1, x0:x1]
    rows = torch.arange(y0, y1, device=image.device).clamp(0, height - 1)
    cols = torch.arange(x0, x1, device=image.device).clamp(0, width - 1)
    return image.index_select(0, rows).index_select(1, cols)


def crop_for_edit(
    image: torch.Tensor, mask: torch.Tensor, family: str, margin: int = 96, multiple: int = 16,
    megapixels: float = 0.0,
) -> EditStitch:
    """Cut one crop per mask (a batch of masks on one picture, or one mask per picture), all at the size
    the family prefers, and say where each came from. Padding (only where a window is larger than the
    picture) repeats the edge pixel; the crop's mask is 0 there."""
    image = as_image(image)
    mask = as_mask(mask).to(image.device)
    batch, height, width = image.shape[:3]
    mask = resize_mask(mask, height, width)
    if mask.shape[0] != batch and 1 not in (mask.shape[0], batch):
        raise ValueError(
            f"image batch {batch} and mask batch {mask.shape[0]} do not match; give one picture with several "
            "masks (one region each), or one mask per picture"
        )
    count = max(batch, mask.shape[0])
    masks = mask.expand(count, height, width) if mask.shape[0] == 1 else mask
    boxes = _mask_boxes(masks)
    empty = [i for i, box in enumerate(boxes) if box is None]
    if empty:
        raise ValueError(
            f"mask {empty[0]} of the batch is empty (no pixel >= 0.5): nothing to edit there; check the mask "
            "(e.g. Find Objects found nothing) or drop that item"
        )
    windows, (out_h, out_w) = plan_windows(boxes, height, width, max(0, int(margin)), size_rule(family, multiple, megapixels))
    crops, crop_masks, regions = [], [], []
    for index, window in enumerate(windows):
        image_index = index if batch > 1 else 0
        crop = cut_window(image[image_index], window).unsqueeze(0)
        x0, y0, x1, y1 = window
        region_mask = masks[index]
        inside = torch.zeros(y1 - y0, x1 - x0, dtype=region_mask.dtype, device=region_mask.device)
        cy0, cx0 = max(0, -y0), max(0, -x0)
        inside[cy0:cy0 + min(y1, height) - max(y0, 0), cx0:cx0 + min(x1, width) - max(x0, 0)] = \
            region_mask[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
        crops.append(resize_image(crop, out_h, out_w))
        crop_masks.append(resize_mask(inside.unsqueeze(0), out_h, out_w))
        regions.append(EditRegion(image_index, window, region_mask.clone()))
    return EditStitch(image, torch.cat(crops), torch.cat(crop_masks), tuple(regions), family)


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class Registration:
    """The edit's drift, as a 2x3 matrix on centred crop pixels: the edit at ``matrix @ (q, 1)`` shows what
    the source crop shows at ``q``. ``applied`` is False (and ``matrix`` the identity) when no reliable
    match was found; ``reason`` then says why."""

    matrix: torch.Tensor
    confidence: float
    applied: bool
    reason: str

    @property
    def zoom(self) -> float:
        return float(self.matrix[:, :2].det().abs().sqrt())

    @property
    def rotation_degrees(self) -> float:
        return math.degrees(math.atan2(float(self.matrix[1, 0]), float(self.matrix[0, 0])))

    @property
    def shift(self) -> tuple[float, float]:
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    def describe(self) -> str:
        dx, dy = self.shift
        drift = f"shift ({dx:+.2f}, {dy:+.2f}) px, zoom {self.zoom:.4f}, rotation {self.rotation_degrees:+.3f} deg"
        if self.applied:
            return f"warped back: {drift}; confidence {self.confidence:.2f}"
        return f"not warped ({self.reason}); confidence {self.confidence:.2f}"


IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
FINEST_LEVEL = 320     # longest side of the finest registration level (px)
COARSEST_LEVEL = 96    # longest side of the level the shift / zoom search runs on
BAND_SIGMA = 2.0       # local mean removed over this Gaussian sigma (level px): tone changes do not count


def _gray(image: torch.Tensor) -> torch.Tensor:
    """[h, w, C] -> [h, w] luma (float32)."""
    rgb = as_rgb(image.unsqueeze(0)).float().permute(0, 3, 1, 2)  # a view; a 1x1 convolution reads it in one pass
    return F.conv2d(rgb, torch.tensor(LUMA, device=rgb.device).view(1, 3, 1, 1))[0, 0]


def _area(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if plane.shape == (height, width):
        return plane
    return F.interpolate(plane[None, None], size=(height, width), mode="area")[0, 0]


def _gaussian_blur(plane: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    kernel = gaussian_kernel(radius, sigma, plane.device, plane.dtype)
    out = F.pad(plane[None, None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))[0, 0]


def _band(plane: torch.Tensor) -> torch.Tensor:
    """Detail only: the local mean removed, so a global or slowly varying tone change does not count."""
    return plane - _gaussian_blur(plane, BAND_SIGMA)


def _level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Pyramid sizes from the finest (longest side <= FINEST_LEVEL) down to about COARSEST_LEVEL."""
    scale = min(1.0, FINEST_LEVEL / max(height, width))
    sizes = []
    while True:
        sizes.append((max(8, round(height * scale)), max(8, round(width * scale))))
        if max(height, width) * scale <= COARSEST_LEVEL * 1.5:
            return sizes
        scale /= 2


def _centred_grid(height: int, width: int, crop_h: int, crop_w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred crop-pixel coordinates (x, y) of the pixel centres of a level of ``height`` x ``width``."""
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * (crop_w / width) - crop_w / 2
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * (crop_h / height) - crop_h / 2
    return xs.expand(height, width), ys.unsqueeze(1).expand(height, width)


def _sample(plane: torch.Tensor, x: torch.Tensor, y: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """Bilinear samples of a [h, w] or [h, w, C] picture at centred crop-pixel positions (x, y)."""
    grid = torch.stack((2 * x / crop_w, 2 * y / crop_h), dim=-1).unsqueeze(0).to(plane.dtype)
    picture = plane[None, None] if plane.ndim == 2 else plane.permute(2, 0, 1).unsqueeze(0)
    out = F.grid_sample(picture, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return out[0] if plane.ndim == 2 else out.permute(1, 2, 0)


def _warp_coords(matrix: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = matrix.to(torch.float32)
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def _as3(matrix: torch.Tensor) -> torch.Tensor:
    return torch.cat((matrix, torch.tensor([[0.0, 0.0, 1.0]], dtype=matrix.dtype)))


def _phase_shift(moving: torch.Tensor, fixed: torch.Tensor, max_shift: float) -> tuple[float, float, float]:
    """Shift (dx, dy) in level px with ``moving(q) ~ fixed(q - d)``, and the peak's height (how sure)."""
    cross = torch.fft.rfft2(moving) * torch.fft.rfft2(fixed).conj()
    surface = torch.fft.irfft2(cross / cross.abs().clamp(min=1e-9), s=moving.shape)
    height, width = surface.shape
    surface = torch.fft.fftshift(surface)
    ys = torch.arange(height, device=surface.device) - height // 2
    xs = torch.arange(width, device=surface.device) - width // 2
    outside = (ys.abs().unsqueeze(1) > max_shift) | (xs.abs().unsqueeze(0) > max_shift)
    surface = surface.masked_fill(outside, -math.inf)
    peak = int(surface.argmax())
    py, px = divmod(peak, width)

    def refine(values: tuple[float, float, float]) -> float:  # parabola through the peak and its neighbours
        left, centre, right = values
        if not (math.isfinite(left) and math.isfinite(right)):
            return 0.0
        denominator = left - 2 * centre + right
        return 0.0 if denominator >= 0 else 0.5 * (left - right) / denominator

    at = lambda y, x: float(surface[y % height, x % width])
    dx = px - width // 2 + refine((at(py, px - 1), at(py, px), at(py, px + 1)))
    dy = py - height // 2 + refine((at(py - 1, px), at(py, px), at(py + 1, px)))
    return dx, dy, float(surface[py, px])


def _coarse_search(source: torch.Tensor, edited: torch.Tensor, weight: torch.Tensor, crop_h: int, crop_w: int,
                   max_shift: float, max_zoom: float) -> torch.Tensor:
    """Zoom by a grid search, shift by phase correlation at each zoom; the sharpest peak wins."""
    height, width = source.shape
    window = torch.hann_window(height, periodic=False).unsqueeze(1) * torch.hann_window(width, periodic=False)
    taper = window.to(source) * weight

    def prepared(plane: torch.Tensor) -> torch.Tensor:
        mean = (plane * taper).sum() / taper.sum().clamp(min=1e-9)
        return (plane - mean) * taper

    fixed = prepared(source)
    x, y = _centred_grid(height, width, crop_h, crop_w, source.device)
    per_px = crop_w / width
    steps = max(1, math.ceil(max_zoom / 0.02))
    best = (-math.inf, IDENTITY)
    for zoom in torch.linspace(1 - max_zoom, 1 + max_zoom, 2 * steps + 1).tolist() if max_zoom > 0 else [1.0]:
        moving = prepared(_sample(edited, zoom * x, zoom * y, crop_h, crop_w))
        dx, dy, peak = _phase_shift(moving, fixed, max_shift / per_px)
        if peak > best[0]:
            # moving(q) = edited(zoom q) ~ source(q - d): the edit at zoom (q + d) shows the source at q.
            matrix = torch.tensor([[zoom, 0.0, zoom * dx * per_px], [0.0, zoom, zoom * dy * (crop_h / height)]],
                                  dtype=torch.float64)
            best = (peak, matrix)
    return best[1]


def _refine(source: torch.Tensor, edited: torch.Tensor, weight: torch.Tensor, matrix: torch.Tensor, crop_h: int,
            crop_w: int, rotation: bool, iterations: int, tolerance: float) -> torch.Tensor:
    """Inverse-compositional Lucas-Kanade on a similarity (zoom, rotation, shift), robust to outliers
    (Geman-McClure weights), so changes the edit made outside the mask barely pull on the result; stops
    when a step moves the crop's corners less than ``tolerance`` level px."""
    height, width = source.shape
    x, y = _centred_grid(height, width, crop_h, crop_w, source.device)
    gy, gx = torch.gradient(source)
    gx, gy = gx * (width / crop_w), gy * (height / crop_h)  # per crop pixel
    columns = [gx * x + gy * y, gx, gy]
    if rotation:
        columns.insert(1, gy * x - gx * y)
    steepest = torch.stack(columns).reshape(len(columns), -1)  # [K, N]: rows stay contiguous for the products
    matrix = matrix.clone()
    scale = float(source.std()) + 1e-6
    for _ in range(iterations):
        wx, wy = _warp_coords(matrix, x, y)
        inside = (wx.abs() <= crop_w / 2 - 0.5) & (wy.abs() <= crop_h / 2 - 0.5)
        residual = _sample(edited, wx, wy, crop_h, crop_w) - source
        robust = 1.0 / (1.0 + (residual / (0.5 * scale)) ** 2) ** 2
        weighted = steepest * (weight * inside * robust).reshape(1, -1)
        hessian = weighted @ steepest.T
        gradient = weighted @ residual.reshape(-1, 1)
        try:
            delta = torch.linalg.solve(hessian.double() + 1e-9 * torch.eye(len(columns), dtype=torch.float64),
                                       gradient.double())[:, 0]
        except RuntimeError:  # singular: no texture where it could match
            break
        if rotation:
            a, b, tx, ty = delta.tolist()
        else:
            (a, tx, ty), b = delta.tolist(), 0.0
        step = torch.tensor([[1 + a, -b, tx], [b, 1 + a, ty]], dtype=torch.float64)
        matrix = (_as3(matrix) @ torch.linalg.inv(_as3(step)))[:2]
        corner = abs(a) * crop_w / 2 + abs(b) * crop_h / 2 + abs(tx) + abs(ty)
        if corner < tolerance * crop_w / width:
            break
    return matrix


def _ncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> float:
    total = weight.sum()
    if total <= 0:
        return 0.0
    a = a - (a * weight).sum() / total
    b = b - (b * weight).sum() / total
    denominator = ((a * a * weight).sum() * (b * b * weight).sum()).sqrt()
    return float((a * b * weight).sum() / denominator) if denominator > 0 else 0.0


def register(
    source_crop: torch.Tensor, edited: torch.Tensor, usable: torch.Tensor, max_shift: float = 0.25,
    max_zoom: float = 0.1, rotation: bool = True, min_confidence: float = 0.3,
) -> Registration:
    """Measure how the edit moved the picture, on the ``usable`` area ([h, w] of any size covering the
    crop, 1 = compare here).

    ``source_crop`` and ``edited`` are [h, w, C] of one size. A coarse zoom grid with phase correlation
    finds the start, robust Lucas-Kanade refines zoom, rotation and shift on a pyramid up to
    ``FINEST_LEVEL`` px. The confidence is the normalised correlation of the picture's detail (local mean
    removed) on the usable area after alignment: about 0 for an unrelated picture or noise, near 1 for the
    same picture. Below ``min_confidence``, or beyond the shift / zoom limits, nothing is warped.
    """
    crop_h, crop_w = source_crop.shape[:2]
    if edited.shape[:2] != (crop_h, crop_w):
        raise ValueError(f"edited crop {tuple(edited.shape)} and source crop {tuple(source_crop.shape)} differ in size")
    sizes = _level_sizes(crop_h, crop_w)
    gray_source, gray_edited = _gray(source_crop), _gray(edited)
    levels, planes = [], (gray_source, gray_edited)
    usable = usable.float()
    for height, width in sizes:  # each level from the one above it: one pass over the full crop
        planes = tuple(_area(plane, height, width) for plane in planes)
        usable = _area(usable, height, width)
        levels.append((_band(planes[0]), _band(planes[1]), (usable >= 0.999).float()))
    finest_weight = levels[0][2]
    if finest_weight.sum() < max(64.0, 0.03 * finest_weight.numel()):
        return Registration(IDENTITY.clone(), 0.0, False,
                            "the mask leaves almost nothing of the crop to compare; give Crop For Edit more margin")
    source_l, edited_l, weight_l = levels[-1]
    matrix = _coarse_search(source_l, edited_l, weight_l, crop_h, crop_w, max_shift * max(crop_h, crop_w), max_zoom)
    for level, (source_l, edited_l, weight_l) in reversed(list(enumerate(levels))):
        matrix = _refine(source_l, edited_l, weight_l, matrix, crop_h, crop_w, rotation, 12 if level else 4,
                         0.05 if level else 0.01)
    source_l, edited_l, weight_l = levels[0]
    wx, wy = _warp_coords(matrix, *_centred_grid(*source_l.shape, crop_h, crop_w, source_l.device))
    inside = (wx.abs() <= crop_w / 2) & (wy.abs() <= crop_h / 2)
    confidence = max(0.0, _ncc(_sample(edited_l, wx, wy, crop_h, crop_w), source_l, weight_l * inside))
    found = Registration(matrix, confidence, True, "")
    dx, dy = found.shift
    if confidence < min_confidence:
        reason = (f"no reliable match: the picture outside the mask correlates {confidence:.2f} < {min_confidence:.2f} "
                  "with the source (the edit replaced it, or it is noise)")
    elif abs(found.zoom - 1) > max_zoom * 1.02 + 1e-3 or max(abs(dx), abs(dy)) > max_shift * max(crop_h, crop_w) * 1.02:
        reason = "the best match lies beyond the shift / zoom limits"
    else:
        return found
    return Registration(IDENTITY.clone(), confidence, False, reason)


# --------------------------------------------------------------------------- change map, stitch, colour


@dataclass
class StitchResult:
    image: torch.Tensor                  # [B, H, W, C] the source with every region stitched in
    weight: torch.Tensor                 # [B, H, W] the stitch weight (0 = source kept bit for bit)
    changes: torch.Tensor                # [B, H, W] changes the edit made outside the masks (1 = changed)
    registrations: list[Registration] = field(default_factory=list)
    change_scores: list[float] = field(default_factory=list)   # share of each window's outside area changed
    grown_px: list[int] = field(default_factory=list)          # pixels added to each mask from its changes


def window_in_image(window: tuple[int, int, int, int], height: int, width: int) -> tuple[slice, slice, slice, slice]:
    """(rows, cols) of the picture the window covers, and the same area's (rows, cols) in the window."""
    x0, y0, x1, y1 = window
    top, left, bottom, right = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    return slice(top, bottom), slice(left, right), slice(top - y0, bottom - y0), slice(left - x0, right - x0)


def _window_coords(window: tuple[int, int, int, int], rows: slice, cols: slice, crop_h: int, crop_w: int):
    """Centred crop-pixel coordinates of the picture pixels rows x cols of a window."""
    x0, y0, x1, y1 = window
    xs = (torch.arange(cols.start, cols.stop, dtype=torch.float32) - x0 + 0.5) * (crop_w / (x1 - x0)) - crop_w / 2
    ys = (torch.arange(rows.start, rows.stop, dtype=torch.float32) - y0 + 0.5) * (crop_h / (y1 - y0)) - crop_h / 2
    return xs.expand(len(ys), len(xs)), ys.unsqueeze(1).expand(len(ys), len(xs))


def usable_area(crop_mask: torch.Tensor, window: tuple[int, int, int, int], height: int, width: int,
                size: tuple[int, int]) -> torch.Tensor:
    """[size] 1 where the crop may be compared with its edit: inside the picture, and clear of the mask by
    2 % of the crop's longest side (the edit spills a little past its mask)."""
    level_h, level_w = size
    covered = _area(crop_mask.float(), level_h, level_w) > 0
    excluded = grow(covered.float().unsqueeze(0), max(1, round(0.02 * max(level_h, level_w))))[0]
    x0, y0, x1, y1 = window
    ys = (torch.arange(level_h, device=crop_mask.device) + 0.5) * ((y1 - y0) / level_h) + y0
    xs = (torch.arange(level_w, device=crop_mask.device) + 0.5) * ((x1 - x0) / level_w) + x0
    inside = ((ys >= 0) & (ys < height)).float().unsqueeze(1) * ((xs >= 0) & (xs < width)).float()
    return inside * (1 - excluded)


def change_map(source_crop: torch.Tensor, edited: torch.Tensor, matrix: torch.Tensor, usable: torch.Tensor,
               threshold: float) -> torch.Tensor:
    """[usable's size] 1 where the edit, warped by ``matrix``, differs from the source crop by more than
    ``threshold`` (mean over the channels, after a light blur so noise and resampling do not count),
    within ``usable``."""
    crop_h, crop_w = source_crop.shape[:2]
    x, y = _centred_grid(*usable.shape, crop_h, crop_w, source_crop.device)
    source = _sample(source_crop.float(), x, y, crop_h, crop_w)
    aligned = _sample(edited.float(), *_warp_coords(matrix, x, y), crop_h, crop_w)
    difference = _gaussian_blur((aligned - source).abs().mean(dim=-1), 1.0)
    return ((difference > threshold) & (usable > 0.5)).float()


def _match_colours(edit: torch.Tensor, source: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """The edit's colours moved so its ring (bool [h, w]) has the source's mean and spread there, per channel."""
    if int(ring.sum()) < 16:
        return edit
    picked_edit, picked_source = edit[ring], source[ring]
    gain = picked_source.std(dim=0) / picked_edit.std(dim=0).clamp(min=1e-4)
    return ((edit - picked_edit.mean(dim=0)) * gain + picked_source.mean(dim=0)).clamp(0.0, 1.0)


def _sample_back(edit: torch.Tensor, x: torch.Tensor, y: torch.Tensor, shrink: float) -> torch.Tensor:
    """The edit at centred crop-pixel positions (x, y); where the way back to the picture shrinks it
    (``shrink`` < 1), only the part those positions need is first resized with antialiasing."""
    crop_h, crop_w = edit.shape[:2]
    pad = 2.0 / min(shrink, 1.0)
    u0 = max(0, math.floor(float(x.min()) + crop_w / 2 - pad))
    u1 = min(crop_w, math.ceil(float(x.max()) + crop_w / 2 + pad))
    v0 = max(0, math.floor(float(y.min()) + crop_h / 2 - pad))
    v1 = min(crop_h, math.ceil(float(y.max()) + crop_h / 2 + pad))
    if u1 <= u0 or v1 <= v0:  # every position lies past the edit's edge: the border pixel repeats
        u0, u1, v0, v1 = 0, crop_w, 0, crop_h
    part = edit[v0:v1, u0:u1]
    if shrink < 1:
        part = resize_image(part.unsqueeze(0), max(1, round((v1 - v0) * shrink)), max(1, round((u1 - u0) * shrink)))[0]
    # positions relative to the part, in the part's own centred crop pixels
    return _sample(part, x + crop_w / 2 - (u0 + u1) / 2, y + crop_h / 2 - (v0 + v1) / 2, v1 - v0, u1 - u0)


def stitch_edit(
    stitch: EditStitch, edited: torch.Tensor, register_drift: bool = True, feather_px: int = 16,
    grow_limit_px: int = 0, change_threshold: float = 0.12, colour_match: bool = False, ring_px: int = 16,
    max_shift: float = 0.25, max_zoom: float = 0.1, rotation: bool = True, min_confidence: float = 0.3,
) -> StitchResult:
    """Put each edited crop back into its picture.

    Per region: the edit is resized to the crop's size, registered against the source crop outside the
    mask (``register``) and, when the match is reliable, warped back; changes outside the mask are mapped;
    the mask (>= 0.5) grows by the changes that lie within ``grow_limit_px`` of it; the stitch weight is
    that grown mask feathered outward by ``feather_px``. Pixels where the weight is 0 are the source's bit
    for bit. ``colour_match`` matches the edit's mean / spread to the source's in a ``ring_px`` ring just
    outside the weight.
    """
    edited = as_rgb(as_image(edited, "edited image"), "edited image")
    count, (crop_h, crop_w) = len(stitch.regions), stitch.crops.shape[1:3]
    if edited.shape[0] not in (1, count):
        raise ValueError(f"edited image has batch {edited.shape[0]} but Crop For Edit made {count} crops; "
                         "connect the decoded edit of all crops (one batch, in their order)")
    source = stitch.source
    out = source.clone()
    height, width = source.shape[1:3]
    weights = torch.zeros(source.shape[:3], dtype=source.dtype, device=source.device)
    changes = torch.zeros_like(weights)
    result = StitchResult(out, weights, changes)
    level = _level_sizes(crop_h, crop_w)[0]
    change_level = (max(8, level[0] // 2), max(8, level[1] // 2))  # changes are mapped at half that: they get feathered
    for index, region in enumerate(stitch.regions):
        edit = resize_image(edited[index if edited.shape[0] > 1 else 0].unsqueeze(0), crop_h, crop_w)[0]
        edit = edit.to(device=source.device, dtype=torch.float32)
        crop = stitch.crops[index].float()
        usable = usable_area(stitch.crop_masks[index], region.window, height, width, level)
        if register_drift:
            found = register(crop, edit, usable, max_shift, max_zoom, rotation, min_confidence)
        else:
            found = Registration(IDENTITY.clone(), 0.0, False, "registration switched off")
        result.registrations.append(found)
        compared = (_area(usable, *change_level) >= 0.999).float()
        crop_changes = change_map(crop, edit, found.matrix, compared, change_threshold)
        outside = float(compared.sum())
        result.change_scores.append(float(crop_changes.sum()) / outside if outside else 0.0)

        rows, cols, win_rows, win_cols = window_in_image(region.window, height, width)
        x0, y0, x1, y1 = region.window
        region_mask = (region.mask[rows, cols] >= 0.5).float()
        window_changes = resize_mask(crop_changes.unsqueeze(0), y1 - y0, x1 - x0)[0, win_rows, win_cols] >= 0.5
        grown = region_mask
        if grow_limit_px > 0:
            reach = grow(region_mask.unsqueeze(0), grow_limit_px)[0] >= 0.5
            grown = torch.maximum(region_mask, (window_changes & reach).float())
        result.grown_px.append(int((grown - region_mask).sum()))
        weight = feather(grown.unsqueeze(0), feather_px, "outward", "smoothstep")[0] if feather_px > 0 else grown
        picture_changes = changes[region.image_index, rows, cols]
        picture_changes.copy_(torch.maximum(picture_changes, window_changes.float() * (1 - region_mask)))
        picture_weight = weights[region.image_index, rows, cols]
        picture_weight.copy_(torch.maximum(picture_weight, weight.to(weights.dtype)))
        ring = None
        if colour_match:  # a ring just outside the weight, where the source is kept and the edit compared
            ring = (feather((weight > 0).float().unsqueeze(0), ring_px, "outward", "linear")[0] > 0) & (weight <= 0)
        support = ((weight > 0) | ring if ring is not None else weight > 0).nonzero()
        if support.numel() == 0:
            continue
        (r0, c0), (r1, c1) = support.min(dim=0).values.tolist(), (support.max(dim=0).values + 1).tolist()
        box_rows, box_cols = slice(rows.start + r0, rows.start + r1), slice(cols.start + c0, cols.start + c1)
        x, y = _window_coords(region.window, box_rows, box_cols, crop_h, crop_w)
        shrink = min((y1 - y0) / crop_h, (x1 - x0) / crop_w)
        pasted = _sample_back(edit, *_warp_coords(found.matrix, x, y), shrink)
        original = out[region.image_index, box_rows, box_cols]
        if ring is not None:
            pasted = _match_colours(pasted, original.float(), ring[r0:r1, c0:c1])
        box_weight = weight[r0:r1, c0:c1].to(out.dtype).unsqueeze(-1)
        blended = torch.lerp(original, pasted.to(out.dtype), box_weight)
        out[region.image_index, box_rows, box_cols] = torch.where(box_weight > 0, blended, original)
    return result
