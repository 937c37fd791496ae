"""Benchmark: UNet attention mode (grouped routing) against a single prompt, the former dense bias and a per-prompt blend.

Models: randomly initialised UNets of the SD1.5 block layout (model_channels 64 or ``--channels``, mult 1/2/4, a
transformer block at every level, 8 heads, context 768) and of the SDXL block layout (no attention
at the top level, transformer depth 1 / 2 at the lower two, linear projections, 64-channel heads,
context 2048, label embedding), from ComfyUI's own classes. One euler step at cfg 5 (cond and
uncond) at 512 px and 1024 px, for N = 2, 4, 8 vertical band regions (neighbours overlap by
1/16 of the width) plus the base prompt, every prompt 77 tokens:

- ``single``: the base prompt alone (core);
- ``grouped_nN``: the pack's attention mode (queries grouped by the prompts they read, one
  unmasked call of ComfyUI's attention per group);
- ``dense_nN``: the pack's former routing, one call over every prompt's tokens with the dense
  bias (``ops.regions.cross_attention_bias``) as the mask;
- ``blend_nN``: a minimal reimplementation of the peer method (laksjdjf's attention-couple):
  one unmasked attention per prompt over the cond rows, outputs blended by the masks (the base
  prompt everywhere with weight 1), uncond rows plain.

Attention: torch's SDPA (``--attention pytorch``, ComfyUI's choice on GPUs). ComfyUI's CPU
choice, sub-quadratic attention, makes self-attention ~6x slower here, which would shrink every
region overhead in the ratios. SD1.5 at 1024 px (a 16384-token self-attention per top block,
~15 s of CPU per step) runs N = 4 only.

Clock: with ``--threads 1`` (default) the process's CPU time. The machine is shared with other
work; CPU time counts only this process's cycles, so their load barely moves the ratios (wall
time would). Interleaved rounds (every run once per round; a first round of the 512 px runs warms up), median
with min / max per run; the ratios are of medians. Memory per call: the peak of the live tensors the
operations create, the largest and their total, in one cross-attention call at the top attention block (SD1.5
dims: 320 channels, 8 heads; N = 4), counted by a torch dispatch mode: deterministic.

Goals: N = 4 grouped <= 1.03x the single prompt at 512 and 1024 px, below the per-prompt blend,
and no more memory per call than the dense bias. Run:
``.venv/bin/python benchmarks/unet_groups.py [--rounds 3 --threads 1]``.
Last stdout line: JSON with ``unet_attention_n4_ratio_512``, ``unet_attention_n4_ratio_1024``,
``per_prompt_blend_n4_ratio_512`` (SD1.5 layout) and every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_attention_argument, add_threads_argument, attention_name, clock_name, seconds_per_step,  # noqa: E402
                     use_attention)
from harness import boot, pack_import, tiny_models  # noqa: E402

LAYOUTS = {
    "sd15": {
        "model_channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": [1, 1, 1],
        "transformer_depth": [1, 1, 1], "transformer_depth_output": [1, 1, 1, 1, 1, 1],
        "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False,
        "adm_in_channels": None,
    },
    "sdxl": {
        "model_channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": [1, 1, 1],
        "transformer_depth": [0, 1, 2], "transformer_depth_output": [0, 0, 1, 1, 2, 2],
        "transformer_depth_middle": 2, "context_dim": 2048, "use_linear_in_transformer": True,
        "adm_in_channels": 2816,
    },
}
COMMON = {"use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
          "use_temporal_resblock": False, "in_channels": 4, "out_channels": 4, "image_size": 32}
COUNTS = (2, 4, 8)
# SD1.5 at 1024 px: a 16384-token self-attention per top block makes a step ~15 s of CPU; N = 4 only there
COUNTS_AT = {("sd15", 1024): (4,)}
WARM_UP_SIZE = 512  # the warm-up round runs the runs up to this size
TOKENS = 77


def build_model(layout: str, channels: int):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    if layout == "sd15":
        config = sm.SD15({**COMMON, **LAYOUTS[layout], "model_channels": channels})
    else:
        class SDXLLayout(sm.SDXL):
            unet_extra_config = {"num_heads": -1, "num_head_channels": 64}

        config = SDXLLayout({**COMMON, **LAYOUTS[layout], "model_channels": channels, "num_classes": "sequential"})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    tiny_models._randomize(model.diffusion_model, 0)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def prompt(layout: str, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    options = {} if layout == "sd15" else {"pooled_output": torch.randn(1, 1280, generator=gen)}
    return [[torch.randn(1, TOKENS, LAYOUTS[layout]["context_dim"], generator=gen), options]]


def band(index: int, count: int, size: int) -> torch.Tensor:
    """Region ``index`` of ``count`` vertical bands over the width, overlapping its neighbours by size / 16."""
    mask = torch.zeros(1, size, size)
    start, stop = size * index // count, size * (index + 1) // count + size // 16
    mask[:, :, max(0, start - size // 32):min(stop, size)] = 1.0
    return mask


def dense_class():
    """The pack's former attn2 routing: one call over every prompt's tokens with the dense bias as the mask."""
    regional = pack_import("nodes.sampling.regions")
    region_ops = pack_import("nodes.ops.regions")
    attention = pack_import("nodes.sampling.attention")

    class DenseBias(regional.RegionalCrossAttention):
        def plan(self, extra_options, q, context_len, layout, cond_or_uncond, items):
            key = ("dense", regional.latent_hw(extra_options), q.shape, context_len, tuple(cond_or_uncond))
            if key not in self.plans:
                grid = self.grids.get(key[1], attention.token_grid(q.shape[1], extra_options), q.device)
                region = region_ops.cross_attention_bias(grid, self.weights, *layout, context_len, items)
                bias = region.new_zeros((q.shape[0], *region.shape[1:]))
                for chunk, flag in enumerate(cond_or_uncond):
                    if flag == 0:
                        bias[chunk * items:(chunk + 1) * items] = region
                self.plans[key] = bias
            return self.plans[key]

        @staticmethod
        def routed(q, k, v, extra_options, plan):
            return attention.attention(q, k, v, extra_options, mask=plan)

    return DenseBias


class PerPromptBlend:
    """attn2 replace patch of the peer method: each prompt's unmasked attention over the cond rows,
    blended by the prompts' masks on the block's token grid (base prompt: weight 1 everywhere)."""

    def __init__(self, masks: list[torch.Tensor], prompts: int):
        self.masks, self.prompts, self.cache = masks, prompts, {}

    def __call__(self, q, k, v, extra_options):
        attention = pack_import("nodes.sampling.attention")
        region_ops = pack_import("nodes.ops.regions")
        if k.shape[1] != self.prompts * TOKENS:  # the uncond call (its own 77 tokens)
            return attention.attention(q, k, v, extra_options)
        shape = extra_options["original_shape"]
        grid = attention.token_grid(q.shape[1], extra_options)
        key = (grid, tuple(shape[-2:]))
        if key not in self.cache:
            masks = region_ops.grid_masks(self.masks, tuple(shape[-2:]), grid)
            weights = torch.stack([torch.ones(grid[0] * grid[1])] + [m.flatten() for m in masks])
            self.cache[key] = (weights / weights.sum(0)).unsqueeze(-1)  # [prompts, tokens, 1]
        weights = self.cache[key]
        out = None
        for index in range(self.prompts):
            span = slice(index * TOKENS, (index + 1) * TOKENS)
            part = attention.attention(q, k[:, span], v[:, span], extra_options) * weights[index]
            out = part if out is None else out + part
        return out


def per_prompt_blend(model, positive, masks):
    """The peer's way: the region prompts joined to the base prompt, blended per prompt in every cross-attention."""
    attention = pack_import("nodes.sampling.attention")
    joined = [[torch.cat([positive[0][0]] + [p[0][0] for p, _ in masks], dim=1), positive[0][1]]]
    out = model.clone()
    patch = PerPromptBlend([m for _, m in masks], len(masks) + 1)
    for key in attention.attn1_block_keys(out):
        out.set_model_attn2_replace(patch, *key)
    return out, joined


class Allocations(TorchDispatchMode):
    """Peak bytes of the live tensors the operations create (new storages only: views are free;
    freed when the tensor is collected), their total, and the largest; deterministic: no allocator, no RSS."""

    def __init__(self):
        super().__init__()
        self.largest = self.total = self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in (*args, *(kwargs or {}).values())
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() in inputs or storage.data_ptr() in self.seen:
                    continue
                self.seen.add(storage.data_ptr())
                size = storage.nbytes()
                self.largest, self.total, self.live = max(self.largest, size), self.total + size, self.live + size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, size)
        return out


def memory_per_call(size: int, count: int = 4) -> dict[str, dict[str, float]]:
    """MB per cross-attention call at the top attention block of SD1.5 (320 channels, 8 heads): the
    grouped routing, the dense bias and the per-prompt blend, cond row only, plans already built."""
    regional = pack_import("nodes.sampling.regions")
    side = size // 8
    masks = [band(i, count, size) for i in range(count)]
    context = (count + 1) * TOKENS
    options = {"cond_or_uncond": [0], "original_shape": [1, 4, side, side], "n_heads": 8, "dim_head": 40}
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, side * side, 320, generator=gen)
    k, v = (torch.randn(1, context, 320, generator=gen) for _ in range(2))
    layouts = {context: (TOKENS, (TOKENS,) * count)}
    patches = {"grouped": regional.RegionalCrossAttention(masks, [1.0] * count, layouts),
               "dense": dense_class()(masks, [1.0] * count, layouts),
               "blend": PerPromptBlend(masks, count + 1)}
    result = {}
    for name, patch in patches.items():
        patch(q, k, v, options)  # builds and caches the plan / bias (kept for the run: counted apart)
        with Allocations() as seen:
            patch(q, k, v, options)
        kept = sum(t.numel() * t.element_size() for t in getattr(patch, "plans", {}).values()
                   if isinstance(t, torch.Tensor))
        result[name] = {"peak_mb": round(seen.peak / 2 ** 20, 2), "largest_mb": round(seen.largest / 2 ** 20, 2),
                        "allocated_mb": round(seen.total / 2 ** 20, 2),
                        "cached_bias_mb": round(kept / 2 ** 20, 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--layouts", default="sd15,sdxl")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)), help="region counts N")
    parser.add_argument("--channels", type=int, default=64,
                        help="model_channels (SD1.5 and SDXL have 320: slower, and the region prompts' "
                             "projections, which grow with the width, weigh less against the convolutions, "
                             "which grow with its square)")
    add_attention_argument(parser, "pytorch")
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()
    use_attention(args.attention)
    regional = pack_import("nodes.sampling.regions")
    dense = dense_class()
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = tuple(int(c) for c in args.counts.split(","))

    runs = {}
    for layout in args.layouts.split(","):
        model = build_model(layout, args.channels)
        positive, negative = prompt(layout, 0), prompt(layout, 1)
        for size in sizes:
            runs[f"{layout}_{size}_single"] = (model, positive, negative, size)
            for count in (c for c in COUNTS_AT.get((layout, size), COUNTS) if c in counts):
                regions = [regional.Region(conditioning=prompt(layout, 10 + i), mask=band(i, count, size))
                           for i in range(count)]
                m, p, n, _ = regional.apply_regions(model, positive, negative, regions, "attention", 0)
                runs[f"{layout}_{size}_grouped_n{count}"] = (m, p, n, size)
                original = regional.RegionalCrossAttention
                regional.RegionalCrossAttention = dense
                try:
                    m, p, n, _ = regional.apply_regions(model, positive, negative, regions, "attention", 0)
                finally:
                    regional.RegionalCrossAttention = original
                runs[f"{layout}_{size}_dense_n{count}"] = (m, p, n, size)
                m, p = per_prompt_blend(model, positive, [(r.conditioning, r.mask) for r in regions])
                runs[f"{layout}_{size}_blend_n{count}"] = (m, p, negative, size)

    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.rounds + 1):
        for name, (m, p, n, size) in runs.items():
            if not round_ and size > WARM_UP_SIZE:
                continue
            noise = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(1))
            value = seconds_per_step(m, p, n, noise, 1)
            if round_:
                samples[name].append(value)
        print(f"round {round_} done", file=sys.stderr, flush=True)
    median = {name: statistics.median(values) for name, values in samples.items()}

    print(f"{'run':26s} {'s/step med':>10s} {'min':>8s} {'max':>8s} {'vs single':>9s}")
    ratios = {}
    for name, values in samples.items():
        single = name.rsplit("_", 2)[0] + "_single" if not name.endswith("_single") else name
        ratio = median[name] / median[single]
        ratios[name] = round(ratio, 4)
        print(f"{name:26s} {median[name]:10.3f} {min(values):8.3f} {max(values):8.3f} {ratio:9.3f}")
    memory = {size: memory_per_call(size) for size in sizes}
    for size, figures in memory.items():
        print(f"memory per call, SD1.5 top block, {size} px, N=4: " +
              "; ".join(f"{name} peak {f['peak_mb']} MB, largest {f['largest_mb']} MB, allocated {f['allocated_mb']} MB, "
                        f"cached bias {f['cached_bias_mb']} MB" for name, f in figures.items()))

    def figure(name: str) -> float | None:
        return ratios.get(name)

    print(json.dumps({
        "unet_attention_n4_ratio_512": figure("sd15_512_grouped_n4"),
        "unet_attention_n4_ratio_1024": figure("sd15_1024_grouped_n4"),
        "per_prompt_blend_n4_ratio_512": figure("sd15_512_blend_n4"),
        "former_dense_n4_ratio_512": figure("sd15_512_dense_n4"),
        "ratios_vs_single": ratios,
        "seconds_per_step": {name: {"median": round(median[name], 4), "min": round(min(v), 4),
                                    "max": round(max(v), 4)} for name, v in samples.items()},
        "memory_per_call_mb": memory,
        "goals": {"unet_attention_n4_ratio_512": 1.03, "unet_attention_n4_ratio_1024": 1.03,
                  "below": "per_prompt_blend_n4_ratio_512"},
        "config": {"layouts": LAYOUTS, "model_channels": args.channels, "sampler": "euler", "cfg": 5.0, "steps": 1, "rounds": args.rounds,
                   "clock": clock_name(), "threads": torch.get_num_threads(),
                   "attention": attention_name()},
    }))


if __name__ == "__main__":
    main()
