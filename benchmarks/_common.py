"""What every benchmark shares: the clock rule, interleaved rounds with their spread, one timed euler sample.

With one torch thread the clock is the process's CPU time, so other load on the machine barely
moves the ratios; with more threads CPU time would add the threads up, so it is wall time.

Every benchmark measures with :func:`interleaved_rounds`: each round calls every run once, in
turn, so a slow spell of the machine hits all runs of that round alike; a ratio is taken within
each round (run / its reference in the same round) and the median over the rounds is the figure,
printed with the rounds' min and max beside it. Single best times or one round per run swing by
tens of percent between runs of a benchmark on a shared machine; the median of per-round ratios
over enough rounds does not.
(The leading underscore keeps ``run_all.py`` from running this module as a benchmark.)
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; with 1 the clock is process CPU time, which other load barely affects")


def add_rounds_argument(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--rounds", type=int, default=default,
                        help="interleaved rounds that count (a warm-up round, where the benchmark has one, comes "
                             "first); each ratio is the median over them")


def add_attention_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--attention", default=default,
                        help="ComfyUI attention function for every call: pytorch (torch's SDPA, ComfyUI's choice on "
                             "GPUs), sub_quad (ComfyUI's choice on CPUs: its self-attention is ~6x slower, so every "
                             "overhead looks smaller), split, or default (the one ComfyUI picked for this machine)")


def use_attention(name: str) -> None:
    """Make ComfyUI's attention function ``name`` (from :func:`add_attention_argument`) the one every call uses."""
    if name != "default":
        import comfy.ldm.modules.attention as comfy_attention

        comfy_attention.optimized_attention = comfy_attention.get_attention_function(name)


def attention_name() -> str:
    """The attention function ComfyUI's calls use now, for the benchmarks' JSON."""
    import comfy.ldm.modules.attention as comfy_attention

    return comfy_attention.optimized_attention.__name__


def clock() -> Callable[[], float]:
    """Process CPU time with one torch thread (other load barely moves it), else wall time."""
    import torch

    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def clock_name() -> str:
    """What :func:`clock` measures, for the benchmarks' JSON."""
    return "process CPU time" if clock() is time.process_time else "wall time"


@dataclass(frozen=True)
class Spread:
    """The min, median and max of one figure over the rounds."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))

    def text(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}f} (min {self.low:.{digits}f}, max {self.high:.{digits}f})"

    def as_list(self, digits: int = 4) -> list[float]:
        return [round(self.low, digits), round(self.median, digits), round(self.high, digits)]


class Rounds:
    """Each run's values, one per round, in the order the rounds ran."""

    def __init__(self, values: dict[str, list[float]]):
        self.values = values

    def spread(self, name: str) -> Spread:
        return Spread.of(self.values[name])

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def ratio(self, name: str, reference: str) -> Spread:
        """``name`` / ``reference`` within each round, over the rounds."""
        return Spread.of([a / b for a, b in zip(self.values[name], self.values[reference])])

    def report(self, ratios: dict[str, tuple[str, str]], scale: float = 1000.0, unit: str = "ms") -> dict:
        """Print each run's median and spread, then each ratio ``label: (run, reference)`` as median (min, max);
        returns the JSON part: ``ratios`` (medians), ``ratio_spread`` and ``<unit>`` ([min, median, max])."""
        count = len(next(iter(self.values.values())))
        print(f"{'run':24s} {unit + ' median (min, max)':>30s}   over {count} interleaved rounds")
        for name in self.values:
            spread = self.spread(name)
            print(f"{name:24s} {Spread(spread.low * scale, spread.median * scale, spread.high * scale).text(2):>30s}")
        for label, (name, reference) in ratios.items():
            print(f"{label:24s} {self.ratio(name, reference).text()}  = {name} / {reference}")
        return {"ratios": {label: round(self.ratio(*pair).median, 4) for label, pair in ratios.items()},
                "ratio_spread": {label: self.ratio(*pair).as_list() for label, pair in ratios.items()},
                unit: {name: Spread.of([v * scale for v in values]).as_list(2) for name, values in self.values.items()},
                "rounds": count}


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """``fn`` as a run of :func:`interleaved_rounds`: calling it returns the :func:`clock` seconds ``fn`` took."""
    def run() -> float:
        tick = clock()
        start = tick()
        fn()
        return tick() - start
    return run


def interleaved_rounds(runs: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> Rounds:
    """Call every run once per round, in turn, for ``warmup`` untimed rounds then ``rounds`` counted ones.

    Each run returns its own measurement (seconds, usually from :func:`clock`)."""
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    values: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + rounds):
        for name, run in runs.items():
            value = run()
            if round_index >= warmup:
                values[name].append(value)
    return Rounds(values)


def seconds_per_step(model, positive: list, negative: list, noise, steps: int) -> float:
    """Seconds per step of one ``steps``-step euler sample at cfg 5 from an empty latent shaped like ``noise``."""
    import comfy.sample
    import torch

    tick = clock()
    latent = torch.zeros(noise.shape)
    start = tick()
    comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, disable_pbar=True,
                        seed=1)
    return (tick() - start) / steps
