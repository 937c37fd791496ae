"""Catalog runner (catalog/) against posting the same prompts straight to one server in a loop.

Two real ComfyUI CPU servers on 127.0.0.1 run the tests' tiny-model workflow
(tests/data/catalog_tiny.json: tiny SD1.5 img2img, Filter By Found, SaveImage) over the same
small images. Per item, both ways upload the image, queue the prompt, wait on /history and
fetch the saved file (the same HTTP client); the runner adds Ray, the manifest and atomic
writes. Each way runs once per round, in interleaved rounds (benchmarks/_common.py; the servers
build their models on two warm-up items first); each ratio is the median over the rounds of the
ratio within a round, printed with its min and max (wall time: the work is in the servers).
Ray starts once, before the timing.

- overhead_ratio: the runner's wall time per item on one server / the direct loop's (goal <= 1.05);
  the runner keeps ``per_server`` prompts queued, so the server never waits for the next upload;
  ``overhead_ratio_one_in_flight`` is the same with one prompt at a time, as the loop does.
- throughput_1 / throughput_2: items per minute with one and two servers.
- lost / duplicated: items not done, and prompts the servers executed more than once per item,
  over every runner round (from the servers' own /history).

Last stdout line: JSON.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_rounds_argument, interleaved_rounds  # noqa: E402
from catalog.client import ComfyClient, saved_files
from catalog.convert import to_api_prompt
from catalog.items import discover
from catalog.local import local_servers
from catalog.runner import Job, resolve_target, run

WORKFLOW = json.loads((ROOT / "tests" / "data" / "catalog_tiny.json").read_text())
SERVER_NODES = ROOT / "tests" / "catalog_server_nodes"


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        pixels = np.full((size, size, 3), 100 + i % 150, np.uint8)
        pixels[: (i * 3) % size] = 255
        paths.append(folder / f"item_{i:03d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def direct_loop(url: str, paths: list[Path]) -> float:
    """Seconds for: for each image, upload, queue, wait, fetch; one at a time, no Ray."""
    client = ComfyClient(url)
    prompt = to_api_prompt(WORKFLOW, client.object_info(), frontend_version=client.frontend_version())
    node, input_name = resolve_target(prompt, None)
    started = time.perf_counter()
    for path in paths:
        item = copy.deepcopy(prompt)
        item[node]["inputs"][input_name] = client.upload_image(f"direct_{path.name}", path.read_bytes())
        entry = client.wait(client.queue(item, {"catalog_item": str(path)}), timeout=600)
        for file in saved_files(entry):
            client.download(file)
    return time.perf_counter() - started


def runner(urls: list[str], paths: list[Path], out: Path, per_server: int):
    report = run(Job(WORKFLOW, discover([str(paths[0].parent)]), out, urls, per_server=per_server))
    return report


def executions(urls: list[str]) -> collections.Counter:
    counts = collections.Counter()
    for url in urls:
        for entry in ComfyClient(url).get_json("/history").values():
            key = (entry["prompt"][3] or {}).get("catalog_item")
            if key:
                counts[key] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    add_rounds_argument(parser, 3)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    lost = 0
    runner_keys: list[str] = []
    with local_servers(2, extra_nodes=[SERVER_NODES], cpu=True, python=Path(sys.executable)) as servers:
        urls = [s.url for s in servers]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            warm = make_images(work / "warm", 2, args.size)
            for url in urls:  # both servers build their tiny models before any timing
                direct_loop(url, warm)
            batches = iter(range(10 ** 6))

            def direct() -> float:
                paths = make_images(work / f"direct_{next(batches)}", args.items, args.size)
                return direct_loop(urls[0], paths) / args.items

            def through_runner(server_urls: list[str], per_server: int):
                def timed() -> float:
                    nonlocal lost
                    batch = next(batches)
                    paths = make_images(work / f"runner_{batch}", args.items, args.size)
                    report = runner(server_urls, paths, work / f"out_{batch}", per_server)
                    lost += len(paths) - report.done - report.skipped
                    runner_keys.extend(str(p) for p in paths)
                    return report.seconds / args.items
                return timed

            rounds = interleaved_rounds({"direct": direct, "runner_1": through_runner(urls[:1], 2),
                                         "runner_1_one_in_flight": through_runner(urls[:1], 1),
                                         "runner_2": through_runner(urls, 2)}, args.rounds, warmup=0)
            counts = executions(urls)
        finally:
            ray.shutdown()
    duplicated = sum(max(0, counts[key] - 1) for key in runner_keys)
    per_item = {name: rounds.median(name) for name in rounds.values}
    overhead = rounds.ratio("runner_1", "direct")
    overhead_one = rounds.ratio("runner_1_one_in_flight", "direct")
    result = {
        "items": args.items, "image_size": args.size, "rounds": args.rounds, "cpus": os.cpu_count(),
        "seconds_per_item": {name: round(value, 4) for name, value in per_item.items()},
        "overhead_ratio": round(overhead.median, 3),
        "overhead_ratio_one_in_flight": round(overhead_one.median, 3),
        "ratio_spread": {"overhead_ratio": overhead.as_list(3),
                         "overhead_ratio_one_in_flight": overhead_one.as_list(3)},
        "throughput_1": round(60 / per_item["runner_1"], 1),
        "throughput_2": round(60 / per_item["runner_2"], 1),
        "lost": lost,
        "duplicated": duplicated,
        "all_rounds_seconds_per_item": {name: [round(t, 3) for t in times] for name, times in rounds.values.items()},
    }
    sys.stdout.write(
        f"direct loop {per_item['direct']:.3f} s/item, runner on 1 server {per_item['runner_1']:.3f} s/item "
        f"(one in flight {per_item['runner_1_one_in_flight']:.3f}), on 2 servers {per_item['runner_2']:.3f} s/item "
        f"(medians over {args.rounds} interleaved rounds)\n"
        f"runner / direct loop: {overhead.text()}; one in flight: {overhead_one.text()}\n"
        f"{os.cpu_count()} cores: two CPU servers share them, so a second server adds little; it pays when each "
        "server has its own GPU or machine\n")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
