"""Benchmark: step time of mask-in-the-loop adapter training with the Sobel term vs without, one run.

Model: a randomly initialised SD1.5-layout UNet (model_channels 32, channel_mult 1/2/4/4, two res
blocks per level, cross-attention in the middle block, context 64) and a fresh standard
T2I-Adapter sized from it, at 128x128 px (16x16 latent), batch 2, CPU. Both variants run the same
``train_local_control`` loop (masked features through MaskedControl, AdamW); rounds alternate
(the first warms up) and the best round counts. CPU time of this process with 1 thread, so the
other load on the machine moves the ratio little. Goal: Sobel / plain <= 1.15x.

Run from the repo root: ``.venv/bin/python benchmarks/train_local.py [--steps 8 --rounds 3]``.
Last stdout line: JSON with the ratio and the final losses.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import boot, pack_import  # noqa: E402

UNET = {
    "model_channels": 32, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [0] * 8, "transformer_depth_output": [0] * 12, "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False,
    "in_channels": 4, "out_channels": 4, "image_size": 32, "context_dim": 64, "use_linear_in_transformer": False,
    "adm_in_channels": None, "num_head_channels": 32, "num_heads": -1,
}
LATENT = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from harness import tiny_models

    loop = pack_import("nodes.sampling.training")
    config = comfy.supported_models.SD15(dict(UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    tiny_models._randomize(model.diffusion_model, 0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    adapter = loop.fresh_adapter(patcher, 0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, LATENT, LATENT, generator=g)
    hints = torch.rand(4, LATENT * 8, LATENT * 8, 3, generator=g)
    masks = torch.zeros(4, LATENT * 8, LATENT * 8)
    masks[:, 16:112, 16:96] = 1.0
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    best = {"sobel": float("inf"), "plain": float("inf")}
    final = {}
    for round_index in range(args.rounds + 1):
        for name, weight in (("plain", 0.0), ("sobel", 1.0)):
            cfg = loop.TrainConfig(steps=args.steps, learning_rate=1e-4, batch_size=2, sobel_weight=weight)
            start = time.process_time()
            result = loop.train_local_control(patcher, adapter, latents, hints, masks, cond, cfg)
            per_step = (time.process_time() - start) / args.steps
            if round_index > 0:
                best[name] = min(best[name], per_step)
            final[name] = {"noise_loss": result.noise_loss[-1], "sobel_loss": result.sobel_loss[-1]}
    ratio = best["sobel"] / best["plain"]
    print(f"{'variant':<10}{'s/step':>10}")
    for name in ("plain", "sobel"):
        print(f"{name:<10}{best[name]:>10.4f}")
    print(f"ratio {ratio:.3f}x (goal <= 1.15x), measured on a loaded shared machine")
    print(json.dumps({"benchmark": "train_local", "plain_s_per_step": best["plain"], "sobel_s_per_step": best["sobel"],
                      "ratio": ratio, "goal": 1.15, "final_losses": final["sobel"],
                      "final_noise_loss_without_sobel": final["plain"]["noise_loss"]}))


if __name__ == "__main__":
    main()
