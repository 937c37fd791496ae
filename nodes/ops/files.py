"""Image folders and named files (PIL + torch, no ComfyUI imports): names that follow images through a
batch, and the training dataset folders (images/, controls/, masks/ matched by name). The pack's
only module in ops/ that reads or writes files."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
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


# --------------------------------------------------------------------------- containment

MAX_PATH_CHARS = 1024  # longer path inputs are refused before the file system sees them
MAX_NAME_BYTES = 255  # one file or folder name, as most file systems allow


class OutsideFolder(ValueError):
    """A path-like input that does not stay inside the folder it belongs to."""


def _shown(value: str) -> str:
    """The input as an error message shows it: quoted, control characters escaped, long ones cut."""
    return repr(value[:80] + ("..." if len(value) > 80 else ""))


def check_text(value: str, what: str, max_bytes: int = MAX_PATH_CHARS) -> str:
    """``value`` when it can name a file: a string without control characters (NUL, newline, ...) that is not
    longer than ``max_bytes`` in UTF-8; otherwise a clear error."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {_shown(value)} contains a control character (NUL, newline, tab, ...): "
                         "file and folder names cannot hold them")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ValueError(f"{what} {_shown(value)} is {len(value)} characters long: at most {max_bytes} bytes")
    return value


def inside_folder(value: str, roots: list[str | os.PathLike], what: str, where: str) -> Path:
    """The path ``value`` names inside one of ``roots`` (the folders that input belongs to), the first that
    holds it, else the first reading of it; every other value is refused with one message that names ``where``.

    The one containment rule of the pack, for every path-like input (folder, file, subfolder, name, prefix,
    dataset, example), on every ComfyUI version. ``value`` is relative to a root, or absolute inside one.
    It must stay inside that root written as it is (``..`` that climbs out, absolute paths elsewhere) and
    resolved (``realpath``: links that lead out). Roots are resolved too, so a root that is itself a link
    works. Nothing outside the roots is looked at before the refusal, and its message is the same whether
    the outside path exists or not."""
    check_text(value, what)
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in value.replace("\\", "/").split("/")):
        raise ValueError(f"{what} {_shown(value)} has a name longer than {MAX_NAME_BYTES} bytes")
    bases = [os.path.realpath(root) for root in roots]
    readings = []
    for base in bases:
        written = os.path.normpath(os.path.join(base, value))
        if not _within(written, bases):
            continue
        resolved = os.path.realpath(written)
        if _within(resolved, bases):
            readings.append(Path(resolved))
    if not readings:
        raise OutsideFolder(f"{what} {_shown(value)} must be inside {where}: give a name relative to it (absolute "
                            "paths are taken only inside the folders ComfyUI is configured with, e.g. "
                            "extra_model_paths.yaml; '..' and links that lead out of the folder are refused)")
    return next((path for path in readings if path.exists()), readings[0])


def _within(path: str, bases: list[str]) -> bool:
    return any(path == base or path.startswith(base.rstrip(os.sep) + os.sep) for base in bases)


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
    folder = inside_folder(subfolder, [root], "subfolder", "ComfyUI's output folder")
    paths = []
    for name in names:
        plain = check_text(name, "file name", MAX_NAME_BYTES - len(suffix))
        if plain in (".", "..") or "/" in plain or "\\" in plain:
            raise ValueError(f"file name {_shown(name)} is not a plain file name (no folders or '..')")
        paths.append(inside_folder(f"{subfolder}/{plain}{suffix}", [root], "file name", "ComfyUI's output folder"))
    repeated = sorted(p.name for p, n in Counter(paths).items() if n > 1)
    if repeated:
        raise ValueError(f"file names repeat ({', '.join(repeated)}): each image needs its own name")
    return paths


# What Save Images Named does when a file of the name is there already: the first choice never destroys one.
ADD_COUNTER, SKIP, REPLACE = IF_EXISTS = ("add counter", "skip", "replace")


def save_png(image: torch.Tensor, path: Path, pnginfo: PngInfo | None = None, if_exists: str = ADD_COUNTER
             ) -> Path | None:
    """One ``[H,W,C]`` float image as an 8-bit PNG, rounded to the nearest level (so loading it back is exact),
    with ``pnginfo`` text chunks (the workflow) when given. Returns the file written, or None when skipped.

    When ``path`` exists: ``add counter`` writes ``<stem>_00001_.png`` (the next free number, as core Save
    Image counts; the existing file is never opened for writing, even when another save races this one),
    ``skip`` writes nothing, ``replace`` overwrites it."""
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists {if_exists!r} is not one of {', '.join(IF_EXISTS)}")
    pixels = Image.fromarray(to_uint8(image[..., :3]))
    path.parent.mkdir(parents=True, exist_ok=True)
    if if_exists == REPLACE:
        pixels.save(path, format="PNG", pnginfo=pnginfo)
        return path
    for candidate in _free_names(path) if if_exists == ADD_COUNTER else [path]:
        try:
            with open(candidate, "xb") as file:  # exclusive create: never truncates an existing file
                pixels.save(file, format="PNG", pnginfo=pnginfo)
            return candidate
        except FileExistsError:
            continue
    return None


def _free_names(path: Path):
    """``path``, then ``<stem>_<n:05>_<suffix>`` from one past the highest number already in the folder."""
    yield path
    pattern = re.compile(re.escape(path.stem) + r"_(\d{5,})_" + re.escape(path.suffix) + "$")
    taken = [int(m.group(1)) for p in path.parent.iterdir() if (m := pattern.match(p.name))]
    counter = max(taken, default=0) + 1
    while True:
        yield path.with_name(f"{path.stem}_{counter:05}_{path.suffix}")
        counter += 1


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
