"""Image folders and named files (PIL + torch, no ComfyUI imports): names that follow images through a
batch, and the training dataset folders (images/, controls/, masks/ matched by name). The pack's
only module in ops/ that reads or writes files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from .shapes import to_uint8

# The image files every folder reader takes (photo folders, example folders, training datasets),
# compared case-insensitively: PHOTO.JPG counts.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """The folder's image files, sorted by name (the batch order); a clear error when there are none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist: create it inside ComfyUI's input folder and "
                                "put the photos there")
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        raise ValueError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}): put the photos there")
    return files


def load_batch(files: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """``[B,H,W,3]`` float 0..1 (EXIF rotation applied) and the file names without suffix.

    One batch needs one size: a photo of another size is an error naming both files, never silently resized."""
    images, names, first = [], [], None
    for path in files:
        with Image.open(path) as opened:
            rgb = ImageOps.exif_transpose(opened).convert("RGB")
        if first is None:
            first = (path.name, rgb.size)
        elif rgb.size != first[1]:
            raise ValueError(f"{path.name} is {rgb.size[0]}x{rgb.size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}: "
                             "the photos of one folder must have the same size (resize them, or split the folder)")
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
        names.append(path.stem)
    return torch.stack(images), names


def load_each(files: list[Path]) -> tuple[list[torch.Tensor], list[str]]:
    """One ``[1,H,W,3]`` image per file (sizes may differ) and the file names without suffix."""
    loaded = [load_batch([path]) for path in files]
    return [images for images, _ in loaded], [names[0] for _, names in loaded]


def example_images(folder: Path) -> list[str]:
    """The image files directly in ``folder``, sorted (the pack's example photos)."""
    return [p.name for p in sorted(folder.iterdir()) if is_image_file(p)] \
        if folder.is_dir() else []


def example_folders(folder: Path, prefix: str) -> list[str]:
    """``prefix + name`` for every subfolder of ``folder`` that holds images."""
    if not folder.is_dir():
        return []
    return [prefix + p.name for p in sorted(folder.iterdir()) if p.is_dir() and example_images(p)]


def names_from_json(text: str, what: str = "names") -> list[str]:
    """A JSON list of file names, as Load Image Folder makes it."""
    try:
        names = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} must be a JSON list of file names (from Load Image Folder): {error}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{what} must be a JSON list of non-empty file names (from Load Image Folder), got {text[:200]!r}")
    return names


def select_names(names: list[str], indices_text: str) -> list[str]:
    """The names at ``indices_text`` (a JSON list of batch indices, as Filter By Found makes it), in that order."""
    try:
        indices = json.loads(indices_text)
    except json.JSONDecodeError as error:
        raise ValueError(f"indices must be a JSON list of batch indices (from Filter By Found): {error}") from None
    if not isinstance(indices, list) or not all(isinstance(i, int) and 0 <= i < len(names) for i in indices):
        raise ValueError(f"indices {indices_text[:200]!r} do not fit the {len(names)} names: connect the names of the "
                         "batch that was filtered")
    return [names[i] for i in indices]


def named_paths(root: Path, subfolder: str, names: list[str], suffix: str = ".png") -> list[Path]:
    """``root/subfolder/<name><suffix>`` for every name, refusing paths that leave ``root`` or repeat."""
    root = root.resolve()
    folder = (root / subfolder).resolve()
    if folder != root and root not in folder.parents:
        raise ValueError(f"subfolder {subfolder!r} leaves the output folder; use a relative folder name")
    paths = []
    for name in names:
        path = (folder / f"{name}{suffix}").resolve()
        if path.parent != folder:
            raise ValueError(f"file name {name!r} is not a plain file name (no folders or '..')")
        paths.append(path)
    repeated = sorted({p.name for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"file names repeat ({', '.join(repeated)}): each image needs its own name")
    return paths


def save_png(image: torch.Tensor, path: Path, pnginfo: PngInfo | None = None) -> None:
    """One ``[H,W,C]`` float image as an 8-bit PNG, rounded to the nearest level (so loading it back is exact),
    with ``pnginfo`` text chunks (the workflow) when given."""
    pixels = to_uint8(image[..., :3])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=pnginfo)


# --------------------------------------------------------------------------- training dataset folders

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
        raise ValueError(f"{os.path.join(root, 'images')} holds no images ({', '.join(IMAGE_SUFFIXES)})")
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
        stem = os.path.splitext(entry)[0]
        if not is_image_file(Path(folder, entry)):
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
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode == "I":  # 16-bit greyscale
                image = image.point(lambda v: v * (1 / 255))
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error
    return torch.from_numpy(array.copy())
