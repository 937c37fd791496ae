"""Catalog manifest: what the driver pays per output as the run grows, now against the old way.

Before it saves an output, the catalog runner's driver asks the manifest whose output that file
name is (``Manifest.owner_of``). The manifest used to answer by reading every item's output list
(``SELECT key, outputs FROM items`` and a JSON parse per row: 119 ms per output at 50,000 done);
it now looks the name up in an indexed table. This benchmark builds one manifest per size (0,
1,000, 10,000 and 100,000 items done, one output each, built with the manifest's own
``add`` / ``saving`` / ``finished``) and, beside each, the old layout with the same items, queried
the old way (reimplemented here: the scan, as it was).

Then ``--rounds`` rounds, each visiting every size in turn and timing, per output:
- ``new``: ``owner_of`` of a name no item has (what a new item's output asks);
- ``old``: the old scan for such a name;
- ``save``: the new driver's whole manifest work for one output of a new item (``owner_of``,
  ``saving``, ``finished``: two committed transactions).
Printed: min / median / max over the rounds, in microseconds per output, on the process's CPU
clock (single-threaded SQLite; other load on the machine barely moves it). Flat means the median
at 100,000 done is within a small factor of the median at 0; the old scan grows linearly.

Run from the repo root: ``.venv/bin/python benchmarks/catalog_manifest.py [--sizes 0,1000,10000,100000]
[--rounds 7]``. Last stdout line: JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.manifest import Manifest  # noqa: E402


def build_new(folder: Path, done: int) -> Manifest:
    manifest = Manifest(folder)
    sources = [Path(f"/catalog/sku{i:06d}/front.jpg") for i in range(done)]
    manifest.add(sources)
    for source in sources:
        key = str(source)
        manifest.saving(key, [f"sku{int(source.parent.name[3:]):06d}/front.png"])
        manifest.finished(key, "done", "http://gpu1:8188", 1.0)
    return manifest


def build_old(path: Path, done: int) -> sqlite3.Connection:
    """The old layout's rows: each item's outputs as a JSON list in its row."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE items (key TEXT PRIMARY KEY, stem TEXT NOT NULL UNIQUE, status TEXT NOT NULL, "
               "outputs TEXT NOT NULL DEFAULT '[]')")
    db.execute("BEGIN")
    db.executemany("INSERT INTO items VALUES (?, ?, 'done', ?)",
                   ((f"/catalog/sku{i:06d}/front.jpg", f"front_{i}", json.dumps([f"sku{i:06d}/front.png"]))
                    for i in range(done)))
    db.execute("COMMIT")
    return db


def old_owner_of(db: sqlite3.Connection, name: str) -> str | None:
    """The manifest's owner_of before this change, as it was."""
    for key, outputs in db.execute("SELECT key, outputs FROM items WHERE outputs != '[]'"):
        if name in json.loads(outputs):
            return key
    return None


def per_output(calls: int, step) -> float:
    start = time.process_time()
    for i in range(calls):
        step(i)
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,1000,10000,100000", help="items done, comma-separated")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    new_calls, save_calls = 2000, 200

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        built = time.perf_counter()
        manifests, old = {}, {}
        for size in sizes:
            manifests[size] = build_new(Path(tmp) / f"new{size}", size)
            stack.callback(manifests[size].close)
            manifests[size].add([Path(f"/spare/{r}/{i}.jpg") for r in range(args.rounds) for i in range(save_calls)])
            old[size] = build_old(Path(tmp) / f"old{size}.sqlite", size)
            stack.callback(old[size].close)
        print(f"built {len(sizes)} manifests in {time.perf_counter() - built:.0f} s", file=sys.stderr)

        times = {kind: {size: [] for size in sizes} for kind in ("new", "old", "save")}
        for round_ in range(args.rounds):
            for size in sizes:
                manifest = manifests[size]
                old_calls = max(2, 200_000 // max(size, 1000))

                def save(i: int, manifest=manifest, round_=round_) -> None:
                    key, name = f"/spare/{round_}/{i}.jpg", f"{round_}/{i}.png"
                    assert manifest.owner_of(name) is None
                    manifest.saving(key, [name])
                    manifest.finished(key, "done", "http://gpu1:8188", 1.0)

                times["new"][size].append(per_output(new_calls, lambda i: manifest.owner_of(f"fresh/{i}.png")))
                times["old"][size].append(per_output(old_calls, lambda i, db=old[size]: old_owner_of(db, f"fresh/{i}.png")))
                times["save"][size].append(per_output(save_calls, save))

    summary = {kind: {size: {"min": min(v), "median": statistics.median(v), "max": max(v)}
                      for size, v in by_size.items()} for kind, by_size in times.items()}
    first, last = sizes[0], sizes[-1]
    base_old = next((s for s in sizes if s >= 1000), last)
    ratios = {
        "owner_of_new_last_vs_first": summary["new"][last]["median"] / summary["new"][first]["median"],
        "save_new_last_vs_first": summary["save"][last]["median"] / summary["save"][first]["median"],
        "owner_of_old_last_vs_1k": summary["old"][last]["median"] / summary["old"][base_old]["median"],
        "owner_of_old_over_new_at_last": summary["old"][last]["median"] / summary["new"][last]["median"],
    }
    print(f"catalog manifest: per-output cost by items done; process CPU time, {args.rounds} rounds interleaved "
          "over the sizes; microseconds per output, min / median / max")
    print(f"{'done':>8}  {'owner_of new (indexed)':>26}  {'owner_of old (scan)':>30}  {'old/new':>8}  "
          f"{'new save path per output':>26}")
    for size in sizes:
        new, scan, save = (summary[kind][size] for kind in ("new", "old", "save"))
        cell = lambda s: f"{s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f}"  # noqa: E731
        print(f"{size:>8}  {cell(new):>26}  {cell(scan):>30}  {scan['median'] / new['median']:>8.1f}  {cell(save):>26}")
    print(f"new owner_of {last} vs {first} done: x{ratios['owner_of_new_last_vs_first']:.2f} (flat); "
          f"new save path: x{ratios['save_new_last_vs_first']:.2f}; "
          f"old scan {last} vs {base_old}: x{ratios['owner_of_old_last_vs_1k']:.0f} (linear)")
    print(json.dumps({"sizes": sizes, "rounds": args.rounds, "clock": "process CPU time", "unit": "us per output",
                      "per_output": {kind: {str(k): v for k, v in by.items()} for kind, by in summary.items()},
                      "ratios": {k: round(v, 3) for k, v in ratios.items()},
                      "goals": {"owner_of_new_last_vs_first": 2.0, "save_new_last_vs_first": 2.0}}))


if __name__ == "__main__":
    main()
