"""Image folders and named files (PIL + torch, no ComfyUI imports): names that follow images through a batch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: Path) -> list[Path]:
    """The folder's image files, sorted by name (the batch order); a clear error when there are none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist: create it inside ComfyUI's input folder and "
                                "put the photos there")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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
    return [p.name for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES] \
        if folder.is_dir() else []


def example_folders(folder: Path, prefix: str) -> list[str]:
    """``prefix + name`` for every subfolder of ``folder`` that holds images."""
    if not folder.is_dir():
        return []
    return [prefix + p.name for p in sorted(folder.iterdir()) if p.is_dir() and example_images(p)]


def parse_names(text: str, what: str = "names") -> list[str]:
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
    pixels = (image[..., :3].detach().cpu().float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=pnginfo)
