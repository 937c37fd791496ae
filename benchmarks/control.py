"""Benchmarks for masked control.

1. Annotator: a 16-image batch through lineart (real architecture, random weights saved in the
   controlnet_aux layout) with the pack's cached model vs controlnet_aux's usual per-call path
   (``LineartDetector.from_pretrained(folder)`` on each node run, then one call per image).
2. Masked vs unmasked ControlNet per sampler step on the tiny SD1.5 UNet + ControlNet
   (residual masking; the optional exact_outside mode costs a second model pass by design).

Runs with one torch thread and times process CPU time, so other load on the machine barely moves
the ratios (the same clock as benchmarks/blending.py). Each pair runs in interleaved rounds after a
warm-up round (benchmarks/_common.py); each ratio is the median over the rounds of the ratio within
a round, printed with its min and max.

Run from the repo root: ``.venv/bin/python benchmarks/control.py [--rounds 8]``.
Last stdout line: JSON with both ratios.
"""
import argparse
import json
import sys
import warnings

sys.path.insert(0, "tests")
warnings.filterwarnings("ignore")

import _common  # noqa: E402
from harness import boot, pack_import, tiny_models, workspace  # noqa: E402


def annotator_benchmark(rounds: int):
    import numpy as np
    import torch
    annotators = pack_import("nodes.models.annotators")
    # controlnet_aux's own __init__ fails with mediapipe >= 0.10.30: its submodule through the pack's loader
    lineart = annotators._controlnet_aux("lineart")
    Generator, LineartDetector = lineart.Generator, lineart.LineartDetector
    folder = workspace().models / "annotators" / "lllyasviel" / "Annotators"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model.pth")
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model2.pth")
    images = torch.rand(16, 128, 128, 3)
    frames = (images * 255).round().to(torch.uint8).numpy()

    def ours():
        return annotators.annotate("lineart", images, resolution=128)

    def peer():
        detector = LineartDetector.from_pretrained(str(folder))  # loads both files on every run
        return [detector(frame, detect_resolution=128, image_resolution=128, output_type="np") for frame in frames]

    assert np.asarray(peer()[0]).shape[:2] == (128, 128)
    # the warm-up round's first call fills the cache, as the first queue of a workflow does
    return _common.interleaved_rounds({"ours": _common.timed(ours), "peer": _common.timed(peer)}, rounds)


def sampler_benchmark(rounds: int, steps: int = 6):
    import torch

    import comfy.sample
    import nodes

    mc = pack_import("nodes.sampling.masked_control")
    model, cn = tiny_models.unet("sd15"), tiny_models.controlnet("sd15")
    g = torch.Generator().manual_seed(0)
    pos, neg = [[torch.randn(1, 77, 64, generator=g), {}]], [[torch.randn(1, 77, 64, generator=g), {}]]
    hint = torch.rand(1, 256, 256, 3, generator=g)
    mask = torch.zeros(1, 256, 256)
    mask[:, 40:200, 30:180] = 1.0
    latent = torch.zeros(1, 4, 32, 32)
    noise = torch.randn(latent.shape, generator=g)
    unmasked = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, hint, 1.0, 0.0, 1.0)
    masked = mc.apply_masked_control(pos, neg, cn, hint, mask, 1.0, 0.0, 1.0)

    def run(conds):
        return lambda: comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", conds[0], conds[1], latent,
                                           seed=1, disable_pbar=True)

    return _common.interleaved_rounds({"unmasked": _common.timed(run(unmasked)), "masked": _common.timed(run(masked))},
                                      rounds)


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_rounds_argument(parser, 8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    boot()
    annotators = annotator_benchmark(max(1, args.rounds // 2))  # a peer round reloads both files: seconds
    speedup = annotators.ratio("peer", "ours")
    print(f"lineart x16 @128: pack cached {annotators.median('ours'):.3f}s, controlnet_aux per-call load "
          f"{annotators.median('peer'):.3f}s -> {speedup.text(2)}x faster")
    steps = 6
    sampler = sampler_benchmark(args.rounds, steps)
    overhead = sampler.ratio("masked", "unmasked")
    print(f"tiny SD1.5 + ControlNet @256px, per step: unmasked {sampler.median('unmasked') / steps * 1000:.1f} ms, "
          f"masked {sampler.median('masked') / steps * 1000:.1f} ms -> {overhead.text(4)}x (goal <= 1.05x); "
          f"medians (min, max) over the rounds")
    print(json.dumps({"annotator_speedup_cached_vs_controlnet_aux": round(speedup.median, 3),
                      "masked_vs_unmasked_step_time_ratio": round(overhead.median, 4),
                      "ratio_spread": {"annotator_speedup_cached_vs_controlnet_aux": speedup.as_list(),
                                       "masked_vs_unmasked_step_time_ratio": overhead.as_list()},
                      "rounds": {"annotator": max(1, args.rounds // 2), "sampler": args.rounds}}))


if __name__ == "__main__":
    main()
