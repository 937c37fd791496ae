"""Draw docs/how_it_works.png: what the mask operations do, computed by the pack itself on a real photo."""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage import data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from harness import pack_import  # noqa: E402

PANEL = 256


def subject_mask(size: int) -> torch.Tensor:
    """A rough subject mask on the astronaut photo: head and shoulders as ellipses, with a hole."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    s = size / 512
    head = ((x - 228 * s) / (72 * s)) ** 2 + ((y - 105 * s) / (88 * s)) ** 2 <= 1
    body = ((x - 215 * s) / (200 * s)) ** 2 + ((y - 420 * s) / (190 * s)) ** 2 <= 1
    hole = ((x - 170 * s) / (14 * s)) ** 2 + ((y - 400 * s) / (14 * s)) ** 2 <= 1
    return ((head | body) & ~hole).float().unsqueeze(0)


def tile(image: torch.Tensor, mask: torch.Tensor, label: str) -> Image.Image:
    """The photo darkened where the mask is low, so the mask's edge and softness are visible."""
    shown = image[0] * (0.15 + 0.85 * mask[0].unsqueeze(-1))
    picture = Image.fromarray((shown.numpy() * 255).round().astype(np.uint8)).resize((PANEL, PANEL))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, PANEL, 20), fill=(0, 0, 0))
    draw.text((6, 4), label, fill=(255, 255, 255))
    return picture


def main() -> None:
    masks = pack_import("nodes.ops.masks")
    image = torch.from_numpy(data.astronaut().astype(np.float32) / 255.0).unsqueeze(0)
    mask = subject_mask(512)
    panels = [
        ("mask (with a hole)", mask),
        ("grow +24 px (round)", masks.grow(mask, 24)),
        ("shrink -24 px", masks.grow(mask, -24)),
        ("clean up: fill holes", masks.cleanup(mask, 0.5, True, 0)),
        ("feather 48 px inward", masks.feather(mask, 48, "inward", "smoothstep")),
        ("feather 48 px centred", masks.feather(mask, 48, "centred", "smoothstep")),
        ("feather 48 px outward", masks.feather(mask, 48, "outward", "smoothstep")),
        ("difference: grow - mask", masks.combine(masks.grow(mask, 24), mask, "difference")),
    ]
    sheet = Image.new("RGB", (PANEL * 4, PANEL * 2), (0, 0, 0))
    for index, (label, result) in enumerate(panels):
        sheet.paste(tile(image, result, label), ((index % 4) * PANEL, (index // 4) * PANEL))
    target = REPO / "docs" / "how_it_works.png"
    target.parent.mkdir(exist_ok=True)
    sheet.save(target, optimize=True)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
