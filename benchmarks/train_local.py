"""Benchmark: mask-in-the-loop adapter training — step time with the Sobel term vs without, and the
fair comparison of where masked-trained and unmasked-trained adapters act.

1. Step time. Model: a randomly initialised SD1.5-layout UNet (model_channels 32, channel_mult
   1/2/4/4, two res blocks per level, cross-attention in the middle block, context 64) and a
   fresh standard T2I-Adapter sized from it or a fresh ControlNet copied from it (``--adapters``), at 128x128 px (16x16 latent), batch 2, CPU. Both
   variants run the same ``train_local_control`` loop (masked features through MaskedControl,
   AdamW) in interleaved rounds (benchmarks/_common.py; the first warms up); the ratio is the
   median over the rounds of the ratio within a round, printed with its min and max. CPU time of
   this process with 1 thread, so the other load on the machine moves the ratio little. Goal:
   Sobel / plain <= 1.15x.

2. Fair comparison. The same UNet, first fitted for ``--pretrain-steps`` to flat one-colour latents
   (so, like a real pretrained model, it already denoises the part outside the mask and the noise
   loss gives the adapter no reason to act there), then frozen. On the synthetic stripes task
   (``_training.stripes_task``: stripes that must appear only inside a square mask; the control image
   shows the stripes everywhere (``full``) or only inside the mask (``masked``)) the same fresh
   adapter is trained with the same seed, steps and data as: ``masked`` (features masked + masked
   Sobel: the paper's method), ``unmasked`` (features and Sobel over the whole image), and both
   with the noise loss only. Each trained adapter is then measured with ``control_effect`` at
   inference with the mask applied (as Apply ControlNet (Masked) does) and without it: mean
   |dz0'| outside and inside the mask, the outside/inside ratio (leak), and the error to the true
   latent inside and outside. Means over ``--fair-seeds`` seeds, for each adapter kind.

Run from the repo root: ``.venv/bin/python benchmarks/train_local.py [--steps 8 --rounds 6]
[--fair-seeds 0 1 2] [--fair-hints full masked] [--adapters t2i controlnet]``. Last stdout line: JSON
with ``ratio`` (the worse adapter kind's), ``final_losses`` per kind, per-kind timings under ``adapters``, and
``fair`` (the comparison's means per adapter kind, hint mode and variant).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import boot, pack_import  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere (the tests load this file)
import _common  # noqa: E402
import _training  # noqa: E402

LATENT = 16
EVAL_SIGMAS = (0.3, 1.0, 2.5)
# name -> TrainConfig fields; every variant also gets the shared seed, steps and learning rate
VARIANTS = {
    "masked": {},
    "unmasked": {"mask_features": False, "mask_sobel": False},
    "masked, noise only": {"sobel_weight": 0.0},
    "unmasked, noise only": {"mask_features": False, "mask_sobel": False, "sobel_weight": 0.0},
}


def micro_model(seed: int = 0, normalise: bool = True):
    """A ModelPatcher around a randomly initialised SD1.5-layout micro UNet (the tests' ``MICRO_SD15_UNET``)."""
    boot()
    from harness import tiny_models

    return tiny_models.micro_sd15(seed, normalise)


def pretrain_background(patcher, conditioning, latent: int, steps: int = 300, seed: int = 0,
                        batch: int = 4) -> list[float]:
    """Fit the whole UNet (in place) to flat one-colour latents with the noise loss, so it stands in
    for a pretrained model that already generates the background; returns the loss per step."""
    import torch.nn.functional as F

    loop = pack_import("nodes.sampling.training")
    loss_maths = pack_import("nodes.ops.losses")
    step = loop.TrainingStep(patcher, conditioning)
    generator = torch.Generator().manual_seed(seed)
    net = patcher.model.diffusion_model
    size = latent * 8
    hint, mask = torch.zeros(batch, size, size, 3), torch.ones(batch, size, size)
    losses = []
    with torch.inference_mode(False), torch.enable_grad():
        params = list(net.parameters())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
        for _ in range(steps):
            z0 = (0.2 * torch.randn(batch, 4, 1, 1, generator=generator)).expand(batch, 4, latent, latent)
            noise = torch.randn(z0.shape, generator=generator)
            sigma = step.sigmas(batch, 0.0, 1.0, generator)
            x_t = step.sampling.noise_scaling(sigma, noise, z0.contiguous())
            pred = step.predict(None, x_t, sigma, hint, mask)
            loss = F.mse_loss(loss_maths.eps_from_z0(x_t, pred, sigma), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        for p in params:
            p.requires_grad_(False)
    return losses


def measure_variant(patcher, init, data, name: str, steps: int, seed: int, learning_rate: float = 1e-3) -> dict:
    """Train ``init`` as variant ``name`` on ``data`` (a ``stripes_task``) and measure where it acts."""
    loop = pack_import("nodes.sampling.training")
    latents, hints, masks, cond, _ = data
    config = loop.TrainConfig(**{"steps": steps, "learning_rate": learning_rate, "batch_size": 2, "sobel_weight": 1.0,
                                 "start_percent": 0.2, "end_percent": 0.9, "seed": seed, **VARIANTS[name]})
    result = loop.train_local_control(patcher, init, latents, hints, masks, cond, config)
    sigmas = torch.tensor(EVAL_SIGMAS)
    on = _training.control_effect(patcher, result.adapter, latents, hints, masks, cond, sigmas, inference_mask=True)
    off = _training.control_effect(patcher, result.adapter, latents, hints, masks, cond, sigmas, inference_mask=False)
    evaluated = _training.evaluate(patcher, result.adapter, latents, hints, masks, cond, sigmas)
    return {
        "outside_on": on["outside"], "inside_on": on["inside"], "leak_on": on["outside"] / on["inside"],
        "far_on": on.get("far", float("nan")),
        "outside_off": off["outside"], "inside_off": off["inside"], "leak_off": off["outside"] / off["inside"],
        "inside_error_on": on["inside_error"], "outside_error_on": on["outside_error"],
        "inside_error_base": on["inside_error_base"], "outside_error_base": on["outside_error_base"],
        "outside_error_off": off["outside_error"],
        "final_noise_loss": result.noise_loss[-1], "final_sobel_loss": result.sobel_loss[-1],
        "eval_noise_loss": evaluated[0], "eval_sobel_loss": evaluated[1],
    }


ADAPTERS = ("t2i", "controlnet")


def fresh(patcher, kind: str, seed: int):
    """A fresh adapter of ``kind`` for ``patcher``: a standard T2I-Adapter, or a ControlNet copied
    from the UNet's encoder with zero convolutions."""
    adapters = pack_import("nodes.sampling.adapters")
    return adapters.fresh_adapter(patcher, seed) if kind == "t2i" else adapters.fresh_controlnet(patcher, seed)


def fair_comparison(patcher, latent: int = LATENT, seeds=(0, 1, 2), steps: int = 40, full_hint: bool = True,
                    variants=tuple(VARIANTS), learning_rate: float = 1e-3, adapter: str = "t2i") -> dict:
    """Per variant: the mean of ``measure_variant`` over ``seeds`` (and the per-seed values)."""
    per_seed: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in seeds:
        data = _training.stripes_task(4, latent, seed, full_hint)
        init = fresh(patcher, adapter, seed + 7)
        for name in variants:
            per_seed[name].append(measure_variant(patcher, init, data, name, steps, seed + 7, learning_rate))
    means = {name: {key: statistics.fmean(r[key] for r in rows) for key in rows[0]} for name, rows in per_seed.items()}
    return {"means": means, "per_seed": per_seed}


def background_conditioning(latent: int):
    """The conditioning the stripes tasks use (the same for every seed: one prompt)."""
    return _training.stripes_task(4, latent, 0)[3]


def timing(steps: int, rounds: int, kind: str = "t2i") -> dict:
    """Per-step CPU time of training ``kind`` with the Sobel term and without, in interleaved rounds."""
    loop = pack_import("nodes.sampling.training")
    patcher = micro_model(0, normalise=False)
    adapter = fresh(patcher, kind, 0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, LATENT, LATENT, generator=g)
    hints = torch.rand(4, LATENT * 8, LATENT * 8, 3, generator=g)
    masks = torch.zeros(4, LATENT * 8, LATENT * 8)
    masks[:, 16:112, 16:96] = 1.0
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    final = {}

    def train(name: str, weight: float):
        def run() -> float:
            cfg = loop.TrainConfig(steps=steps, learning_rate=1e-4, batch_size=2, sobel_weight=weight)
            start = time.process_time()
            result = loop.train_local_control(patcher, adapter, latents, hints, masks, cond, cfg)
            final[name] = {"noise_loss": result.noise_loss[-1], "sobel_loss": result.sobel_loss[-1]}
            return (time.process_time() - start) / steps
        return run

    measured = _common.interleaved_rounds({"plain": train("plain", 0.0), "sobel": train("sobel", 1.0)}, rounds)
    return {"median": {name: measured.median(name) for name in ("plain", "sobel")}, "final": final,
            "ratio": measured.ratio("sobel", "plain")}


COLUMNS = (("outside_on", "out on"), ("inside_on", "in on"), ("leak_on", "leak on"), ("outside_off", "out off"),
           ("leak_off", "leak off"), ("inside_error_on", "in err"), ("outside_error_on", "out err"),
           ("eval_noise_loss", "noise"), ("eval_sobel_loss", "sobel"))


def print_fair(hint: str, fair: dict, base: dict) -> None:
    print(f"\nfair comparison, control image {hint}: mean over seeds; 'on'/'off' = mask applied at inference or not;"
          f" model alone: in err {base['inside_error_base']:.3f}, out err {base['outside_error_base']:.3f}")
    print(f"{'trained as':<22}" + "".join(f"{label:>9}" for _, label in COLUMNS))
    for name, row in fair["means"].items():
        print(f"{name:<22}" + "".join(f"{row[key]:>9.3f}" for key, _ in COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per round")
    _common.add_rounds_argument(parser, 6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fair-seeds", type=int, nargs="*", default=[0, 1, 2], help="none = skip the comparison")
    parser.add_argument("--fair-steps", type=int, default=40)
    parser.add_argument("--fair-latent", type=int, default=LATENT)
    parser.add_argument("--fair-hints", nargs="+", choices=("full", "masked"), default=["full", "masked"])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--adapters", nargs="+", choices=ADAPTERS, default=list(ADAPTERS),
                        help="adapter kinds to time and compare (fresh T2I-Adapter, fresh ControlNet)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot()

    out = {"benchmark": "train_local", "goal": 1.15, "adapters": {}}
    print(f"{'adapter':<12}{'plain s/step':>14}{'sobel s/step':>14}  ratio median (min, max) over {args.rounds} rounds")
    for kind in args.adapters:
        timed = timing(args.steps, args.rounds, kind)
        median = timed["median"]
        print(f"{kind:<12}{median['plain']:>14.4f}{median['sobel']:>14.4f}  {timed['ratio'].text()}")
        out["adapters"][kind] = {"plain_s_per_step": median["plain"], "sobel_s_per_step": median["sobel"],
                                 "ratio": timed["ratio"].median, "ratio_spread": timed["ratio"].as_list(),
                                 "final_losses": timed["final"]["sobel"],
                                 "final_noise_loss_without_sobel": timed["final"]["plain"]["noise_loss"]}
    worst = max(out["adapters"].values(), key=lambda row: row["ratio"])  # the worse adapter kind counts
    out["ratio"], out["ratio_spread"] = worst["ratio"], {"ratio": worst["ratio_spread"]}
    out["final_losses"] = {kind: row["final_losses"] for kind, row in out["adapters"].items()}
    print(f"ratio (worst kind) {out['ratio']:.3f}x (goal <= 1.15x), CPU time of this process, 1 thread")

    if args.fair_seeds:
        patcher = micro_model(0)
        start = time.process_time()
        pre = pretrain_background(patcher, background_conditioning(args.fair_latent), args.fair_latent,
                                  args.pretrain_steps)
        print(f"\nbase model fitted to flat backgrounds: noise loss {statistics.fmean(pre[:10]):.3f} -> "
              f"{statistics.fmean(pre[-10:]):.3f} in {len(pre)} steps ({time.process_time() - start:.0f} s)")
        out["fair"] = {"latent": args.fair_latent, "steps": args.fair_steps, "seeds": args.fair_seeds,
                       "pretrain_steps": args.pretrain_steps, "pretrain_final_loss": statistics.fmean(pre[-10:])}
        for kind, hint in ((kind, hint) for kind in args.adapters for hint in args.fair_hints):
            fair = fair_comparison(patcher, args.fair_latent, args.fair_seeds, args.fair_steps, hint == "full",
                                   adapter=kind)
            print_fair(f"{hint}, {kind}", fair, fair["means"]["masked"])
            masked, unmasked = fair["means"]["masked"], fair["means"]["unmasked"]
            wins = {key: sum(m[key] < u[key] for m, u in zip(fair["per_seed"]["masked"], fair["per_seed"]["unmasked"]))
                    for key in ("outside_on", "leak_on", "inside_error_on")}
            print(f"{kind}: masked-trained vs unmasked-trained, mask on at inference: outside effect "
                  f"{masked['outside_on']:.3f} vs {unmasked['outside_on']:.3f} (smaller in {wins['outside_on']}/"
                  f"{len(args.fair_seeds)} seeds), leak {masked['leak_on']:.3f} vs {unmasked['leak_on']:.3f} "
                  f"({wins['leak_on']}/{len(args.fair_seeds)}), inside error {masked['inside_error_on']:.3f} vs "
                  f"{unmasked['inside_error_on']:.3f} ({wins['inside_error_on']}/{len(args.fair_seeds)})")
            result = {name: {k: round(v, 4) for k, v in row.items()} for name, row in fair["means"].items()}
            out["fair"].setdefault(kind, {})[hint] = {**result, "masked_smaller_in_seeds": wins}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
