"""Benchmark: per-step cost of the blending model patches against the plain model, in one run.

Model: a mid-size randomly initialised SD1.5-architecture UNet built from ComfyUI's own classes
(model_channels 64, channel_mult 1/2/4, one res block and one transformer block per level,
8 heads, context 768), sampled at 128x128 px (16x16 latent, 256 tokens in the top attention
level) with ``comfy.sample.sample`` (euler, cfg 5, so cond + uncond rows per step). At this size
the UNet dominates the step, as it does with real checkpoints. Measured per step: interleaved rounds of
``--steps``-step samples (``benchmarks/_common.interleaved_rounds``: plain and patched alternate; the
first round warms up); each ratio is patched / plain within a round, median over the rounds, printed
with its min and max; with ``--threads 1`` (default) the clock is the process's CPU time, so other
load on the machine barely moves the ratios.

- SCPreserveRegion (hard 32x32 px square, 16 px feather), batch 1 — goal <= 1.03x
- SCReferenceAttention (strength 1, style fidelity 0.5), batch 1 — goal <= 1.6x
- SCCrossFrameAttention (anchor frame 0) at 2 and 8 frames, against the plain model at the same batch

Run from the repo root: ``.venv/bin/python benchmarks/blending.py [--steps 2 --rounds 12 --threads 1]``
(``--attention pytorch`` to measure with another of ComfyUI's attention functions).
Boots ComfyUI in-process (CPU unless a GPU is present). Last stdout line: JSON with the ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_attention_argument, add_rounds_argument, add_threads_argument, attention_name, clock_name,  # noqa: E402
                     interleaved_rounds, seconds_per_step, use_attention)
from harness import boot, pack_import  # noqa: E402

UNET = {
    "model_channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": [1, 1, 1],
    "transformer_depth": [1, 1, 1], "transformer_depth_output": [1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False,
    "in_channels": 4, "out_channels": 4, "image_size": 32, "context_dim": 768, "use_linear_in_transformer": False,
    "adm_in_channels": None,
}
LATENT = 16  # 128 px


def build_model():
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = sm.SD15(dict(UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) / param[0].numel() ** 0.5)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def per_step(model, batch: int, steps: int) -> float:
    """Seconds per step of a ``batch``-latent sample with random prompts (the same ones every call)."""
    gen = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 77, 768, generator=gen), {}]]
    negative = [[torch.randn(1, 77, 768, generator=gen), {}]]
    noise = torch.randn((batch, 4, LATENT, LATENT), generator=gen)
    return seconds_per_step(model, positive, negative, noise, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    add_rounds_argument(parser, 12)
    add_threads_argument(parser)
    add_attention_argument(parser, "default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()
    use_attention(args.attention)
    preserve = pack_import("nodes.sampling.preserve")
    reference = pack_import("nodes.sampling.reference_attention")
    cross_frame = pack_import("nodes.sampling.cross_frame")
    model = build_model()
    size = LATENT * 8
    mask = torch.zeros(1, size, size)
    mask[:, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    source = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(2))

    runs = {
        "plain_b1": (model, 1),
        "preserve_b1": (preserve.patch_preserve_region(model, source, mask, 16.0, 0.0, 1.0, "none"), 1),
        "reference_b1": (reference.patch_reference_attention(model, source, 1.0, 0.5, None, 0.0, 1.0), 1),
        "plain_b2": (model, 2),
        "cross_frame_b2": (cross_frame.patch_cross_frame(model, "0", 1.0), 2),
        "plain_b8": (model, 8),
        "cross_frame_b8": (cross_frame.patch_cross_frame(model, "0", 1.0), 8),
    }
    rounds = interleaved_rounds({name: (lambda m=patched, b=batch: per_step(m, b, args.steps))
                                 for name, (patched, batch) in runs.items()}, args.rounds)
    measured = rounds.report({"preserve_region": ("preserve_b1", "plain_b1"),
                              "reference_attention": ("reference_b1", "plain_b1"),
                              "cross_frame_2": ("cross_frame_b2", "plain_b2"),
                              "cross_frame_8": ("cross_frame_b8", "plain_b8")}, unit="ms_per_step")
    print(json.dumps({
        **measured,
        "goals": {"preserve_region": 1.03, "reference_attention": 1.6},
        "config": {"unet": "SD1.5 arch, model_channels 64, mult 1/2/4, 8 heads, ctx 768", "latent": [LATENT, LATENT],
                   "sampler": "euler", "cfg": 5.0, "steps": args.steps,
                   "clock": clock_name(),
                   "device": str(model.load_device), "threads": torch.get_num_threads(),
                   "attention": attention_name()},
    }))


if __name__ == "__main__":
    main()
