"""Control images limited to a mask, OpenPose COCO-18 drawing, pose keypoint dicts and pose masks.

Pure torch/numpy/OpenCV; no ComfyUI imports. Everything works on batches and returns new tensors.

Masked control images, two modes:
- ``mask_then_annotate``: the subject is put on a flat neutral fill (lerp by the mask) so the
  annotator sees only it; the result is then multiplied by the (feathered) mask.
- ``annotate_then_mask``: the whole image is annotated; the result is multiplied by the mask.
Either way the control image comes back at the input's exact height and width (annotators that
need sizes divisible by 64 run at such a size and are resized back, bilinear) and is 0 where the
mask is 0.

Poses are ``[P, 18, 3]`` arrays of (x, y, confidence) in pixels, COCO-18 / OpenPose body order;
confidence 0 marks a missing keypoint.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .masks import feather, grow
from .optional import require
from .shapes import as_mask, as_rgb, fit_mask_to_image, resize_image, to_uint8

MODES: tuple[str, ...] = ("mask_then_annotate", "annotate_then_mask")
NEUTRAL_FILLS: dict[str, float] = {"grey": 0.5, "black": 0.0, "white": 1.0}

# --------------------------------------------------------------------------- image / mask plumbing


def fill_outside(image: torch.Tensor, mask: torch.Tensor, fill: str = "grey") -> torch.Tensor:
    """The subject on a flat neutral colour: ``lerp(fill, image, mask)`` (mask already at image size)."""
    if fill not in NEUTRAL_FILLS:
        raise ValueError(f"unknown fill {fill!r}; use one of {', '.join(NEUTRAL_FILLS)}")
    m = mask.to(image.dtype).unsqueeze(-1)
    return image * m + NEUTRAL_FILLS[fill] * (1.0 - m)


def detect_size(height: int, width: int, resolution: int, multiple: int = 64) -> tuple[int, int]:
    """Size an annotator runs at: the shorter side scaled to ``resolution``, both sides rounded
    to ``multiple`` (at least one multiple). ``resolution`` 0 keeps the input's scale."""
    scale = 1.0 if resolution <= 0 else resolution / min(height, width)
    h, w = (max(multiple, round(n * scale / multiple) * multiple) for n in (height, width))
    return h, w


def masked_control_image(
    image: torch.Tensor,
    mask: torch.Tensor,
    annotate: Callable[[torch.Tensor], torch.Tensor],
    mode: str = "mask_then_annotate",
    fill: str = "grey",
    feather_px: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Annotate ``image`` only where ``mask`` is set; returns ``(control IMAGE, control MASK)``.

    ``annotate`` maps an RGB ``[B,H,W,3]`` batch to an image batch of any size; its result is
    resized back to the input's exact size. The mask is resized to the image (bilinear) and a
    batch of 1 broadcasts either way. ``feather_px`` > 0 softens the mask inwards (nothing
    outside the mask's shape gets control). The returned mask is the one the control image was
    multiplied by, ready for a masked ControlNet.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    image = as_rgb(image)
    image, mask = fit_mask_to_image(mask, image)
    height, width = image.shape[1:3]
    soft = feather(mask, feather_px, "inward") if feather_px > 0 else mask
    source = fill_outside(image, mask, fill) if mode == "mask_then_annotate" else image
    control = as_rgb(annotate(source.contiguous()), "annotator output")
    if control.shape[0] != image.shape[0]:
        raise ValueError(f"annotator returned {control.shape[0]} images for a batch of {image.shape[0]}")
    control = resize_image(control.to(image.dtype), height, width)
    control = control * soft.to(control.dtype).unsqueeze(-1)
    return control, soft.contiguous()


def from_uint8(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[B,H,W,C]`` (or ``[B,H,W]``, repeated to RGB) -> float 0..1 tensor."""
    out = torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=torch.float32) / 255.0
    return out.unsqueeze(-1).expand(*out.shape, 3).contiguous() if out.ndim == 3 else out


def canny(image: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """OpenCV Canny on each image at its own size (white edges on black, RGB)."""
    cv2 = require("cv2", "The canny annotator")

    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds need 0 <= low <= high, got low={low} high={high}")
    frames = to_uint8(as_rgb(image))
    edges = np.stack([cv2.Canny(frame, int(low), int(high)) for frame in frames])
    return from_uint8(edges, image.device)


# --------------------------------------------------------------------------- ControlNet masks


def center_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) that ComfyUI's ``common_upscale(..., "center")`` keeps when fitting a
    ``height x width`` picture to the aspect of ``target_h x target_w`` (same rounding)."""
    old_aspect, new_aspect = width / height, target_w / target_h
    x = y = 0
    if old_aspect > new_aspect:
        x = round((width - width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((height - height * (old_aspect / new_aspect)) / 2)
    return y, x, height - 2 * y, width - 2 * x


def mask_for_residual(mask: torch.Tensor, latent_hw: tuple[int, int], size_hw: tuple[int, int]) -> torch.Tensor:
    """``[B,1,h,w]`` weights for a control residual of spatial size ``size_hw``.

    The mask (image space, like the control image) is centre-cropped to the latent's aspect the
    way ComfyUI crops the hint, then area-averaged to ``size_hw`` (each cell gets the fraction of
    it the mask covers, so a cell the mask does not touch gets exactly 0); upscaling, which a
    mask smaller than the residual needs, is bilinear.
    """
    mask = as_mask(mask)
    top, left, h, w = center_crop_box(mask.shape[1], mask.shape[2], *latent_hw)
    m = mask[:, top : top + h, left : left + w].unsqueeze(1)
    if (h, w) == tuple(size_hw):
        return m.clone()
    if h >= size_hw[0] and w >= size_hw[1]:
        return F.adaptive_avg_pool2d(m, size_hw)
    return F.interpolate(m, size=size_hw, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def token_grid(latent_shape: tuple[int, ...], patch: int) -> tuple[int, int, int]:
    """(frames, rows, columns) of the image tokens a DiT cuts a latent ``[B,C,h,w]`` or
    ``[B,C,T,h,w]`` into: ``patch x patch`` cells, padded at the bottom/right to whole patches."""
    height, width = latent_shape[-2:]
    frames = latent_shape[2] if len(latent_shape) == 5 else 1
    return frames, math.ceil(height / patch), math.ceil(width / patch)


def token_weights(mask: torch.Tensor, latent_shape: tuple[int, ...], patch: int, tokens: int) -> torch.Tensor:
    """``[B, tokens, 1]`` weights for a DiT's image tokens: each token gets the fraction of its patch
    the mask covers (0 where the mask does not touch it), rows then columns, frames outermost.

    ``tokens`` may exceed the grid (Z-Image pads its image tokens to a multiple, Qwen-Image edit
    appends reference-image tokens): those extra tokens are not the picture and get 0.
    """
    frames, rows, cols = token_grid(latent_shape, patch)
    grid = frames * rows * cols
    if tokens < grid:
        raise ValueError(f"{tokens} image tokens cannot hold the {frames}x{rows}x{cols} token grid of the latent "
                         f"{tuple(latent_shape)} at patch size {patch}")
    m = mask_for_residual(mask, tuple(latent_shape[-2:]), (rows, cols)).flatten(1).repeat(1, frames)
    return F.pad(m, (0, tokens - grid)).unsqueeze(-1)


def weights_per_row(weights: torch.Tensor, rows: int, conds: int, what: str) -> torch.Tensor:
    """``weights`` (batch 1, or one per latent) for a model batch of ``rows`` = ``conds`` copies of the
    latent batch (cond, uncond, ... stacked). ``what`` names the residual in the error."""
    per_cond = max(1, rows // max(1, conds))
    if weights.shape[0] == per_cond and rows != per_cond:
        return weights.repeat(rows // per_cond, *(1,) * (weights.ndim - 1))
    if weights.shape[0] not in (1, rows):
        raise ValueError(
            f"the mask has batch {weights.shape[0]} but the latent batch is {per_cond} ({what}); use a mask "
            "batch of 1 or one mask per latent"
        )
    return weights


def blend_by_weight(before: torch.Tensor, after: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``before + weights * (after - before)``, exact at both ends: ``after`` bit for bit where the
    weight is 1, ``before`` where it is 0 (``torch.lerp`` computes weights >= 0.5 from ``after``)."""
    return torch.lerp(before, after, weights.to(after.dtype))


# --------------------------------------------------------------------------- OpenPose COCO-18

COCO18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# Limbs (keypoint index pairs) in the order OpenPose draws them; limb i uses COLORS[i].
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# OpenPose's 18 body colours (RGB); keypoint k is drawn in COLORS[k].
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_ALPHA = 0.6  # limbs are drawn at 60 % of their colour on black, joints at full colour


def _stroke_widths(height: int, width: int) -> tuple[int, int]:
    """Limb half-width and joint radius: OpenPose's 4 px at 512, scaled with the image."""
    scale = max(height, width) / 512.0
    return max(1, round(4 * scale)), max(1, round(4 * scale))


def draw_pose(poses: np.ndarray | Sequence, height: int, width: int, min_confidence: float = 0.0) -> np.ndarray:
    """OpenPose body skeleton(s) on black: ``[H,W,3]`` uint8.

    Limbs are filled ellipses in 0.6 x their colour, joints filled circles in full colour, the
    way the OpenPose ControlNets were trained. A keypoint is drawn when its confidence is
    > ``min_confidence`` (and > 0).
    """
    cv2 = require("cv2", "Drawing pose skeletons")

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 18, 3)
    half_width, radius = _stroke_widths(height, width)
    for pose in poses:
        seen = (pose[:, 2] > min_confidence) & (pose[:, 2] > 0)
        for index, (a, b) in enumerate(LIMBS):
            if not (seen[a] and seen[b]):
                continue
            (xa, ya), (xb, yb) = pose[a, :2], pose[b, :2]
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            polygon = cv2.ellipse2Poly(
                (int(round((xa + xb) / 2)), int(round((ya + yb) / 2))), (int(length / 2), half_width), int(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(canvas, polygon, [int(c * LIMB_ALPHA) for c in COLORS[index]])
        for k in np.flatnonzero(seen):
            cv2.circle(canvas, (int(round(pose[k, 0])), int(round(pose[k, 1]))), radius, COLORS[k], thickness=-1)
    return canvas


def pose_keypoint_dict(poses: np.ndarray | Sequence, height: int, width: int) -> dict:
    """One image's poses in the POSE_KEYPOINT format pose editors read (OpenPose JSON, pixels):
    ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}], "canvas_height", "canvas_width"}``.
    Missing keypoints are (0, 0, 0)."""
    people = []
    for pose in np.asarray(poses, dtype=np.float64).reshape(-1, 18, 3):
        flat = [0.0] * 54
        for k, (x, y, c) in enumerate(pose):
            if c > 0:
                flat[3 * k : 3 * k + 3] = [float(x), float(y), float(c)]
        people.append({"pose_keypoints_2d": flat, "face_keypoints_2d": None,
                       "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None})
    return {"people": people, "canvas_height": int(height), "canvas_width": int(width)}


def _segment_distance(px: torch.Tensor, py: torch.Tensor, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """Distance from pixel centres to segment ab."""
    ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    if length2 == 0:
        return torch.hypot(px - ax, py - ay)
    t = (((px - ax) * dx + (py - ay) * dy) / length2).clamp_(0.0, 1.0)
    return torch.hypot(px - (ax + t * dx), py - (ay + t * dy))


def _inside_polygon(px: torch.Tensor, py: torch.Tensor, polygon: np.ndarray) -> torch.Tensor:
    """Even-odd point-in-polygon test for pixel centres."""
    inside = torch.zeros(torch.broadcast_shapes(px.shape, py.shape), dtype=torch.bool)
    n = len(polygon)
    for i in range(n):
        (x1, y1), (x2, y2) = polygon[i], polygon[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (py >= min(y1, y2)) & (py < max(y1, y2))
        x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_at)
    return inside


def pose_person_mask(
    pose: np.ndarray, height: int, width: int, margin: int = 8, min_confidence: float = 0.3, limb_ratio: float = 0.14
) -> torch.Tensor:
    """``[H,W]`` mask of one person from a COCO-18 pose: limbs as capsules, torso and head filled,
    grown by ``margin`` px.

    Sizes follow the person's scale s (neck to mid-hip, else 1.3 x shoulder width, else the
    keypoints' extent): limb radius ``limb_ratio * s``, head a disc of radius 0.35 s around the
    face keypoints (covering them all). Missing hips (cut off by the frame) are placed 1 s below
    the shoulders so the torso is still filled. A pose with no keypoint gives an empty mask.
    """
    pose = np.asarray(pose, dtype=np.float64).reshape(18, 3)
    seen = pose[:, 2] > min_confidence
    xy = pose[:, :2].copy()
    out = torch.zeros(height, width)
    if not seen.any():
        return out
    shoulders, hips = [2, 5], [8, 11]
    if not seen[1] and seen[2] and seen[5]:
        xy[1], seen[1] = (xy[2] + xy[5]) / 2, True
    if seen[1] and (seen[8] or seen[11]):
        mid_hip = xy[[k for k in hips if seen[k]]].mean(axis=0)
        scale = float(np.hypot(*(mid_hip - xy[1])))
    elif seen[2] and seen[5]:
        scale = 1.3 * float(np.hypot(*(xy[2] - xy[5])))
    else:
        pts = xy[seen]
        scale = max(float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1])), 8.0)
    scale = max(scale, 8.0)
    for hip, shoulder in zip(hips, shoulders):
        if not seen[hip] and seen[shoulder]:
            xy[hip], seen[hip] = xy[shoulder] + np.array([0.0, scale]), True
    py = torch.arange(height, dtype=torch.float32).add_(0.5).view(-1, 1)
    px = torch.arange(width, dtype=torch.float32).add_(0.5).view(1, -1)
    shape = torch.zeros(height, width, dtype=torch.bool)
    radius = max(2.0, limb_ratio * scale)
    for a, b in LIMBS:
        if seen[a] and seen[b] and not (a == 0 or b in (14, 15, 16, 17)):
            shape |= _segment_distance(px, py, xy[a], xy[b]) <= radius
    torso = [k for k in (2, 5, 11, 8) if seen[k]]
    if len(torso) >= 3:
        shape |= _inside_polygon(px, py, xy[torso])
    face = [k for k in (0, 14, 15, 16, 17) if seen[k]]
    if face:
        centre = xy[face].mean(axis=0)
        reach = max(0.35 * scale, float(np.max(np.hypot(*(xy[face] - centre).T))) + radius)
        shape |= torch.hypot(px - float(centre[0]), py - float(centre[1])) <= reach
        if seen[1]:
            shape |= _segment_distance(px, py, xy[1], centre) <= radius
    out = shape.float().unsqueeze(0)
    return grow(out, int(margin))[0] if margin > 0 else out[0]
