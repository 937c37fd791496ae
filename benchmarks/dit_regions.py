"""Benchmark: Flux step time with N=4 regions in attention mode against the single prompt and core masked conds.

Model: ComfyUI's own Flux class (``comfy.supported_models.Flux`` -> ``comfy.ldm.flux.model.Flux``) with
Flux.1's real attention shape: 24 heads of 128 channels (hidden 3072), MLP ratio 4, T5 width 4096,
CLIP pooled 768, guidance embedding; random weights and ``--double`` / ``--single`` blocks (1 + 1 by
default: a block costs ~10 s of one CPU thread at this size). Image 1024 x 1024 px (128 x 128
latent, 64 x 64 = 4096 image tokens); every prompt 256 tokens, T5's minimum length in ComfyUI's
Flux tokenizer.

Each run is one euler step at cfg 1 (Flux.1 dev's usual setting: one model call per step), timed
with the process's CPU time on one thread:
- ``single``: the base prompt alone (4096 + 256 tokens);
- ``regions_n4``: Apply Regions, attention mode, 4 regions (4096 + 5 x 256 tokens, joint attention
  biased by a dense ``[1, 1, S, S]`` mask);
- ``core_n4``: core ConditioningSetMask, the base prompt plus 4 masked region prompts (N + 1
  model passes per step);
- ``single_short`` / ``regions_n4_short``: the same with unpadded prompts (base 64, regions 32
  tokens each), as the Qwen3 / Mistral / Qwen2.5-VL encoders of Z-Image, Flux.2 dev and Qwen-Image
  give them (no minimum length). T5's 256-token minimum alone makes Flux.1's N=4 sequence 1.235x
  the single prompt's, and joint attention grows with its square.

It also says which attention kernel runs with the mask (ComfyUI's attention function and
torch's SDPA backend choice for these shapes) and what the mask costs in memory at 1024 px and
2048 px. Goal: ``regions_n4`` <= 1.25x ``single``. Run with the latest leg's environment:
``COMFYUI_PATH=.comfyui-latest .venv-latest/bin/python benchmarks/dit_regions.py``.
Last stdout line: JSON with ``flux_n4_ratio``, ``core_n4_ratio`` and ``short_prompts_n4_ratio``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_threads_argument, clock_name  # noqa: E402
from harness import boot, pack_import  # noqa: E402

HEADS, HEAD_DIM = 24, 128
TEXT_TOKENS = 256  # T5's minimum length in ComfyUI's Flux.1 tokenizer
SHORT_BASE_TOKENS, SHORT_REGION_TOKENS = 64, 32  # unpadded encoders (Z-Image, Flux.2 dev, Qwen-Image)
T5_WIDTH, POOLED_WIDTH = 4096, 768
REGIONS = 4


def build_flux(double: int, single: int):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm
    from harness.tiny_models import _randomize

    config = sm.Flux({"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": POOLED_WIDTH,
                      "context_in_dim": T5_WIDTH, "hidden_size": HEADS * HEAD_DIM, "mlp_ratio": 4.0,
                      "num_heads": HEADS, "depth": double, "depth_single_blocks": single, "axes_dim": [16, 56, 56],
                      "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
                      "txt_ids_dims": []})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    _randomize(model.diffusion_model, 0)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def prompt(seed: int, tokens: int = TEXT_TOKENS) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, T5_WIDTH, generator=g),
             {"pooled_output": torch.randn(1, POOLED_WIDTH, generator=g), "guidance": 3.5}]]


def quadrant_masks(size: int) -> list[torch.Tensor]:
    masks = []
    half = size // 2
    for top, left in ((0, 0), (0, half), (half, 0), (half, half)):
        mask = torch.zeros(1, size, size)
        mask[:, top:top + half, left:left + half] = 1.0
        masks.append(mask)
    return masks


def seconds_per_step(model, positive: list, latent_hw: tuple[int, int]) -> float:
    import time

    import comfy.sample

    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    latent = torch.zeros(1, 16, *latent_hw)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    start = clock()
    comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, [], latent, disable_pbar=True, seed=1)
    return clock() - start


def attention_kernel(seq: int) -> str:
    """ComfyUI's active attention function and torch's SDPA backend for these shapes with a float mask."""
    import comfy.ldm.modules.attention as attention

    q = torch.zeros(1, HEADS, seq, HEAD_DIM)
    mask = torch.zeros(1, 1, seq, seq)
    try:
        from torch.nn.attention import SDPBackend

        backend = SDPBackend(torch._fused_sdp_choice(q, q, q, mask)).name
    except (AttributeError, RuntimeError, ValueError):
        backend = "unknown"
    return f"{attention.optimized_attention.__name__} -> torch SDPA {backend} backend on {q.device.type}"


def mask_bytes(pixels: int, regions: int, bytes_per_value: int) -> int:
    seq = (pixels // 16) ** 2 + (regions + 1) * TEXT_TOKENS
    return seq * seq * bytes_per_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--double", type=int, default=1, help="Flux double-stream blocks")
    parser.add_argument("--single", type=int, default=1, help="Flux single-stream blocks")
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()
    compat = pack_import("nodes.sampling.compat")
    reason = compat.dit_hook_missing("flux")
    if reason is not None:
        raise SystemExit(f"dit_regions needs ComfyUI 0.33 (run it with .venv-latest and COMFYUI_PATH): {reason}")
    regional = pack_import("nodes.sampling.regions")
    import node_helpers

    model = build_flux(args.double, args.single)
    latent_hw = (args.size // 8, args.size // 8)
    base = prompt(0)
    region_prompts = [prompt(1 + i) for i in range(REGIONS)]
    masks = quadrant_masks(args.size)
    regions = [regional.Region(conditioning=c, mask=m, weight=1.0) for c, m in zip(region_prompts, masks)]
    patched, joined, _, _ = regional.apply_regions(model, base, [], regions, "attention", 0)
    core = list(base)
    for c, m in zip(region_prompts, masks):
        core += node_helpers.conditioning_set_values(c, {"mask": m, "set_area_to_bounds": False, "mask_strength": 1.0})

    short_base = prompt(10, SHORT_BASE_TOKENS)
    short_regions = [regional.Region(conditioning=prompt(11 + i, SHORT_REGION_TOKENS), mask=m, weight=1.0)
                     for i, m in enumerate(masks)]
    short_patched, short_joined, _, _ = regional.apply_regions(model, short_base, [], short_regions, "attention", 0)

    seconds = {"single": seconds_per_step(model, base, latent_hw),
               "regions_n4": seconds_per_step(patched, joined, latent_hw),
               "core_n4": seconds_per_step(model, core, latent_hw),
               "single_short": seconds_per_step(model, short_base, latent_hw),
               "regions_n4_short": seconds_per_step(short_patched, short_joined, latent_hw)}
    ratios = {"flux_n4_ratio": seconds["regions_n4"] / seconds["single"],
              "core_n4_ratio": seconds["core_n4"] / seconds["single"],
              "short_prompts_n4_ratio": seconds["regions_n4_short"] / seconds["single_short"]}
    seq = latent_hw[0] * latent_hw[1] // 4 + (REGIONS + 1) * TEXT_TOKENS
    kernel = attention_kernel(seq)
    memory = {f"{px}px_{name}_mb": round(mask_bytes(px, REGIONS, size) / 2 ** 20, 1)
              for px in (1024, 2048) for name, size in (("fp32", 4), ("bf16", 2))}

    print(f"Flux-shaped model: {HEADS} heads x {HEAD_DIM}, {args.double} double + {args.single} single blocks, "
          f"{args.size} px ({latent_hw[0] * latent_hw[1] // 4} image tokens), {TEXT_TOKENS} tokens per prompt, "
          f"{args.threads} thread(s), {clock_name()}")
    print(f"{'run':16s} {'s/step':>8s} {'ratio':>7s}  (each against its single prompt)")
    for name, value in seconds.items():
        reference = seconds["single_short" if name.endswith("_short") else "single"]
        print(f"{name:16s} {value:8.2f} {value / reference:7.3f}")
    print(f"attention kernel with the region mask: {kernel}")
    print("region mask [1, 1, S, S] (broadcast over heads and blocks, one per model call): "
          + ", ".join(f"{k} {v}" for k, v in memory.items()))
    print(json.dumps({**{k: round(v, 4) for k, v in ratios.items()}, "seconds": seconds, "kernel": kernel,
                      "mask_memory_mb": memory, "size": args.size, "blocks": [args.double, args.single],
                      "clock": clock_name(), "goal_flux_n4_ratio": 1.25}))


if __name__ == "__main__":
    main()
