"""The items of a catalog run: which files, and whether each is an image a workflow can take."""
from __future__ import annotations

import csv
import glob
import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 50_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


class BadInput(ValueError):
    """The inputs argument names nothing usable."""


def discover(specs: list[str]) -> list[Path]:
    """Image files from folders (recursive), glob patterns or CSV files of paths (a 'path'
    column, else the first column; relative paths are relative to the CSV), sorted, unique."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += _csv_paths(path)
        elif path.is_file():
            found.append(path)
        else:
            matches = [Path(p) for p in glob.glob(str(path), recursive=True)]
            if not matches:
                raise BadInput(f"{spec!r} is not a folder, a CSV file, an image file or a glob that matches anything")
            found += [p for p in matches if p.is_file()]
    unique = sorted({p.resolve() for p in found})
    if not unique:
        raise BadInput(f"no image files in {specs} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return unique


def _csv_paths(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index("path") if "path" in header else 0
    body = rows[1:] if "path" in header or not Path(rows[0][0]).suffix else rows
    return [(path.parent / row[column].strip()) for row in body if row and row[column].strip()]


def image_problem(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why these bytes are not an image a workflow should get, or None when they are fine:
    unreadable, truncated, CMYK, 16 bits per channel or more pixels than ``max_pixels``."""
    if data.startswith(_PNG_SIGNATURE) and len(data) > 24 and data[24] == 16:
        return "16 bits per channel: save it as 8-bit (ComfyUI's LoadImage would clip it)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return f"huge: {width}x{height} is more than {max_pixels} pixels (raise --max-pixels to allow it)"
            if image.mode == "CMYK":
                return "CMYK colour: convert it to RGB"
            if image.mode in _SIXTEEN_BIT_MODES:
                return f"16-bit or float pixels (mode {image.mode}): save it as 8-bit"
            image.load()
    except UnidentifiedImageError:
        return "unreadable: not an image format Pillow knows"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"huge: {error}"
    except (OSError, SyntaxError, ValueError) as error:
        return f"truncated or corrupt: {error}"
    return None

