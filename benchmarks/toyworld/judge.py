"""A judge without a neural network: finds the world's objects in a decoded picture.

- colour: every pixel whose chroma (max - min of RGB) reaches ``CHROMA_MIN`` is an object pixel,
  of the named colour whose hue is nearest (the six hues are 60 degrees apart, so +-30 degrees each);
- objects: 8-connected components of one colour, at least ``MIN_AREA`` of the picture;
- shape: which corners of the object's bounding box are filled (square: 4; triangle, apex up: the two
  bottom ones; circle: none), else the fill ratio of the box (square ~1, circle ~0.79, triangle ~0.5);
- place: the component's own mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import torch

from . import world

CHROMA_MIN = 0.45
MIN_AREA = 1 / 64  # of the picture: 4 latent cells at 16 x 16
_HUES = {name: _h for name, _h in zip(world.COLOURS, (0.0, 60.0, 120.0, 180.0, 240.0, 300.0))}
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class FoundObject:
    colour: str
    shape: str
    mask: np.ndarray  # [H, W] bool
    area: int
    fill: float  # area / bounding box area


def hue_degrees(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB in 0..1 -> [H, W] hue in degrees (0 = red, 120 = green, 240 = blue)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) + 360) % 360


def colour_classes(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H, W] int: index into ``world.COLOURS`` of each chromatic pixel, -1 for background."""
    image = np.asarray(image, dtype=np.float32)
    chroma = image.max(-1) - image.min(-1)
    classes = np.rint(hue_degrees(image) / 60).astype(np.int64) % 6  # the hues are 0, 60, ..., 300
    return np.where(chroma >= CHROMA_MIN, classes, -1)


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    height, width = box.shape
    fill = float(box.mean())
    patch_y, patch_x = max(1, round(height / 5)), max(1, round(width / 5))
    top_left, top_right = box[:patch_y, :patch_x].mean() > 0.5, box[:patch_y, -patch_x:].mean() > 0.5
    bottom_left, bottom_right = box[-patch_y:, :patch_x].mean() > 0.5, box[-patch_y:, -patch_x:].mean() > 0.5
    corners = (top_left, top_right, bottom_left, bottom_right)
    if all(corners):
        return "square", fill
    if corners == (False, False, True, True):
        return "triangle", fill
    if not any(corners):
        return "circle", fill
    return ("square" if fill > 0.87 else "triangle" if fill < 0.64 else "circle"), fill


def find_objects(image: torch.Tensor | np.ndarray) -> list[FoundObject]:
    """The objects in one [H, W, 3] picture in 0..1, largest first."""
    classes = colour_classes(image)
    min_area = MIN_AREA * classes.size
    names = list(world.COLOURS)
    found = []
    for index in np.unique(classes[classes >= 0]):
        labels, count = scipy.ndimage.label(classes == index, structure=_EIGHT_CONNECTED)
        for label in range(1, count + 1):
            mask = labels == label
            area = int(mask.sum())
            if area >= min_area:
                shape, fill = classify_shape(mask)
                found.append(FoundObject(names[index], shape, mask, area, fill))
    return sorted(found, key=lambda o: -o.area)


@dataclass
class InstanceVerdict:
    success: bool  # an object of the asked colour with most of its area inside the region
    shape_right: bool  # ... and of the asked shape


def judge_instance(found: list[FoundObject], colour: str, shape: str, region: np.ndarray,
                   inside: float = 0.5) -> InstanceVerdict:
    """MIG-style: the asked object is found with more than ``inside`` of its area in its region."""
    candidates = [(float((o.mask & region).sum()) / o.area, o) for o in found if o.colour == colour]
    placed = [o for share, o in candidates if share > inside]
    if not placed:
        return InstanceVerdict(False, False)
    return InstanceVerdict(True, any(o.shape == shape for o in placed))


def colour_leak(image: torch.Tensor | np.ndarray, colour: str, region: np.ndarray) -> float | None:
    """Share of the pixels of ``colour`` that lie outside ``region`` (None if the colour is absent)."""
    pixels = colour_classes(image) == list(world.COLOURS).index(colour)
    total = int(pixels.sum())
    return None if total == 0 else float((pixels & ~region).sum()) / total


def accuracy_on_world(scenes: int = 400, seed: int = 1, pixels: int = 128) -> dict[str, float]:
    """The judge on the world's own renders: each drawn object is matched to the found object
    overlapping it most; the share whose colour / shape is right (no match counts as wrong)."""
    import random

    rng = random.Random(seed)
    colour_right = shape_right = total = 0
    for _ in range(scenes):
        scene = world.random_scene(rng)
        found = find_objects(world.render(scene, pixels).numpy())
        for obj in scene.objects:
            drawn = world.shape_mask(obj, pixels).numpy()
            overlap, best = max(((int((f.mask & drawn).sum()), f) for f in found), key=lambda p: p[0],
                                default=(0, None))
            total += 1
            if overlap:
                colour_right += best.colour == obj.colour
                shape_right += best.shape == obj.shape
    return {"colour": colour_right / total, "shape": shape_right / total, "objects": total}
