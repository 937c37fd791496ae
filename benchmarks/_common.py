"""Timing shared by the sampler benchmarks: one clock rule and one timed euler sample.

With one torch thread the clock is the process's CPU time, so other load on the machine barely
moves the ratios; with more threads CPU time would add the threads up, so it is wall time.
(The leading underscore keeps ``run_all.py`` from running this module as a benchmark.)
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; with 1 the clock is process CPU time, which other load barely affects")


def _clock() -> tuple[str, Callable[[], float]]:
    if torch.get_num_threads() == 1:
        return "process CPU time", time.process_time
    return "wall time", time.perf_counter


def clock_name() -> str:
    """What :func:`seconds_per_step` measures, for the benchmarks' JSON."""
    return _clock()[0]


def seconds_per_step(model, positive: list, negative: list, noise: torch.Tensor, steps: int) -> float:
    """Seconds per step of one ``steps``-step euler sample at cfg 5 from an empty latent shaped like ``noise``."""
    import comfy.sample

    clock = _clock()[1]
    latent = torch.zeros(noise.shape)
    start = clock()
    comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True,
                        seed=1)
    return (clock() - start) / steps
