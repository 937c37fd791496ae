"""Server soak: 200 runs of a small workflow queued over HTTP on 127.0.0.1 (tests/harness/server.py).

Each run differs in one widget (the image colour and the feather radius), so ComfyUI's cache
cannot skip it and every run executes the pack's mask nodes and saves a file. Runs are queued
in rounds of 50. All 200 must complete with status success and none may be lost (every prompt
id in /history, every file written). How long they take and how the server's resident memory
moves are no pass/fail figures here (load on the machine moves both): ``benchmarks/soak.py``
measures them against the same graph of core nodes.
"""
from __future__ import annotations

import time
import uuid

import pytest

from harness import box_mask_nodes
from harness.server import running_server

pytestmark = pytest.mark.slow

RUNS, ROUND = 200, 50
HANG_LIMIT = 900.0  # seconds: only a hung server gets here (the 200 runs take ~15 s)


def pack_prompt(i: int, prefix: str) -> dict:
    """Run ``i``: a feathered, grown box mask pastes one colour onto another and the result is saved."""
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


def wait_idle(server, deadline: float) -> None:
    """Until the server's queue is empty; fails past ``deadline`` (time.monotonic)."""
    while True:
        queue = server.get("/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"queue not empty after {HANG_LIMIT:.0f} s: {len(queue['queue_pending'])} pending")
        time.sleep(0.1)


def queue_round(server, prompts: list[dict]) -> list[str]:
    """Queue ``prompts`` and wait until the server has run them all; their prompt ids."""
    ids = []
    for prompt in prompts:
        answer = server.post("/prompt", {"prompt": prompt, "client_id": "soak"})
        assert not answer.get("node_errors"), answer
        ids.append(answer["prompt_id"])
    wait_idle(server, time.monotonic() + HANG_LIMIT)
    return ids


def test_200_queued_runs_all_finish_and_none_is_lost():
    prefix = f"soak_{uuid.uuid4().hex[:8]}"
    with running_server() as server:
        started = time.monotonic()
        ids = []
        for first in range(0, RUNS, ROUND):
            ids += queue_round(server, [pack_prompt(i, prefix) for i in range(first, first + ROUND)])
        seconds = time.monotonic() - started
        history = server.get(f"/history?max_items={RUNS * 2}", timeout=30)
        missing = [p for p in ids if p not in history]
        assert not missing, f"{len(missing)} of {RUNS} prompts lost"
        failed = [p for p in ids if history[p]["status"]["status_str"] != "success"
                  or not history[p]["status"]["completed"]]
        assert not failed, history[failed[0]]["status"]
        files = sorted((server.output / prefix).glob("*.png"))
        assert len(files) == RUNS and len(set(ids)) == RUNS
    print(f"soak: {RUNS} runs in {seconds:.1f} s")
