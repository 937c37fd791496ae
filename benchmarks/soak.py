"""Benchmark: a real server running the soak test's pack workflow against the same graph of core nodes.

One ComfyUI CPU server on 127.0.0.1 (tests/harness/server.py). The pack's prompt is the soak test's
(tests/test_soak.py: box mask -> Feather Mask (SC) -> Grow Mask (SC) -> Paste Back (SC) of one
colour onto another -> SaveImage); the core prompt is the same graph with core FeatherMask,
GrowMask and ImageCompositeMasked. Each run differs in a widget, so the cache never skips it.
A round queues ``--per-round`` pack prompts, waits until the server is idle, then as many core
prompts (interleaved rounds, the first a warm-up). Per run: the server process's CPU time
(user + system from /proc, so other load on the machine barely moves it). After every batch: the
server's resident memory; its growth from the warm-up round to the last round is the leak figure
(a server that keeps something per run grows by that times the runs).

Run from the repo root: ``.venv/bin/python benchmarks/soak.py [--rounds 6 --per-round 50]``.
Last stdout line: JSON with ``pack_vs_core_cpu_per_run`` and ``rss_growth_mb``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_rounds_argument, interleaved_rounds  # noqa: E402
from harness import box_mask_nodes  # noqa: E402
from harness.server import running_server  # noqa: E402
from test_soak import pack_prompt, queue_round  # noqa: E402


def core_prompt(i: int, prefix: str) -> dict:
    """The soak test's graph with core nodes in place of the pack's."""
    radius = 1 + i % 7
    return {
        **box_mask_nodes("2", 64, 64, (20, 20, 24, 24)),
        "4": {"class_type": "FeatherMask", "inputs": {"mask": ["2", 0], "left": radius, "top": radius,
                                                      "right": radius, "bottom": radius}},
        "5": {"class_type": "GrowMask", "inputs": {"mask": ["4", 0], "expand": 2, "tapered_corners": True}},
        "6": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": i}},
        "7": {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["6", 0], "source": ["9", 0], "x": 0,
                                                               "y": 0, "resize_source": False, "mask": ["5", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"{prefix}/{i:05d}"}},
        "9": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFFFFFF}},
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rounds_argument(parser, 6)
    parser.add_argument("--per-round", type=int, default=50, help="prompts of each kind queued per round")
    args = parser.parse_args()
    prefix = f"soak_bench_{uuid.uuid4().hex[:8]}"
    counter = iter(range(10 ** 9))
    rss: list[float] = []
    with running_server() as server:
        pid = server.process.pid

        def batch(kind: str, make) -> float:
            start = cpu_seconds(pid)
            queue_round(server, [make(next(counter), f"{prefix}/{kind}") for _ in range(args.per_round)])
            seconds = (cpu_seconds(pid) - start) / args.per_round
            rss.append(rss_mb(pid))
            return seconds

        rounds = interleaved_rounds({"pack": lambda: batch("pack", pack_prompt),
                                     "core": lambda: batch("core", core_prompt)}, args.rounds)
    measured = rounds.report({"pack_vs_core_cpu_per_run": ("pack", "core")}, unit="server_cpu_ms_per_run")
    growth = round(rss[-1] - rss[1], 1)  # from the end of the warm-up round
    runs = 2 * args.rounds * args.per_round
    print(f"server RSS after each batch (pack, core, ...): {', '.join(f'{v:.0f}' for v in rss)} MB; "
          f"{growth:+.1f} MB over the {runs} runs after the warm-up round")
    print(json.dumps({**measured, "rss_growth_mb": growth, "rss_mb": rss, "runs_after_warmup": runs,
                      "clock": "server process CPU time"}))


if __name__ == "__main__":
    main()
