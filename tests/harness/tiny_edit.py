"""Test-only pieces for the editing nodes: a tiny real Qwen-Image VAE and a known drift.

- ``qwen_vae()``: ComfyUI's own Wan 2.1 VAE class (the one Qwen-Image uses) at width 8, built through
  ``comfy.sd.VAE`` from a random state dict, so VAEEncode gives Qwen-Image's 5-D latents [B,16,1,h,w]
  and ReferenceLatent hands the real model the layout it expects.
- ``edit_with_drift(picture, stitch, index, W)``: what an edit model returns for a crop of Crop For Edit:
  the masked part repainted, the rest drifted by W and sampled from the whole photo, plus noise;
  ``corner_error`` says how far two transforms put a crop pixel apart.
- ``drift(image, dx, dy, zoom, degrees)``: what an edit model's drift does to a picture, with the
  transform known: ``out(p) = image(W^-1 p)`` for the similarity W about the picture's centre (pixel
  units; the edge pixel repeats past the border). Stitch Edit Back must find W again.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .fixture_nodes import fixture_node
from .tiny_models import _randomize


def example_photo(name: str) -> torch.Tensor:
    """One of the pack's example photos (example_inputs/) as a [1,H,W,3] IMAGE."""
    from PIL import Image

    from .comfy import REPO_ROOT

    pixels = np.asarray(Image.open(REPO_ROOT / "example_inputs" / name).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(pixels / 255.0).unsqueeze(0)


def box_mask(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """[1,H,W] mask, 1 inside box = (left, top, right, bottom)."""
    mask = torch.zeros(1, height, width)
    x0, y0, x1, y1 = box
    mask[:, y0:y1, x0:x1] = 1.0
    return mask


def drift_matrix(dx: float, dy: float, zoom: float, degrees: float) -> torch.Tensor:
    """2x3 similarity on centred pixels: zoom and turn about the centre, then shift by (dx, dy)."""
    angle = math.radians(degrees)
    c, s = zoom * math.cos(angle), zoom * math.sin(angle)
    return torch.tensor([[c, -s, dx], [s, c, dy]], dtype=torch.float64)


def drift(image: torch.Tensor, dx: float, dy: float, zoom: float, degrees: float) -> torch.Tensor:
    """[B,H,W,C] pictures moved by the drift (see the module docstring)."""
    height, width = image.shape[1:3]
    inverse = torch.linalg.inv(torch.cat((drift_matrix(dx, dy, zoom, degrees), torch.tensor([[0.0, 0.0, 1.0]],
                                                                                           dtype=torch.float64))))
    xs = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    ys = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    x, y = xs.expand(height, width), ys.unsqueeze(1).expand(height, width)
    sx = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    sy = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    grid = torch.stack((2 * sx / width, 2 * sy / height), dim=-1).float().unsqueeze(0).expand(image.shape[0], -1, -1, -1)
    out = F.grid_sample(image.movedim(-1, 1).float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.movedim(1, -1).to(image.dtype)


def edit_with_drift(picture: torch.Tensor, stitch, index: int, matrix: torch.Tensor, noise: float = 0.02,
                    seed: int = 0) -> torch.Tensor:
    """What an edit model returns for crop ``index``: the masked part repainted, the rest the same picture but
    drifted by ``matrix`` (edit(W q) = source(q)), sampled from the whole photo (real content comes into
    view at the crop's edge), plus noise."""
    region, (crop_h, crop_w) = stitch.regions[index], stitch.crops.shape[1:3]
    inverse = torch.linalg.inv(torch.cat((matrix, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))))[:2]
    xs = torch.arange(crop_w, dtype=torch.float64) + 0.5 - crop_w / 2
    ys = torch.arange(crop_h, dtype=torch.float64) + 0.5 - crop_h / 2
    x, y = xs.expand(crop_h, crop_w), ys.unsqueeze(1).expand(crop_h, crop_w)
    qx = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    qy = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    x0, y0, x1, y1 = region.window
    height, width = picture.shape[1:3]
    px = (qx + crop_w / 2) * ((x1 - x0) / crop_w) + x0
    py = (qy + crop_h / 2) * ((y1 - y0) / crop_h) + y0
    grid = torch.stack((2 * px / width - 1, 2 * py / height - 1), -1).unsqueeze(0).float()
    sample = lambda t: F.grid_sample(t, grid, align_corners=False, padding_mode="border")[0]
    edit = sample(picture.movedim(-1, 1)).movedim(0, -1)
    masked = sample(region.mask[None, None])[0] > 0.3
    generator = torch.Generator().manual_seed(seed)
    paint = torch.tensor([0.85, 0.25, 0.1]) * (0.6 + 0.4 * torch.rand(crop_h, crop_w, 1, generator=generator))
    edit = torch.where(masked.unsqueeze(-1), paint, edit)
    return (edit + noise * torch.randn(edit.shape, generator=generator)).clamp(0, 1)


def corner_error(found: torch.Tensor, true: torch.Tensor, crop_h: int, crop_w: int) -> float:
    """Largest distance between where two transforms put a crop pixel: at a corner, for affine maps."""
    corners = torch.tensor([[-crop_w / 2, -crop_h / 2, 1], [crop_w / 2, -crop_h / 2, 1],
                            [-crop_w / 2, crop_h / 2, 1], [crop_w / 2, crop_h / 2, 1]], dtype=torch.float64).T
    return float(((found.double() @ corners) - (true @ corners)).norm(dim=0).max())


@functools.cache
def qwen_vae(seed: int = 5):
    """A comfy.sd.VAE of the Wan 2.1 architecture (Qwen-Image's VAE) with width 8: 5-D latents, 16 channels, / 8."""
    import comfy.ldm.wan.vae
    import comfy.sd

    # The layout comfy.sd.VAE rebuilds from these weights (it reads the width from decoder.head.0.gamma).
    model = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True], dropout=0.0)
    _randomize(model, seed)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    result = comfy.sd.VAE(sd=state)
    result.first_stage_model.to(torch.float32)
    result.vae_dtype = torch.float32
    return result


TinyQwenVAELoader = fixture_node(
    "TinyQwenVAELoader", "Test-only node: a tiny Wan 2.1 VAE (Qwen-Image's VAE architecture), 5-D latents.",
    ("VAE",), lambda: qwen_vae())
TestDrift = fixture_node(
    "TestDrift", "Test-only node: pictures moved by a known shift / zoom / rotation, as an edit model drifts.",
    ("IMAGE",), drift,
    {"image": ("IMAGE",), "dx": ("FLOAT", {"default": 0.0, "min": -4096, "max": 4096}),
     "dy": ("FLOAT", {"default": 0.0, "min": -4096, "max": 4096}),
     "zoom": ("FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0}),
     "degrees": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0})})

TEST_NODES = {"TinyQwenVAELoader": TinyQwenVAELoader, "TestDrift": TestDrift}


def register_test_nodes() -> None:
    """Make the editing test nodes available to prompts run through the executor."""
    import nodes

    nodes.NODE_CLASS_MAPPINGS.update(TEST_NODES)
