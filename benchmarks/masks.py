"""Benchmark: the pack's feather against the scipy way peer packs feather on CPU.

Feathers 16 different realistic 2048x2048 masks (ellipses, polygons, blobby unions, holes) with
``nodes/ops/masks.py`` and with ``scipy.ndimage.distance_transform_edt`` on the mask and its
inverse followed by the same falloff, then prints a table and, as the last line, a JSON object
with the speed ratio (scipy time / pack time) and the max absolute difference.

Run from the repo root: ``.venv/bin/python benchmarks/masks.py [--size 2048 --count 16 --radius 32]``.
The ops are loaded without ComfyUI (they must not import it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

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
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the best time counts")
    args = parser.parse_args()
    ops = load_ops()
    masks = make_masks(args.count, args.size)
    ops.feather(masks[:1, :256, :256], args.radius, args.direction, args.falloff)  # warm-up

    # Interleaved repeats, best time of each: the fair reading on a machine with other load.
    # CPU seconds are reported too: on a loaded machine they move less than wall time.
    t_pack = t_scipy = c_pack = c_scipy = math.inf
    for _ in range(args.repeats):
        start, cpu = time.perf_counter(), time.process_time()
        ours = ops.feather(masks, args.radius, args.direction, args.falloff)
        t_pack, c_pack = min(t_pack, time.perf_counter() - start), min(c_pack, time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        ref = scipy_feather(masks.numpy(), args.radius, args.direction, args.falloff, ops.feather_profile)
        t_scipy, c_scipy = min(t_scipy, time.perf_counter() - start), min(c_scipy, time.process_time() - cpu)

    diff = float(np.abs(ours.numpy() - ref).max())
    ratio = t_scipy / t_pack
    shape = [args.count, args.size, args.size]
    print(f"feather {shape} radius={args.radius:g} {args.direction}/{args.falloff}, torch threads={torch.get_num_threads()}")
    print(f"{'method':<28}{'seconds':>10}{'ms/mask':>10}{'cpu s':>10}")
    print(f"{'scipy EDT x2 + falloff':<28}{t_scipy:>10.3f}{1000 * t_scipy / args.count:>10.1f}{c_scipy:>10.3f}")
    print(f"{'pack (radius-limited EDT)':<28}{t_pack:>10.3f}{1000 * t_pack / args.count:>10.1f}{c_pack:>10.3f}")
    print(f"speed ratio {ratio:.2f}x, max abs diff {diff:.3g}")
    print(json.dumps({
        "ratio": round(ratio, 3), "max_abs_diff": diff, "pack_s": round(t_pack, 4), "scipy_s": round(t_scipy, 4),
        "pack_cpu_s": round(c_pack, 4), "scipy_cpu_s": round(c_scipy, 4),
        "radius": args.radius, "direction": args.direction, "falloff": args.falloff, "shape": shape,
        "threads": torch.get_num_threads(), "repeats": args.repeats,
    }))


if __name__ == "__main__":
    main()
