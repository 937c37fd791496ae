"""Benchmark: Flux step time with N=4 regions in attention mode against the single prompt and core masked conds.

Model: ComfyUI's own Flux class (``comfy.supported_models.Flux`` -> ``comfy.ldm.flux.model.Flux``) with
Flux.1's real attention shape: 24 heads of 128 channels (hidden 3072), MLP ratio 4, T5 width 4096,
CLIP pooled 768, guidance embedding; random weights and ``--double`` / ``--single`` blocks (1 + 1 by
default: a block costs ~10 s of one CPU thread at this size). Image 1024 x 1024 px (128 x 128
latent, 64 x 64 = 4096 image tokens); every prompt 256 tokens, T5's minimum length in ComfyUI's
Flux tokenizer.

Each run is one euler step at cfg 1 (Flux.1 dev's usual setting: one model call per step), timed
with the process's CPU time on one thread, through ComfyUI's pytorch attention (what NVIDIA users
run; ComfyUI's CPU default, sub-quadratic attention, sizes its chunks from free memory). One
warm-up step first; then ``--repeats`` interleaved rounds of the runs in turn
(``_common.interleaved_rounds``); each ratio is the median over the rounds of the ratio within a
round, printed with its min and max:
- ``single``: the base prompt alone (4096 + 256 tokens);
- ``regions_n4``: Apply Regions, attention mode, 4 quadrant regions with the node's default
  feather (16 px), 4096 + 5 x 256 tokens;
- ``regions_n4_hard``: the same without feather (every token inside one region or none);
- ``core_n4``: core ConditioningSetMask, the base prompt plus 4 masked region
  prompts (N + 1 model passes per step);
- ``single_short`` / ``regions_n4_short``: unpadded prompts (base 64, regions 32 tokens each), as
  the Qwen3 / Mistral / Qwen2.5-VL encoders of Z-Image, Flux.2 dev and Qwen-Image give them (no
  minimum length). T5's 256-token minimum alone makes Flux.1's N=4 sequence 1.235x the single
  prompt's, and every linear layer's cost grows with it.

It also says which attention kernel runs for the region groups, and what the routing costs in
memory at 1024 px and 2048 px: the groups' index and bias tensors against the dense ``S x S``
mask (the fallback for self-attention locality or another mask already in place). Goal:
``regions_n4`` <= 1.25x ``single``. Run with the latest leg's environment:
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
from _common import add_threads_argument, clock, clock_name, interleaved_rounds  # noqa: E402
from harness import boot, pack_import  # noqa: E402

HEADS, HEAD_DIM = 24, 128
TEXT_TOKENS = 256  # T5's minimum length in ComfyUI's Flux.1 tokenizer
SHORT_BASE_TOKENS, SHORT_REGION_TOKENS = 64, 32  # unpadded encoders (Z-Image, Flux.2 dev, Qwen-Image)
T5_WIDTH, POOLED_WIDTH = 4096, 768
REGIONS = 4
DEFAULT_FEATHER = 16  # Apply Regions' default, in pixels


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
    import comfy.sample

    tick = clock()
    latent = torch.zeros(1, 16, *latent_hw)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    start = tick()
    comfy.sample.sample(model, noise, 1, 1.0, "euler", "simple", positive, [], latent, disable_pbar=True, seed=1)
    return tick() - start


def attention_kernel(queries: int, keys: int, masked: bool) -> str:
    """ComfyUI's active attention function and torch's SDPA backend for one group's shapes."""
    import comfy.ldm.modules.attention as attention

    q = torch.zeros(1, HEADS, queries, HEAD_DIM)
    k = torch.zeros(1, HEADS, keys, HEAD_DIM)
    mask = torch.zeros(1, 1, 1, keys) if masked else None
    try:
        from torch.nn.attention import SDPBackend

        backend = SDPBackend(torch._fused_sdp_choice(q, k, k, mask)).name
    except (AttributeError, RuntimeError, ValueError):
        backend = "unknown"
    return f"{attention.optimized_attention.__name__} -> torch SDPA {backend} backend on {q.device.type}"


def routing_memory_mb(pixels: int, feather: int) -> dict[str, float]:
    """MB the regions add per model call at ``pixels``: the groups (float32 bias, int64 indices) vs the dense mask."""
    dit_ops = pack_import("nodes.ops.dit_regions")
    region_ops = pack_import("nodes.ops.regions")
    side = pixels // 16
    text = (REGIONS + 1) * TEXT_TOKENS
    layout = dit_ops.JointLayout(text_len=text, joined_start=0, base_len=TEXT_TOKENS,
                                 region_lens=(TEXT_TOKENS,) * REGIONS, image_len=side * side,
                                 seq_len=text + side * side)
    masks = region_ops.feather_masks(quadrant_masks(pixels), feather)
    grid = region_ops.grid_masks(masks, (pixels // 8, pixels // 8), (side, side))
    groups = dit_ops.joint_attention_groups(dit_ops.item_memberships(grid, layout, 1)[0], [1.0] * REGIONS, layout)
    grouped = sum(g.queries.numel() * 8 + g.keys.numel() * 8 + (0 if g.bias is None else g.bias.numel() * 4)
                  for g in groups)
    return {"groups": len(groups), "grouped_mb": round(grouped / 2 ** 20, 2),
            "dense_mask_mb": round(layout.seq_len ** 2 * 4 / 2 ** 20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--double", type=int, default=1, help="Flux double-stream blocks")
    parser.add_argument("--single", type=int, default=1, help="Flux single-stream blocks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the runs")
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot(pytorch_attention=True)
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
    feathered, joined, _, _ = regional.apply_regions(model, base, [], regions, "attention", DEFAULT_FEATHER)
    hard, hard_joined, _, _ = regional.apply_regions(model, base, [], regions, "attention", 0)
    core = list(base)
    for c, m in zip(region_prompts, masks):
        core += node_helpers.conditioning_set_values(c, {"mask": m, "set_area_to_bounds": False, "mask_strength": 1.0})
    short_base = prompt(10, SHORT_BASE_TOKENS)
    short_regions = [regional.Region(conditioning=prompt(11 + i, SHORT_REGION_TOKENS), mask=m, weight=1.0)
                     for i, m in enumerate(masks)]
    short, short_joined, _, _ = regional.apply_regions(model, short_base, [], short_regions, "attention",
                                                       DEFAULT_FEATHER)

    runs = {"single": (model, base), "regions_n4": (feathered, joined), "regions_n4_hard": (hard, hard_joined),
            "core_n4": (model, core), "single_short": (model, short_base), "regions_n4_short": (short, short_joined)}
    seconds_per_step(model, base, latent_hw)  # warm-up: first-call allocations and kernel choices
    rounds = interleaved_rounds({name: (lambda m=patched, p=positive: seconds_per_step(m, p, latent_hw))
                                 for name, (patched, positive) in runs.items()}, args.repeats, warmup=0)
    seconds = {name: rounds.median(name) for name in runs}
    pairs = {"flux_n4_ratio": ("regions_n4", "single"), "flux_n4_hard_ratio": ("regions_n4_hard", "single"),
             "core_n4_ratio": ("core_n4", "single"), "short_prompts_n4_ratio": ("regions_n4_short", "single_short")}
    ratios = {key: rounds.ratio(*pair) for key, pair in pairs.items()}
    side = args.size // 16
    kernels = {"unmasked": attention_kernel(side * side // REGIONS, side * side + 2 * TEXT_TOKENS, False),
               "row-masked": attention_kernel(side * side // REGIONS, side * side + 2 * TEXT_TOKENS, True)}
    memory = {f"{px}px": routing_memory_mb(px, DEFAULT_FEATHER) for px in (1024, 2048)}

    print(f"Flux-shaped model: {HEADS} heads x {HEAD_DIM}, {args.double} double + {args.single} single blocks, "
          f"{args.size} px ({side * side} image tokens), {TEXT_TOKENS} tokens per prompt, "
          f"{args.threads} thread(s), {clock_name()}, {args.repeats} interleaved rounds after one warm-up step")
    print(f"{'run':18s} {'s/step':>8s}  ratio to its single prompt: median (min, max) over the rounds; s/step per round")
    for name, value in seconds.items():
        reference = "single_short" if name.endswith("_short") else "single"
        spread = " ".join(f"{v:.2f}" for v in rounds.values[name])
        print(f"{name:18s} {value:8.2f}  {rounds.ratio(name, reference).text():28s}  {spread}")
    for name, kernel in kernels.items():
        print(f"attention kernel, {name} region groups: {kernel}")
    for px, cost in memory.items():
        print(f"routing memory per model call at {px} (feather {DEFAULT_FEATHER}): {cost['groups']} groups "
              f"{cost['grouped_mb']} MB vs dense S x S float32 mask {cost['dense_mask_mb']} MB")
    print(json.dumps({**{k: round(v.median, 4) for k, v in ratios.items()},
                      "ratio_spread": {k: v.as_list() for k, v in ratios.items()}, "seconds": seconds,
                      "rounds": rounds.values,
                      "kernels": kernels, "routing_memory": memory, "size": args.size,
                      "blocks": [args.double, args.single], "clock": clock_name(), "goal_flux_n4_ratio": 1.25}))


if __name__ == "__main__":
    main()
