"""A seeded synthetic world: a grey background and 1-4 flat objects, each a colour and a shape.

Colours are the six hues 60 degrees apart at full saturation, so the judge can tell them by hue
alone. Shapes are circles, squares and upward triangles. Scenes are drawn at ``pixels`` with 8x8
supersampling per latent cell, so the latent (one cell per 8x8 block, see ``encode``) has soft,
anti-aliased edges.

The latent mapping (fixed, no VAE): the model-space latent of an image is, per 8x8 block, the mean
RGB scaled to [-1, 1] (channels 0-2) and a constant 0 (channel 3). ComfyUI keeps LATENT samples in
the VAE's space and multiplies them by SD1.5's ``scale_factor`` 0.18215 before the model sees them,
so a LATENT dict holds ``model_latent / 0.18215``. Decoding is the inverse and a nearest upsample.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

COLOURS = {  # name -> RGB; hues 0, 60, ..., 300 degrees
    "red": (1.0, 0.0, 0.0), "yellow": (1.0, 1.0, 0.0), "green": (0.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0), "blue": (0.0, 0.0, 1.0), "magenta": (1.0, 0.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (0.5, 0.5, 0.5)
BACKGROUND_NAME = "grey"
DOWNSCALE = 8  # image pixels per latent cell, as SD1.5's VAE
SD15_SCALE_FACTOR = 0.18215
MIN_SIZE, MAX_SIZE = 0.28, 0.55  # object size (diameter / side) as a fraction of the canvas side
MAX_SIZE_BY_COUNT = {1: 0.55, 2: 0.45, 3: 0.40, 4: 0.36}
OBJECT_COUNT_WEIGHTS = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height
    size: float  # diameter / side, fraction of the canvas side

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"

    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        return self.x - half, self.y - half, self.x + half, self.y + half


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]

    def caption(self, with_background: bool = True) -> str:
        return caption([o.phrase() for o in self.objects], with_background)


def caption(phrases: list[str], with_background: bool = True) -> str:
    """"a red circle", "a red circle and a blue square", "a red circle, a blue square and a green
    triangle", each optionally followed by "on a grey background"."""
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{text} on a {BACKGROUND_NAME} background" if with_background else text


def _overlaps(a: WorldObject, b: WorldObject, gap: float) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return not (ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0)


def random_object(rng: random.Random, colour: str, shape: str, box=(0.0, 0.0, 1.0, 1.0),
                  max_size: float = MAX_SIZE) -> WorldObject:
    """An object of ``colour`` and ``shape`` wholly inside ``box`` (x0, y0, x1, y1 fractions)."""
    x0, y0, x1, y1 = box
    size = rng.uniform(MIN_SIZE, max(MIN_SIZE, min(max_size, x1 - x0, y1 - y0)))
    return WorldObject(colour, shape, rng.uniform(x0 + size / 2, max(x0 + size / 2, x1 - size / 2)),
                       rng.uniform(y0 + size / 2, max(y0 + size / 2, y1 - size / 2)), size)


def random_scene(rng: random.Random, count: int | None = None, gap: float = 1 / 16) -> Scene:
    """1-4 objects of distinct colours, apart from each other by at least ``gap``."""
    if count is None:
        count = rng.choices(list(OBJECT_COUNT_WEIGHTS), weights=list(OBJECT_COUNT_WEIGHTS.values()))[0]
    colours = rng.sample(list(COLOURS), count)
    while True:
        objects: list[WorldObject] = []
        for colour in colours:
            for _ in range(50):
                candidate = random_object(rng, colour, rng.choice(SHAPES), max_size=MAX_SIZE_BY_COUNT[count])
                if not any(_overlaps(candidate, placed, gap) for placed in objects):
                    objects.append(candidate)
                    break
        if len(objects) == count:
            return Scene(tuple(objects))


def _grid(pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = (torch.arange(pixels, dtype=torch.float32) + 0.5) / pixels
    return torch.meshgrid(centres, centres, indexing="ij")  # (y, x)


def shape_mask(obj: WorldObject, pixels: int) -> torch.Tensor:
    """[pixels, pixels] bool: which pixel centres fall inside the object."""
    y, x = _grid(pixels)
    half = obj.size / 2
    if obj.shape == "circle":
        return (x - obj.x) ** 2 + (y - obj.y) ** 2 <= half ** 2
    if obj.shape == "square":
        return ((x - obj.x).abs() <= half) & ((y - obj.y).abs() <= half)
    if obj.shape == "triangle":  # apex up, base down; its half width grows by 1/2 per unit of depth
        depth = y - (obj.y - half)
        return (depth >= 0) & (depth <= obj.size) & ((x - obj.x).abs() <= depth / 2)
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def outlines(scene: Scene, pixels: int = 128, width: int = 2) -> torch.Tensor:
    """[pixels, pixels, 3] control image: white outlines ``width`` px wide (inside each shape's edge)
    on black, as a ControlNet's edge maps look."""
    lines = torch.zeros(pixels, pixels)
    for obj in scene.objects:
        inside = shape_mask(obj, pixels).float()[None, None]
        eroded = 1 - torch.nn.functional.max_pool2d(1 - inside, 2 * width + 1, stride=1, padding=width)
        lines = torch.maximum(lines, (inside - eroded)[0, 0])
    return lines[..., None].expand(pixels, pixels, 3).clone()


def render_cells(scene: Scene, cells: int = 16) -> torch.Tensor:
    """[cells, cells, 3] in 0..1: each latent cell the mean colour of its 8x8 supersampled pixels."""
    fine = cells * DOWNSCALE
    image = torch.tensor(BACKGROUND).repeat(fine, fine, 1)
    for obj in scene.objects:
        image[shape_mask(obj, fine)] = torch.tensor(COLOURS[obj.colour])
    return torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], DOWNSCALE)[0].permute(1, 2, 0)


def render(scene: Scene, pixels: int = 128) -> torch.Tensor:
    """[pixels, pixels, 3] image in 0..1: what the latent can hold (``decode(encode(render))`` is
    ``render``), i.e. ``render_cells`` upsampled by nearest neighbour."""
    cells = render_cells(scene, pixels // DOWNSCALE)
    return cells.repeat_interleave(DOWNSCALE, 0).repeat_interleave(DOWNSCALE, 1)


def scene_latent(scene: Scene, cells: int = 16) -> torch.Tensor:
    """[4, cells, cells] model-space latent of a scene (``encode`` of its render, computed directly)."""
    rgb = render_cells(scene, cells).permute(2, 0, 1) * 2 - 1
    return torch.cat([rgb, torch.zeros_like(rgb[:1])])


def encode(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] images in 0..1 -> [B, 4, H/8, W/8] model-space latents (see the module docstring)."""
    rgb = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), DOWNSCALE) * 2 - 1
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1)


def decode(model_latent: torch.Tensor) -> torch.Tensor:
    """[B, 4, h, w] model-space latents -> [B, 8h, 8w, 3] images in 0..1 (channel 3 is ignored)."""
    rgb = ((model_latent[:, :3] + 1) / 2).clamp(0, 1)
    return rgb.repeat_interleave(DOWNSCALE, 2).repeat_interleave(DOWNSCALE, 3).permute(0, 2, 3, 1)


def decode_samples(samples: torch.Tensor) -> torch.Tensor:
    """A LATENT dict's samples (VAE space, as ComfyUI's samplers return them) -> images."""
    return decode(samples * SD15_SCALE_FACTOR)
