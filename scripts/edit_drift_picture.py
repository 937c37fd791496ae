"""Make docs/edit_drift.jpg: an edit model's drift, stitched back plainly and with Stitch Edit Back.

On the example coffee photo, the coffee's surface is the mask; the "edit" turns it green (a matcha) and,
as edit models do, moves the whole crop by a known drift (30 / -24 crop px, zoom 1.05, 0.8 degrees;
tests/harness/tiny_edit.drift). Panels: the photo, a plain crop-and-stitch (the rim inside the feathered
band is pasted from the drifted edit: doubled edges), and Stitch Edit Back (drift measured outside the
mask and undone). `.venv/bin/python scripts/edit_drift_picture.py`
"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from harness import boot, pack_import, tiny_edit  # noqa: E402

DRIFT = (30.0, -24.0, 1.05, 0.8)
FEATHER = 10


def main() -> None:
    torch.set_num_threads(1)
    boot()
    ops = pack_import("nodes.ops.editing")
    picture = tiny_edit.example_photo("coffee_cup.jpg")
    height, width = picture.shape[1:3]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = ((((xs - 288) / 82.0) ** 2 + ((ys - 145) / 48.0) ** 2) <= 1).float().unsqueeze(0)  # the coffee's surface
    stitch = ops.crop_for_edit(picture, mask, "qwen_image_edit", margin=96)
    crop, crop_mask = stitch.crops, stitch.crop_masks.unsqueeze(-1)
    matcha = torch.stack((crop[..., 1] * 0.55, crop[..., 1] * 0.95, crop[..., 2] * 0.45), dim=-1)
    edited = tiny_edit.drift(torch.lerp(crop, matcha, crop_mask), *DRIFT)
    plain = ops.stitch_edit(stitch, edited, register_drift=False, feather_px=FEATHER)
    ours = ops.stitch_edit(stitch, edited, feather_px=FEATHER)
    found = ours.registrations[0]
    x0, y0, x1, y1 = stitch.regions[0].window
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    panels = [("photo (mask: the coffee)", picture), ("plain crop-and-stitch", plain.image),
              (f"Stitch Edit Back: {found.describe().split(';')[0]}", ours.image)]
    tiles = []
    for title, image in panels:
        tile = Image.fromarray((image[0, y0:y1, x0:x1].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        tile = tile.resize((tile.width * 3 // 2, tile.height * 3 // 2), Image.LANCZOS)
        canvas = Image.new("RGB", (tile.width, tile.height + 28), (24, 24, 24))
        canvas.paste(tile, (0, 28))
        ImageDraw.Draw(canvas).text((8, 8), title, fill=(235, 235, 235))
        tiles.append(canvas)
    out = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), (24, 24, 24))
    left = 0
    for tile in tiles:
        out.paste(tile, (left, 0))
        left += tile.width + 8
    target = ROOT / "docs" / "edit_drift.jpg"
    out.save(target, quality=85, optimize=True)
    print(f"wrote {target} ({out.width}x{out.height}, {target.stat().st_size // 1000} KB); drift applied "
          f"{DRIFT}, found: {found.describe()}")


if __name__ == "__main__":
    main()
