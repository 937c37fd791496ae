"""Benchmark: sampler step time with N regions, attention and instances mode against core masked conds, in one run.

Model: the mid-size randomly initialised SD1.5-architecture UNet of ``benchmarks/blending.py``
(model_channels 64, channel_mult 1/2/4, 8 heads, context 768; 16x16 latent = 128 px) and a
ControlNet of the same shape, both from ComfyUI's own classes. At this size the UNet dominates the
step, as it does with real checkpoints. Each run is a ``--steps``-step euler sample at cfg 5
(cond + uncond), interleaved rounds (``_common.interleaved_rounds``; the first warms up); each ratio is
the median over the rounds of the ratio within a round, printed with its min and max; with
``--threads 1`` the clock is process CPU time, so other load on the machine barely moves the ratios.

Rows: the single prompt; attention mode with N = 1, 2, 4, 8 regions at the 16x16 latent and N = 2, 4,
8 at 64x64 (512 px, SD1.5's own size; the goal figure): at 16x16 the joined text tokens' key/value
projections and attention, which every attention-couple method pays, weigh as much as the tiny
image part (a plain prompt of 385 tokens costs 1.47x one of 77 there, 1.19x at 32x32, ~1.0x at 64x64);
instances mode with a
ControlNet per region; core ``ConditioningSetMask`` per region prompt plus a core ControlNet per
region cond (N + 1 UNet calls per step, N ControlNet calls), for N = 1, 2, 3, 4, 8.

Goals: attention at N=4 <= 1.15x the single prompt; instances at N=3 <= core's time (on a GPU the
one batched call should reach <= 0.7x; on a CPU the work is the same rows, so the gain is only the
per-call overhead). Run: ``.venv/bin/python benchmarks/regions.py [--steps 2 --repeats 3 --threads 1]``.
Last stdout line: JSON with ``attention_n4_ratio`` and ``instances_n3_vs_core``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from blending import LATENT, UNET, build_model  # noqa: E402
from _common import add_threads_argument, clock_name, interleaved_rounds, seconds_per_step  # noqa: E402
from harness import boot, pack_import, tiny_models  # noqa: E402

ATTENTION_N = (1, 2, 4, 8)
INSTANCE_N = (1, 2, 3, 4, 8)
SIZE = LATENT * 8
BIG_LATENT = 64  # 512 px, the size SD1.5 is used at: attention mode's goal is measured here (1 step per sample)


def build_controlnet():
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops

    config = {**{k: v for k, v in UNET.items() if k != "adm_in_channels"}, "num_heads": 8, "num_head_channels": -1}
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.manual_cast, dtype=torch.float32,
                                     device="cpu", adm_in_channels=None, **config)
    tiny_models._randomize(net, 3)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device())


def prompt(seed: int) -> list:
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


def band(index: int, count: int) -> torch.Tensor:
    """Region ``index`` of ``count``: a vertical band over 7/8 of the width, overlapping its neighbours."""
    mask = torch.zeros(1, SIZE, SIZE)
    width = SIZE * 7 // 8
    start, stop = width * index // count, width * (index + 1) // count + SIZE // 16
    mask[:, :, start:min(stop, width)] = 1.0
    return mask


def regions(count: int, control_net=None):
    regional = pack_import("nodes.sampling.regions")
    gen = torch.Generator().manual_seed(100 + count)
    return [regional.Region(conditioning=prompt(10 + i), mask=band(i, count), weight=1.0, control_net=control_net,
                            control_image=None if control_net is None else torch.rand(1, SIZE, SIZE, 3, generator=gen),
                            control_strength=1.0) for i in range(count)]


def core_masked(positive: list, region_list: list) -> list:
    import nodes

    region_ops = pack_import("nodes.ops.regions")
    out = nodes.ConditioningSetMask().append(positive, region_ops.background([r.mask for r in region_list]),
                                             "default", 1.0)[0]
    for r in region_list:
        c = nodes.ConditioningSetMask().append(r.conditioning, r.mask, "default", r.weight)[0]
        c = nodes.ControlNetApplyAdvanced().apply_controlnet(c, [], r.control_net, r.control_image,
                                                             r.control_strength, 0.0, 1.0)[0]
        out = out + c
    return out


def per_step(model, positive, negative, steps: int, side: int = LATENT) -> float:
    """Seconds per step of a one-latent sample at ``side`` x ``side`` (the same noise every call)."""
    noise = torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(1))
    return seconds_per_step(model, positive, negative, noise, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8, help="interleaved rounds after the warm-up round")
    add_threads_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()
    regional = pack_import("nodes.sampling.regions")
    model, net = build_model(), build_controlnet()
    positive, negative = prompt(0), prompt(1)

    runs = {"single_prompt": (model, positive, negative, LATENT)}
    for n in ATTENTION_N:
        m, p, q, _ = regional.apply_regions(model, positive, negative, regions(n), "attention", 0)
        runs[f"attention_n{n}"] = (m, p, q, LATENT)
        if n >= 2:  # at SD1.5's own 64x64 latent the UNet, not the joined text tokens, dominates
            runs[f"attention_n{n}_{BIG_LATENT}"] = (m, p, q, BIG_LATENT)
    runs[f"single_prompt_{BIG_LATENT}"] = (model, positive, negative, BIG_LATENT)
    for n in INSTANCE_N:
        controlled = regions(n, net)
        m, p, q, _ = regional.apply_regions(model, positive, negative, controlled, "instances", 0)
        runs[f"instances_n{n}"] = (m, p, q, LATENT)
        runs[f"core_n{n}"] = (model, core_masked(positive, controlled), negative, LATENT)

    rounds = interleaved_rounds({name: (lambda m=m, p=p, q=q, side=side: per_step(m, p, q, args.steps if side == LATENT
                                                                                else 1, side))
                                 for name, (m, p, q, side) in runs.items()}, args.repeats)
    seconds = {name: rounds.median(name) for name in runs}

    def versus(name: str) -> str:
        """The run a row is compared with: core for instances, the single prompt at the same latent size."""
        if name.startswith("instances"):
            return name.replace("instances", "core")
        return f"single_prompt_{BIG_LATENT}" if name.endswith(f"_{BIG_LATENT}") else "single_prompt"

    print(f"{'run':20s} {'ms/step':>9s} {'ratio median (min, max) over ' + str(args.repeats) + ' rounds':>40s}  against")
    for name, value in seconds.items():
        other = versus(name)
        print(f"{name:20s} {value * 1000:9.1f} {rounds.ratio(name, other).text():>40s}  {other}")
    headline = {"attention_n4_ratio": (f"attention_n4_{BIG_LATENT}", f"single_prompt_{BIG_LATENT}"),
                "attention_n4_ratio_latent16": ("attention_n4", "single_prompt"),
                "instances_n3_vs_core": ("instances_n3", "core_n3")}
    result = {
        **{key: round(rounds.ratio(*pair).median, 4) for key, pair in headline.items()},
        "ratio_spread": {key: rounds.ratio(*pair).as_list() for key, pair in headline.items()},
        "ms_per_step": {k: round(v * 1000, 2) for k, v in seconds.items()},
        "goals": {"attention_n4_ratio": 1.15, "instances_n3_vs_core": 1.0},
        "config": {"unet": "SD1.5 arch, model_channels 64, mult 1/2/4, 8 heads, ctx 768, + same-shape ControlNet",
                   "latent": [LATENT, LATENT], "attention_latent": [BIG_LATENT, BIG_LATENT], "sampler": "euler",
                   "cfg": 5.0, "steps": args.steps, "steps_at_attention_latent": 1, "repeats": args.repeats,
                   "clock": clock_name(),
                   "device": str(model.load_device), "threads": torch.get_num_threads()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
