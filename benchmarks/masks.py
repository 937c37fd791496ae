"""Benchmark: the pack's feather against the scipy way peer packs feather on CPU.

Feathers 16 different realistic 2048x2048 masks (ellipses, polygons, blobby unions, holes) with
``nodes/ops/masks.py`` and with ``scipy.ndimage.distance_transform_edt`` on the mask and its
inverse followed by the same falloff, then prints a table and, as the last line, a JSON object
with the speed ratio (scipy time / pack time) and the max absolute difference.

Both run in interleaved rounds after a warm-up round (benchmarks/_common.py); the ratio is the
median over the rounds of the ratio within a round, printed with its min and max. With
``--threads 1`` (default) the clock is process CPU time, so other load barely moves it.

Run from the repo root: ``.venv/bin/python benchmarks/masks.py [--size 2048 --count 16 --radius 32 --rounds 5]``.
The ops are loaded without ComfyUI (they must not import it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_rounds_argument, add_threads_argument, clock_name, interleaved_rounds, timed  # noqa: E402

OPS_DIR = Path(__file__).resolve().parents[1] / "nodes" / "ops"


def load_ops():
    """Import nodes/ops as a private package (no ComfyUI, no pack __init__) and return its masks module."""
    spec = importlib.util.spec_from_file_location(
        "_sc_bench_ops", OPS_DIR / "__init__.py", submodule_search_locations=[str(OPS_DIR)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{spec.name}.masks")


def make_masks(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Different per mask: a union of ellipses, a star polygon and blobs, some with holes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    masks = np.zeros((count, size, size), dtype=np.float32)
    for i in range(count):
        m = np.zeros((size, size), dtype=bool)
        for _ in range(rng.integers(1, 4)):  # ellipses, rotated
            cy, cx = rng.uniform(0.2, 0.8, 2)
            ry, rx = rng.uniform(0.08, 0.3, 2)
            a = rng.uniform(0, math.pi)
            u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            m |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
        # a star-shaped polygon (radial function with random harmonics)
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ang = np.arctan2(yy - cy, xx - cx)
        rad = np.hypot(yy - cy, xx - cx)
        r = 0.18 + sum(rng.uniform(0, 0.05) * np.cos(k * ang + rng.uniform(0, 6.28)) for k in range(2, 7))
        m |= rad <= r
        if i % 3 == 0:  # a hole
            cy, cx = rng.uniform(0.35, 0.65, 2)
            m &= np.hypot(yy - cy, xx - cx) > 0.05
        masks[i] = m
    return torch.from_numpy(masks)


def scipy_feather(masks: np.ndarray, radius: float, direction: str, falloff: str, profile) -> np.ndarray:
    """The peer-pack way: full EDT of the mask and of its inverse, then the falloff."""
    out = np.empty_like(masks)
    for i, m in enumerate(masks):
        lab = m >= 0.5
        d_in = ndimage.distance_transform_edt(lab)
        d_out = ndimage.distance_transform_edt(~lab)
        signed = np.where(lab, d_in - 0.5, 0.5 - d_out).astype(np.float32)
        out[i] = profile(torch.from_numpy(signed), radius, direction, falloff).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--radius", type=float, default=32)
    parser.add_argument("--direction", default="centred")
    parser.add_argument("--falloff", default="smoothstep")
    add_rounds_argument(parser, 5)
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ops = load_ops()
    masks = make_masks(args.count, args.size)
    outputs = {}

    def pack():
        outputs["pack"] = ops.feather(masks, args.radius, args.direction, args.falloff).numpy()

    def scipy():
        outputs["scipy"] = scipy_feather(masks.numpy(), args.radius, args.direction, args.falloff, ops.feather_profile)

    rounds = interleaved_rounds({"pack": timed(pack), "scipy": timed(scipy)}, args.rounds)
    diff = float(np.abs(outputs["pack"] - outputs["scipy"]).max())
    ratio = rounds.ratio("scipy", "pack")
    shape = [args.count, args.size, args.size]
    print(f"feather {shape} radius={args.radius:g} {args.direction}/{args.falloff}, torch threads="
          f"{torch.get_num_threads()}, {clock_name()}, medians (min, max) over {args.rounds} interleaved rounds")
    for name, label in (("scipy", "scipy EDT x2 + falloff"), ("pack", "pack (radius-limited EDT)")):
        print(f"{label:<28}{rounds.spread(name).text()} s, {1000 * rounds.median(name) / args.count:.1f} ms/mask")
    print(f"speed ratio {ratio.text(2)}x, max abs diff {diff:.3g}")
    print(json.dumps({
        "ratio": round(ratio.median, 3), "ratio_spread": {"ratio": ratio.as_list()}, "max_abs_diff": diff,
        "pack_s": rounds.spread("pack").as_list(), "scipy_s": rounds.spread("scipy").as_list(), "clock": clock_name(),
        "radius": args.radius, "direction": args.direction, "falloff": args.falloff, "shape": shape,
        "threads": torch.get_num_threads(), "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
