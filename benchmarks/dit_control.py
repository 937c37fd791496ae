"""Benchmarks for DiT control, beside core, on the tiny random DiTs of the test harness (ComfyUI 0.33).

1. Apply ControlNet (Masked) vs core Apply ControlNet per sampler step: tiny Flux.1 + XLabs Flux
   ControlNet, and tiny Qwen-Image + InstantX Qwen-Image ControlNet, at 256 px (16x16 tokens).
2. Instances mode (3 regions, each with its own XLabs ControlNet) vs core ConditioningSetMask +
   Apply ControlNet per region (N + 1 model passes) per step, tiny Flux.1 at 256 px.

One torch thread, process CPU time, each pair in interleaved rounds after a warm-up round
(benchmarks/_common.py); each ratio is the median over the rounds of the ratio within a round,
printed with its min and max. The tiny models make the per-call overhead count more than it would on a real
Flux, so these ratios bound the pack's cost from above rather than predict real step times.

Last stdout line: JSON with the three ratios.
"""
import argparse
import json
import sys
import warnings

sys.path.insert(0, "tests")
warnings.filterwarnings("ignore")

import _common  # noqa: E402
from harness import boot, pack_import  # noqa: E402

SIZE = 256


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    _common.add_rounds_argument(parser, 10)
    args = parser.parse_args()
    steps = args.steps
    torch.set_num_threads(1)
    boot()
    import nodes
    from harness import tiny_dit, tiny_dit_control

    if tiny_dit.unavailable_reason():
        raise SystemExit(f"needs ComfyUI 0.33: {tiny_dit.unavailable_reason()}")
    mc = pack_import("nodes.sampling.masked_control")
    regional = pack_import("nodes.sampling.regions")
    region_ops = pack_import("nodes.ops.regions")
    g = torch.Generator().manual_seed(0)
    hint = torch.rand(1, SIZE, SIZE, 3, generator=g)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 40:200, 30:180] = 1.0

    def step_time(arch, positive, negative, model=None):
        latent = tiny_dit.empty_latent(arch, SIZE, SIZE)["samples"]
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
        return lambda: _common.seconds_per_step(model or tiny_dit.model(arch), positive, negative, noise, steps)

    ratios, spreads, lines = {}, {}, []
    for kind in ("flux_xlabs", "qwen_instantx"):
        arch = tiny_dit_control.KINDS[kind]
        pos, neg = (tiny_dit.conditioning(arch, t, guidance=3.5) for t in ("a red fox", "blurry"))
        cn, vae = tiny_dit_control.controlnet(kind), tiny_dit_control.vae(kind)
        core = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, hint, 1.0, 0.0, 1.0, vae=vae)
        masked = mc.apply_masked_control(pos, neg, cn, hint, mask, 1.0, 0.0, 1.0, vae=vae)
        # the warm-up round encodes the hints and makes the first allocations
        rounds = _common.interleaved_rounds({"core": step_time(arch, *core), "masked": step_time(arch, *masked)},
                                            args.rounds)
        ratio = rounds.ratio("masked", "core")
        ratios[f"{kind}_masked_vs_core_step_ratio"] = round(ratio.median, 4)
        spreads[f"{kind}_masked_vs_core_step_ratio"] = ratio.as_list()
        lines.append(f"{kind} @{SIZE}px per step: core Apply ControlNet {rounds.median('core') * 1000:.1f} ms, "
                     f"Apply ControlNet (Masked) {rounds.median('masked') * 1000:.1f} ms -> {ratio.text()}")

    model, net = tiny_dit.model("flux"), tiny_dit_control.controlnet("flux_xlabs")
    pos, neg = (tiny_dit.conditioning("flux", t, guidance=3.5) for t in ("a red fox", "blurry"))
    regions = []
    for i in range(3):
        band = torch.zeros(1, SIZE, SIZE)
        band[:, :, i * 72:i * 72 + 88] = 1.0
        regions.append(regional.Region(conditioning=tiny_dit.conditioning("flux", f"region {i}", guidance=3.5),
                                       mask=band, weight=1.0, control_net=net,
                                       control_image=torch.rand(1, SIZE, SIZE, 3, generator=g), control_strength=0.8))
    core_pos = nodes.ConditioningSetMask().append(pos, region_ops.background([r.mask for r in regions]), "default",
                                                  1.0)[0]
    for r in regions:
        c = nodes.ConditioningSetMask().append(r.conditioning, r.mask, "default", r.weight)[0]
        core_pos = core_pos + nodes.ControlNetApplyAdvanced().apply_controlnet(c, [], net, r.control_image,
                                                                               r.control_strength, 0.0, 1.0)[0]
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "instances", 0)
    rounds = _common.interleaved_rounds({"core": step_time("flux", core_pos, neg),
                                         "instances": step_time("flux", p, n, model=m)}, args.rounds)
    ratio = rounds.ratio("instances", "core")
    ratios["flux_instances_vs_core_masked_conds_step_ratio"] = round(ratio.median, 4)
    spreads["flux_instances_vs_core_masked_conds_step_ratio"] = ratio.as_list()
    lines.append(f"flux 3 regions + 3 ControlNets @{SIZE}px per step: core masked conds "
                 f"{rounds.median('core') * 1000:.1f} ms, instances {rounds.median('instances') * 1000:.1f} ms -> "
                 f"{ratio.text()}")
    print(f"ratios: median (min, max) over {args.rounds} interleaved rounds")
    for line in lines:
        print(line)
    print(json.dumps({"clock": _common.clock_name(), **ratios, "ratio_spread": spreads,
                      "config": {"rounds": args.rounds, "steps": steps}}))


if __name__ == "__main__":
    main()
