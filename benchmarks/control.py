"""Benchmarks for masked control.

1. Annotator: a 16-image batch through lineart (real architecture, random weights saved in the
   controlnet_aux layout) with the pack's cached model vs controlnet_aux's usual per-call path
   (``LineartDetector.from_pretrained(folder)`` on each node run, then one call per image).
2. Masked vs unmasked ControlNet per sampler step on the tiny SD1.5 UNet + ControlNet
   (residual masking; the optional exact_outside mode costs a second model pass by design).

Runs with one torch thread and times process CPU time, so other load on the machine barely moves
the ratios (the same clock as benchmarks/blending.py).

Last stdout line: JSON with both ratios.
"""
import json
import sys
import time
import warnings

sys.path.insert(0, "tests")
warnings.filterwarnings("ignore")

from harness import boot, pack_import, tiny_models, workspace  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def annotator_benchmark():
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

    ours()  # first load fills the cache, as the first queue of a workflow does
    t_ours = best_of(ours, 1)
    t_peer = best_of(peer, 1)
    assert np.asarray(peer()[0]).shape[:2] == (128, 128)
    return t_ours, t_peer


def sampler_benchmark(steps=6, repeats=3):
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

    run(unmasked)(), run(masked)()
    # interleave to spread machine noise evenly
    t_plain, t_masked = [], []
    for _ in range(repeats):
        t_plain.append(best_of(run(unmasked), 1))
        t_masked.append(best_of(run(masked), 1))
    return min(t_plain) / steps, min(t_masked) / steps


def main():
    import torch

    torch.set_num_threads(1)
    boot()
    t_ours, t_peer = annotator_benchmark()
    print(f"lineart x16 @128: pack cached {t_ours:.3f}s, controlnet_aux per-call load {t_peer:.3f}s "
          f"-> {t_peer / t_ours:.2f}x faster")
    step_plain, step_masked = sampler_benchmark()
    overhead = step_masked / step_plain
    print(f"tiny SD1.5 + ControlNet @256px, per step: unmasked {step_plain * 1000:.1f} ms, "
          f"masked {step_masked * 1000:.1f} ms -> {100 * (overhead - 1):+.1f}% (goal <= +5%)")
    print(json.dumps({"annotator_speedup_cached_vs_controlnet_aux": round(t_peer / t_ours, 3),
                      "masked_vs_unmasked_step_time_ratio": round(overhead, 4)}))


if __name__ == "__main__":
    main()
