"""Maths of mask-in-the-loop adapter training: Sobel edges, the masked Sobel loss, z0 estimates.

Pure torch; no ComfyUI imports. Latents are ``[B,C,H,W]``; masks ``[B|1,1,H,W]`` at latent size.

ComfyUI's eps/v models work in the "variance exploding" form x_t = z0 + sigma * eps (the UNet
input is x_t / sqrt(sigma^2 + 1), which is the paper's z_t = sqrt(a) z0 + sqrt(1-a) eps with
a = 1 / (1 + sigma^2)). Both forms of the z0 estimate are here so a test can check them
against the model's own ``model_sampling``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradients ``[B,C,2,H,W]`` (x then y), replicate-padded so the size is kept."""
    if x.ndim != 4:
        raise ValueError(f"sobel needs a [B,C,H,W] latent, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)  # [2C,1,3,3]
    out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return out.view(x.shape[0], channels, 2, *x.shape[2:])


def masked_sobel_loss(z0_pred: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the Sobel maps of ``z0_pred`` and ``z0`` inside ``mask``.

    Only cells whose whole 3x3 Sobel window lies in the mask's support are measured (weighted by
    the soft mask), so values outside the mask get exactly zero gradient and the mask border
    adds no edges of its own. Zero when ``z0_pred == z0`` or the two differ by a constant; zero
    for an empty mask (or one thinner than 3 cells).
    """
    if z0_pred.shape != z0.shape:
        raise ValueError(f"z0_pred {tuple(z0_pred.shape)} and z0 {tuple(z0.shape)} must have the same shape")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != z0.shape[-2:]:
        raise ValueError(f"mask must be [B,1,H,W] at the latent size {tuple(z0.shape[-2:])}, got {tuple(mask.shape)}")
    mask = mask.to(z0_pred)
    support = (mask > 0).to(z0_pred)
    interior = -F.max_pool2d(-support, 3, stride=1, padding=1)  # erosion; the image edge counts as inside
    diff = sobel(z0_pred) - sobel(z0)
    weight = (mask * interior).unsqueeze(2)  # [B,1,1,H,W]
    total = (weight * diff.square()).sum()
    count = weight.expand_as(diff).sum()
    return total / count.clamp_min(1e-8)


def control_lora_weights(control: dict[str, torch.Tensor], unet: dict[str, torch.Tensor], rank: int,
                         own_parts: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], float]:
    """A ControlNet as a Control-LoRA (the format core ComfyUI loads as ``ControlLora``): every weight
    copied from the UNet stored as its difference to the UNet's, ``{module}.up`` ``[out, r]`` and
    ``{module}.down`` ``[r, in]`` from a truncated SVD, unchanged ones left out, changed 1-D ones
    (norms, biases) in full; the ControlNet's own parts (``own_parts`` prefixes) in full. Core
    rebuilds the rest from the sampling model's UNet. Returns the weights and the worst relative
    (Frobenius) error the truncation makes in a difference: 0 up to rounding when the
    ControlNet was trained with LoRA of rank <= ``rank``."""
    if rank < 1:
        raise ValueError(f"a Control-LoRA needs a rank of at least 1, got {rank}")
    out: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    worst = 0.0
    for key, value in control.items():
        base = unet.get(key)
        if key.startswith(own_parts) or base is None or base.shape != value.shape:
            out[key] = value
            continue
        diff = value.float() - base.to(value.device).float()
        if not bool(diff.any()):
            continue
        if value.ndim < 2 or not key.endswith(".weight"):
            out[key] = value
            continue
        matrix = diff.reshape(diff.shape[0], -1)
        u, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
        r = min(rank, singular.shape[0])
        dropped = singular[r:].square().sum().sqrt() / singular.square().sum().sqrt()
        worst = max(worst, float(dropped))
        module = key.removesuffix(".weight")
        out[f"{module}.up"] = (u[:, :r] * singular[:r]).to(value.dtype).contiguous()
        out[f"{module}.down"] = vh[:r].to(value.dtype).contiguous()
    return out, worst


def z0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z0' = x_t - sigma * eps (ComfyUI's form, x_t = z0 + sigma * eps); ``sigma`` is ``[B]``."""
    return x_t - eps * _per_sample(sigma, x_t)


def eps_from_z0(x_t: torch.Tensor, z0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise a z0 estimate implies: (x_t - z0) / sigma (the inverse of ``z0_from_eps``)."""
    return (x_t - z0) / _per_sample(sigma, x_t)


def z0_from_eps_vp(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The paper's form: z0' = (z_t - sqrt(1 - a) eps) / sqrt(a), ``alpha_bar`` ``[B]``."""
    a = _per_sample(alpha_bar, z_t)
    return (z_t - (1.0 - a).sqrt() * eps) / a.sqrt()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(values, device=like.device, dtype=like.dtype).reshape(-1)
    return values.view(-1, *([1] * (like.ndim - 1)))


def stripes_task(n: int = 4, latent: int = 8, seed: int = 0, full_hint: bool = False, context_dim: int = 64):
    """A synthetic local-control task (tests and benchmarks): latent stripes that must appear only
    inside a per-image square mask; flat (a per-image colour) elsewhere.

    Returns ``(latents [n,4,latent,latent], hints [n,8*latent,8*latent,3], masks [n,8*latent,8*latent],
    conditioning, pattern [1,1,latent,latent])``: ``pattern`` is the +-1 stripe pattern in latent
    space, the same in every channel. The control image shows the stripes inside the mask only, or
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
    latents = 0.2 * torch.randn(n, 4, 1, 1, generator=g) + latent_mask * pattern
    cond = [[torch.randn(1, 77, context_dim, generator=g), {}]]
    return latents, hints.contiguous(), masks, cond, pattern


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DATASET_SUBFOLDERS = ("images", "controls", "masks")


@dataclass
class FolderDataset:
    """What ``read_dataset_folder`` found: one entry per file in ``images/``, sorted by name."""

    names: list[str]  # file names without extension, the key the subfolders are matched by
    images: torch.Tensor  # [N,H,W,3] 0..1
    controls: torch.Tensor  # [N,H,W,3] 0..1
    masks: torch.Tensor  # [N,H,W] 0..1
    captions: list[str] | None  # images/<name>.txt for every image, or None when there are none


def read_dataset_folder(root: str, downscale: int = 8) -> FolderDataset:
    """Read a training set laid out as ``images/``, ``controls/`` and ``masks/`` with files matched
    by name (``images/cat.png`` + ``controls/cat.png`` + ``masks/cat.png``; extensions may differ),
    plus an optional caption ``images/cat.txt`` per image (all images or none).

    Rules: all images have one size; a control image must have its image's size; a mask of
    another size is resized to its image (bilinear); masks are read as grey levels (white =
    inside). Sizes that are not a multiple of ``downscale`` are centre-cropped to one, the way
    ComfyUI's VAE crops what it encodes, so images, controls and masks stay aligned. Every
    missing folder or file is an error that names it.
    """
    if not os.path.isdir(root):
        raise ValueError(f"dataset folder {root} does not exist")
    folders = {}
    for name in DATASET_SUBFOLDERS:
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise ValueError(f"dataset folder {root} has no {name}/ subfolder; it needs images/, controls/ and "
                             "masks/ with files matched by name (images/cat.png, controls/cat.png, masks/cat.png)")
        folders[name] = _image_files(folder)
    names = sorted(folders["images"])
    if not names:
        raise ValueError(f"{os.path.join(root, 'images')} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    for kind in ("controls", "masks"):
        missing = [n for n in names if n not in folders[kind]]
        if missing:
            raise ValueError(f"{os.path.join(root, kind)} has no file for image {folders['images'][missing[0]]} "
                             f"(expected {kind}/{missing[0]}.png or another image type)"
                             + (f"; {len(missing) - 1} more images lack one too" if len(missing) > 1 else ""))
    captions = _captions(os.path.join(root, "images"), names, folders["images"])
    images, controls, masks = [], [], []
    size = None
    for n in names:
        image = _load(os.path.join(root, "images", folders["images"][n]), "RGB")
        if size is None:
            size = image.shape[:2]
        elif image.shape[:2] != size:
            raise ValueError(f"images/{folders['images'][n]} is {image.shape[1]}x{image.shape[0]} but "
                             f"images/{folders['images'][names[0]]} is {size[1]}x{size[0]}; training images must "
                             "share one size (resize or crop them first)")
        control = _load(os.path.join(root, "controls", folders["controls"][n]), "RGB")
        if control.shape[:2] != size:
            raise ValueError(f"controls/{folders['controls'][n]} is {control.shape[1]}x{control.shape[0]} but its "
                             f"image is {size[1]}x{size[0]}; control images must have their image's size")
        mask = _load(os.path.join(root, "masks", folders["masks"][n]), "L")
        if mask.shape != size:
            mask = F.interpolate(mask[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        images.append(image)
        controls.append(control)
        masks.append(mask.clamp(0.0, 1.0))
    crop = [(d % downscale // 2, d // downscale * downscale) for d in size]
    if any(length == 0 for _, length in crop):
        raise ValueError(f"training images are {size[1]}x{size[0]}; they need at least {downscale} pixels a side")

    def cropped(t: torch.Tensor) -> torch.Tensor:
        (top, h), (left, w) = crop
        return t[:, top : top + h, left : left + w].contiguous()

    return FolderDataset(names, cropped(torch.stack(images)), cropped(torch.stack(controls)),
                         cropped(torch.stack(masks)), captions)


def _image_files(folder: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(os.path.join(folder, entry)):
            continue
        if stem in files:
            raise ValueError(f"{folder} has two files named {stem} ({files[stem]} and {entry}); keep one")
        files[stem] = entry
    return files


def _captions(folder: str, names: list[str], files: dict[str, str]) -> list[str] | None:
    paths = [os.path.join(folder, n + ".txt") for n in names]
    present = [os.path.isfile(p) for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = names[present.index(False)]
        raise ValueError(f"{os.path.join(folder, missing + '.txt')} is missing: {files[missing]} has no caption but "
                         f"{sum(present)} other images have one; give every image a caption, or none to use the "
                         "positive prompt for all")
    captions = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            captions.append(f.read().strip())
    return captions


def _load(path: str, mode: str) -> torch.Tensor:
    """``[H,W,3]`` (RGB) or ``[H,W]`` (L) float 0..1, EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode == "I":  # 16-bit greyscale
                image = image.point(lambda v: v * (1 / 255))
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error
    return torch.from_numpy(array.copy())


def loss_plot(history: dict[str, list[float]], width_px: int = 640, height_px: int = 360) -> torch.Tensor:
    """IMAGE ``[1,H,W,3]``: each loss series against the step, log scale when all are positive."""
    from .charts import _figure, _to_image

    figure = _figure(width_px, height_px)
    axes = figure.add_subplot()
    positive = True
    for name, values in history.items():
        if not values:
            continue
        axes.plot(range(1, len(values) + 1), values, label=name)
        positive = positive and min(values) > 0
    if positive and any(history.values()):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("Local-control adapter training")
    axes.legend(fontsize=8)
    return _to_image(figure)
