"""Server soak: 200 runs of a small workflow queued over HTTP on 127.0.0.1 (tests/harness/server.py).

Each run differs in one widget (the image colour and the feather radius), so ComfyUI's cache
cannot skip it and every run executes the pack's mask nodes and saves a file. Runs are queued
in rounds of 50; after each round the server's resident memory (VmRSS of its process) is read.
All 200 must complete with status success, none may be lost (every prompt id in /history,
every file written), and RSS after the warm-up round may grow by at most RSS_GROWTH_MB
(measured: flat within a few MB on this machine).
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from harness import box_mask_nodes
from harness.server import running_server

pytestmark = pytest.mark.slow

RUNS, ROUND = 200, 50
TIME_LIMIT = 120.0  # seconds for all runs
RSS_GROWTH_MB = 40.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _prompt(i: int, prefix: str) -> dict:
    return {
        **box_mask_nodes("2", 64, 64, (20, 20, 24, 24)),
        "4": {"class_type": "SCFeatherMask", "inputs": {"mask": ["2", 0], "radius": 1 + i % 7,
                                                        "direction": "centred", "falloff": "linear"}},
        "5": {"class_type": "SCGrowMask", "inputs": {"mask": ["4", 0], "pixels": 2}},
        "6": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": i}},
        "7": {"class_type": "SCPasteBack", "inputs": {"image": ["6", 0], "source_image": ["9", 0], "mask": ["5", 0],
                                                      "feather": 2.0, "falloff": "linear", "colour_match": False}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"{prefix}/{i:03d}"}},
        "9": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFFFFFF}},
    }


def _wait_idle(server, deadline: float) -> None:
    while True:
        queue = server.get("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"queue not empty within {TIME_LIMIT:.0f} s: {len(queue['queue_pending'])} pending")
        time.sleep(0.1)


def test_200_queued_runs_all_finish_with_flat_memory():
    prefix = f"soak_{uuid.uuid4().hex[:8]}"
    with running_server() as server:
        started = time.monotonic()
        deadline = started + TIME_LIMIT
        ids, rss = [], []
        for first in range(0, RUNS, ROUND):
            for i in range(first, first + ROUND):
                answer = server.post("/prompt", {"prompt": _prompt(i, prefix), "client_id": "soak"})
                assert not answer.get("node_errors"), answer
                ids.append(answer["prompt_id"])
            _wait_idle(server, deadline)
            rss.append(_rss_mb(server.process.pid))
        seconds = time.monotonic() - started
        history = server.get(f"/history?max_items={RUNS * 2}", timeout=30)
        missing = [p for p in ids if p not in history]
        assert not missing, f"{len(missing)} of {RUNS} prompts lost"
        failed = [p for p in ids if history[p]["status"]["status_str"] != "success"
                  or not history[p]["status"]["completed"]]
        assert not failed, history[failed[0]]["status"]
        files = sorted((server.output / prefix).glob("*.png"))
        assert len(files) == RUNS and len(set(ids)) == RUNS
    growth = max(rss[1:]) - rss[0]
    print(f"soak: {RUNS} runs in {seconds:.1f} s, RSS after each {ROUND}: "
          + ", ".join(f"{r:.0f}" for r in rss) + f" MB, growth after warm-up {growth:+.1f} MB")
    assert seconds < TIME_LIMIT
    assert growth < RSS_GROWTH_MB, f"resident memory grew {growth:.1f} MB after warm-up: {rss}"
