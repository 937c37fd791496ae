"""Write the pack's example inputs (example_inputs/) from scikit-image's public-domain / CC0 photos.

astronaut (NASA, public domain), coffee and chelsea (Stefan van der Walt, CC0). Every shipped
workflow reads its pictures from here through 'Load Example Image (SC)' or the 'pack examples/'
folders of 'Load Image Folder (SC)', so a fresh install runs them without copying files.
Run it again only to change the pictures: `.venv/bin/python scripts/make_examples.py`.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from skimage import data

EXAMPLES = Path(__file__).resolve().parents[1] / "example_inputs"


def _save(image: Image.Image, name: str) -> None:
    path = EXAMPLES / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, quality=90)


def _shifted(image: Image.Image, dx: int) -> Image.Image:
    """The photo moved sideways by dx pixels (edge pixels repeated): a small camera pan."""
    pixels = np.asarray(image)
    return Image.fromarray(np.roll(pixels, dx, axis=1) if dx else pixels)


def main() -> None:
    astronaut, coffee, chelsea = (Image.fromarray(data.astronaut()), Image.fromarray(data.coffee()),
                                  Image.fromarray(data.chelsea()))
    _save(astronaut, "astronaut.jpg")
    _save(ImageOps.mirror(astronaut), "astronaut_mirrored.jpg")
    _save(chelsea, "chelsea_cat.jpg")
    _save(coffee, "coffee_cup.jpg")
    two = Image.new("RGB", (512, 512))  # two people side by side for the multi-instance workflow
    two.paste(astronaut.crop((96, 0, 352, 512)), (0, 0))
    two.paste(ImageOps.mirror(astronaut).crop((160, 0, 416, 512)), (256, 0))
    _save(two, "two_people.jpg")
    for k, dx in enumerate((0, 8, 16)):
        _save(_shifted(astronaut, dx), f"frame_{k:03d}.jpg")
    for name, image in (("coffee_cup", coffee), ("chelsea_cat", chelsea), ("astronaut", astronaut),
                        ("coffee_cup_small", coffee.resize((300, 200)))):
        _save(image, f"catalog/{name}.jpg")  # mixed sizes on purpose: real catalogs are
    for name, image in (("astronaut", astronaut), ("coffee_cup", coffee.crop((100, 0, 500, 400)).resize((512, 512))),
                        ("chelsea_cat", chelsea.crop((75, 0, 375, 300)).resize((512, 512)))):
        _save(image, f"local_control_photos/{name}.jpg")


if __name__ == "__main__":
    main()
