"""Benchmark: Stitch Edit Back against a plain crop-and-stitch on a synthetic drift set, and its cost.

Drift set: the three example photos (astronaut, coffee cup, cat), one object box each, cropped by Crop For
Edit for Qwen-Image-Edit (about 1024 x 1024 crops), and per photo five known drifts of the kind edit models
make (shifts up to 32 crop px, zooms of +-5 %, rotations of +-1 degree), with the masked part repainted and
noise (sigma 0.02) on top (tests/harness/tiny_edit.edit_with_drift). For each case:
- alignment error: the largest distance, over the crop, between where the found transform and the true one
  put a pixel (``aligned_px_error``); a plain stitch uses no transform, so it is off by the drift itself
  (``plain_px_error``); both the worst case over the set, in crop pixels;
- ``outside_identical``: the share of pixels outside the grown mask (stitch weight 0) that are the source's
  bit for bit, over all cases;
- seam score: the mean absolute difference (0..255 levels) to the drift-free edit in the feathered band just
  outside the mask, with registration and with the plain stitch.

Cost: registration + stitch (Stitch Edit Back's whole work) for one region on pictures of 1024^2 and 2048^2
(the crop is about 1024^2 both times: the model's size), process CPU time on one torch thread, interleaved
rounds, min / median / max; and, as the scale, one sampler step of the tiny Qwen-Image-shaped model
(tests/harness/tiny_dit.py, 2 blocks of 2 x 16 heads) on a 1024^2 crop with its reference latent (ComfyUI
0.33 only: null on an older ComfyUI). The machine's load average is printed with the numbers.

Last stdout line: JSON with ``aligned_px_error``, ``plain_px_error``, ``outside_identical``,
``stitch_ms_1024`` (the median), ``stitch_ms_2048``, the seam scores and ``qwen_tiny_step_ms``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_threads_argument, clock_name  # noqa: E402
from harness import boot, pack_import, tiny_edit  # noqa: E402
from harness.tiny_edit import box_mask, example_photo as photo  # noqa: E402

DRIFTS = [(32, -32, 1.0, 0.0), (-32, 20, 1.05, 1.0), (18, 32, 0.95, -1.0), (-7, -11, 1.03, 0.5), (25, 5, 0.97, -0.6)]
BOXES = {"astronaut.jpg": (180, 60, 300, 200), "coffee_cup.jpg": (200, 100, 400, 250), "chelsea_cat.jpg": (120, 80, 260, 220)}
FEATHER = 16


def drift_set(ops) -> dict:
    aligned, plain, identical, total, seam_ours, seam_plain = [], [], 0, 0, [], []
    for name, box in BOXES.items():
        picture = photo(name)
        mask = box_mask(*picture.shape[1:3], box)
        stitch = ops.crop_for_edit(picture, mask, "qwen_image_edit", margin=96)
        crop_h, crop_w = stitch.crops.shape[1:3]
        truth = tiny_edit.edit_with_drift(picture, stitch, 0, ops.IDENTITY, noise=0.0).unsqueeze(0)
        target = ops.stitch_edit(stitch, truth, register_drift=False, feather_px=FEATHER)
        band = (target.weight[0] > 0) & (target.weight[0] < 1) & (mask[0] < 0.5)
        for seed, drift in enumerate(DRIFTS):
            true = tiny_edit.drift_matrix(*drift)
            edited = tiny_edit.edit_with_drift(picture, stitch, 0, true, seed=seed).unsqueeze(0)
            ours = ops.stitch_edit(stitch, edited, feather_px=FEATHER)
            flat = ops.stitch_edit(stitch, edited, register_drift=False, feather_px=FEATHER)
            aligned.append(tiny_edit.corner_error(ours.registrations[0].matrix, true, crop_h, crop_w))
            plain.append(tiny_edit.corner_error(ops.IDENTITY, true, crop_h, crop_w))
            for result in (ours, flat):
                kept = result.weight[0] <= 0
                identical += int((result.image[0][kept] == picture[0][kept]).all(dim=-1).sum())
                total += int(kept.sum())
            seam_ours.append(float((ours.image[0] - target.image[0]).abs()[band].mean()) * 255)
            seam_plain.append(float((flat.image[0] - target.image[0]).abs()[band].mean()) * 255)
    return {"aligned": aligned, "plain": plain, "outside_identical": identical / total,
            "seam_ours": statistics.mean(seam_ours), "seam_plain": statistics.mean(seam_plain)}


def stitch_case(ops, size: int):
    picture = ops.resize_image(photo("astronaut.jpg"), size, size)
    quarter = size // 4
    mask = box_mask(size, size, (3 * size // 8, 3 * size // 8, 3 * size // 8 + quarter, 3 * size // 8 + quarter))
    stitch = ops.crop_for_edit(picture, mask, "qwen_image_edit", margin=size // 8)
    edited = tiny_edit.edit_with_drift(picture, stitch, 0, tiny_edit.drift_matrix(-20, 12, 1.03, 0.5)).unsqueeze(0)
    return stitch, edited


def qwen_tiny_step_ms(crop_h: int, crop_w: int, repeats: int) -> float | None:
    """One euler step of the tiny Qwen-Image model on a crop-sized latent with the crop as reference latent."""
    from harness import tiny_dit

    if tiny_dit.unavailable_reason() is not None:
        return None
    import comfy.sample

    model = tiny_dit.model("qwen_image")
    latent = torch.zeros(1, 16, 1, crop_h // 8, crop_w // 8)
    reference = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    positive = [[tiny_dit.text_embedding("edit"), {"reference_latents": [reference]}]]
    negative = [[tiny_dit.text_embedding(""), {"reference_latents": [reference]}]]
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
        start = time.process_time()
        comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, negative, latent, disable_pbar=True, seed=1)
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()
    ops = pack_import("nodes.ops.editing")

    drift = drift_set(ops)
    cases = {size: stitch_case(ops, size) for size in (1024, 2048)}
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    times: dict[int, list[float]] = {size: [] for size in cases}
    for size, (stitch, edited) in cases.items():  # warm-up
        ops.stitch_edit(stitch, edited)
    for _ in range(args.repeats):
        for size, (stitch, edited) in cases.items():
            start = clock()
            result = ops.stitch_edit(stitch, edited)
            times[size].append((clock() - start) * 1000)
            assert result.registrations[0].applied
    crop_h, crop_w = cases[1024][0].crops.shape[1:3]
    step = qwen_tiny_step_ms(crop_h, crop_w, max(1, args.repeats // 2))

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), clock: {clock_name()}")
    print(f"drift set: {len(drift['aligned'])} cases ({len(BOXES)} photos x {len(DRIFTS)} drifts), crops "
          f"about 1024^2 (Qwen-Image-Edit)")
    print(f"  alignment error, crop px   registered: max {max(drift['aligned']):.3f}  mean "
          f"{statistics.mean(drift['aligned']):.3f}   plain stitch: max {max(drift['plain']):.1f}  mean "
          f"{statistics.mean(drift['plain']):.1f}")
    print(f"  outside the grown mask bit-identical: {drift['outside_identical'] * 100:.4f} %")
    print(f"  seam score (mean |stitched - drift-free| in the feather band, 0..255): registered "
          f"{drift['seam_ours']:.2f}  plain {drift['seam_plain']:.2f}")
    for size, values in times.items():
        print(f"registration + stitch, {size}^2 picture, crop {tuple(cases[size][0].crops.shape[1:3])}: "
              f"min {min(values):.1f}  median {statistics.median(values):.1f}  max {max(values):.1f} ms")
    if step is not None:
        print(f"scale: one euler step of the tiny Qwen-Image model on the {crop_h}x{crop_w} crop + reference: "
              f"{step:.1f} ms (stitch / step = {statistics.median(times[1024]) / step:.2f})")
    else:
        print("scale: the tiny Qwen-Image model needs ComfyUI 0.33 (run with the latest leg)")
    print(json.dumps({
        "aligned_px_error": round(max(drift["aligned"]), 4), "aligned_px_error_mean": round(statistics.mean(drift["aligned"]), 4),
        "plain_px_error": round(max(drift["plain"]), 3), "plain_px_error_mean": round(statistics.mean(drift["plain"]), 3),
        "outside_identical": drift["outside_identical"],
        "seam_registered": round(drift["seam_ours"], 3), "seam_plain": round(drift["seam_plain"], 3),
        "stitch_ms_1024": round(statistics.median(times[1024]), 2), "stitch_ms_1024_min": round(min(times[1024]), 2),
        "stitch_ms_1024_max": round(max(times[1024]), 2), "stitch_ms_2048": round(statistics.median(times[2048]), 2),
        "qwen_tiny_step_ms": None if step is None else round(step, 2),
        "load_average": round(load[0], 2), "clock": clock_name(),
        "goals": {"aligned_px_error": {"max": 0.5}, "outside_identical": {"min": 1.0}, "stitch_ms_1024": {"max": 100}},
    }))


if __name__ == "__main__":
    main()
