"""The catalog runner (catalog/) on a local Ray with two real ComfyUI CPU servers on 127.0.0.1,
running a tiny-model workflow (tests/data/catalog_tiny.json: tiny SD1.5 img2img, then Filter By
Found on a brightness test, then SaveImage) over 40 small images.

Executions are counted from the servers' own /history (each prompt carries its item in
extra_data), so "exactly once" is what the servers did, not what the runner believes. The
server-killing test runs last: it kills one of the two shared servers.
"""
from __future__ import annotations

import collections
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from harness import comfy
from PIL import Image

ray = pytest.importorskip("ray", reason="the catalog runner needs Ray: pip install ray")

from catalog.client import ComfyClient
from catalog.items import discover, image_problem
from catalog.local import local_servers
from catalog.manifest import FILE_NAME, Manifest
from catalog.runner import Job, output_names, resolve_target, run

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
WORKFLOW = json.loads((DATA / "catalog_tiny.json").read_text())
SERVER_NODES = Path(__file__).parent / "catalog_server_nodes"
COUNT = 40
DARK = {3, 17, 29}  # below TestFoundIfBright's threshold: Filter By Found blocks, nothing is saved
WAIT = 120.0


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def servers():
    with local_servers(2, comfy.COMFYUI_DIR, Path(sys.executable), extra_nodes=[SERVER_NODES], cpu=True) as started:
        yield started


def _make_images(folder: Path, count: int = COUNT) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        value = 30 if i in DARK else 120 + 3 * i  # every image different, so mixed-up outputs show
        pixels = np.full((32, 32, 3), value, np.uint8)
        pixels[: 4 + i % 24, :, 0] = 255 - value
        path = folder / f"photo_{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _job(tmp_path: Path, servers, sources, **options) -> Job:
    return Job(options.pop("workflow", WORKFLOW), sources, tmp_path / "out", [s.url for s in servers], **options)


def _executions(servers, sources) -> collections.Counter:
    """How many times the servers executed a prompt for each source (from /history)."""
    wanted = {str(p) for p in sources}
    counts = collections.Counter()
    for server in servers:
        if server.process.poll() is not None:
            continue
        for entry in ComfyClient(server.url).get_json("/history").values():
            key = (entry["prompt"][3] or {}).get("catalog_item")
            if key in wanted:
                counts[key] += 1
    return counts


def _statuses(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / FILE_NAME) as db:
        return dict(db.execute("SELECT key, status FROM items"))


def _expected_outputs(sources) -> set[str]:
    return {f"{p.stem}.png" for i, p in enumerate(sources) if i not in DARK}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _same_outputs(out: Path, reference: Path) -> None:
    """Both servers hold the same tiny models, so an item's output does not depend on where it ran."""
    for name in _saved(out):
        assert np.abs(_pixels(out / name) - _pixels(reference / name)).max() <= 1, name


def _saved(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.suffix == ".png"}


# ---------------------------------------------------------------------------------------
# Runs on the two servers
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(local_ray, servers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    sources = _make_images(tmp / "in")
    report = run(_job(tmp, servers, discover([str(tmp / "in")])))
    return tmp, sources, report


def test_every_image_is_done_exactly_once(first_run, servers):
    tmp, sources, report = first_run
    assert (report.done, report.skipped, report.failed, report.bad, report.pending) == (
        COUNT - len(DARK), len(DARK), [], [], 0), report.text()
    assert _executions(servers, sources) == {str(p): 1 for p in sources}
    assert _saved(tmp / "out") == _expected_outputs(sources)
    # Work went to both servers, and each reports its own time per item.
    assert all(stats["items"] >= 5 and stats["seconds_per_item"] > 0 for stats in report.servers.values()), report.servers
    # Each output is its own source's (sources differ, and so do their outputs).
    pixels = [_pixels(tmp / "out" / name) for name in sorted(_saved(tmp / "out"))]
    assert len({p.tobytes() for p in pixels}) == len(pixels)


def test_re_running_a_finished_job_redoes_nothing(first_run, servers):
    tmp, sources, _ = first_run
    before = {p.name: p.stat().st_mtime_ns for p in (tmp / "out").iterdir() if p.suffix == ".png"}
    report = run(_job(tmp, servers, discover([str(tmp / "in")])))
    assert report.processed == 0 and report.done == COUNT - len(DARK) and report.skipped == len(DARK)
    assert _executions(servers, sources) == {str(p): 1 for p in sources}
    assert {p.name: p.stat().st_mtime_ns for p in (tmp / "out").iterdir() if p.suffix == ".png"} == before


def test_killing_the_driver_then_re_running_finishes_the_rest_and_redoes_none(first_run, servers, tmp_path):
    sources = _make_images(tmp_path / "in")
    out = tmp_path / "out"
    workflow_file = tmp_path / "workflow.json"
    workflow_file.write_text(json.dumps(WORKFLOW))
    command = [sys.executable, "-m", "catalog", str(workflow_file), str(tmp_path / "in"), "--out", str(out),
               "--server", *[s.url for s in servers], "--address", ray.get_runtime_context().gcs_address, "--quiet"]
    driver = subprocess.Popen(command, cwd=comfy.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT
        while not (out.is_dir() and len(_saved(out)) >= 8):
            assert driver.poll() is None, driver.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the driver saved nothing in time"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
    first = _statuses(out)
    finished_first = {key for key, status in first.items() if status in ("done", "skipped")}
    assert 8 <= len(finished_first) < COUNT, first

    report = run(_job(tmp_path, servers, discover([str(tmp_path / "in")])))
    assert (report.done, report.skipped, report.failed, report.pending) == (COUNT - len(DARK), len(DARK), [], 0)
    assert report.processed == COUNT - len(finished_first)
    assert _saved(out) == _expected_outputs(sources)
    executions = _executions(servers, sources)
    assert all(executions[key] == 1 for key in finished_first), executions
    assert all(executions[str(p)] >= 1 for p in sources)
    _same_outputs(out, first_run[0] / "out")


def test_bad_images_are_reported_and_the_others_done(local_ray, servers, tmp_path):
    good = _make_images(tmp_path / "in", 6)
    folder = tmp_path / "in"
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(noisy)
    (folder / "truncated.png").write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    (folder / "notes.png").write_bytes(b"not an image at all")
    Image.new("CMYK", (64, 64), (0, 50, 100, 0)).save(folder / "print.jpg")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(folder / "scan16.png")
    Image.new("RGB", (200, 200), (200, 200, 200)).save(folder / "huge.png")
    report = run(_job(tmp_path, servers, discover([str(folder)]), max_pixels=100 * 100))
    reasons = {Path(source).name: reason for source, reason in report.bad}
    assert sorted(reasons) == ["huge.png", "notes.png", "print.jpg", "scan16.png", "truncated.png"], report.text()
    assert reasons["truncated.png"].startswith("truncated")
    assert reasons["notes.png"].startswith("unreadable")
    assert reasons["print.jpg"].startswith("CMYK")
    assert "16" in reasons["scan16.png"] and reasons["huge.png"].startswith("huge")
    assert (report.done, report.skipped, report.failed, report.pending) == (5, 1, [], 0)  # photo_03 is dark
    assert _saved(tmp_path / "out") == _expected_outputs(good)
    assert not _executions(servers, [folder / name for name in reasons])


def test_validation_errors_everywhere_stop_with_a_clear_report(local_ray, servers, tmp_path):
    sources = _make_images(tmp_path / "in")
    workflow = json.loads(json.dumps(WORKFLOW))
    next(n for n in workflow["nodes"] if n["id"] == 1)["widgets_values"] = ["sd3"]  # not a choice
    started = time.monotonic()
    report = run(_job(tmp_path, servers, discover([str(tmp_path / "in")]), workflow=workflow,
                      attempts=2, stop_after_failures=4))
    assert time.monotonic() - started < 60
    assert report.stopped and "4 items in a row failed" in report.stopped
    assert len(report.failed) == 4 and report.done == 0 and report.pending == COUNT - 4
    for _, attempts, error in report.failed:
        assert attempts == 2
        assert "TinyCheckpointLoader" in error and "sd3" in error, error
    assert "sd3" in report.text() and "Run the same command again" in report.text()
    assert not _executions(servers, sources)  # nothing invalid was ever queued


def test_killing_a_server_mid_run_still_does_every_image_once(first_run, servers, tmp_path):
    """Runs last in this module: it kills one of the shared servers."""
    sources = _make_images(tmp_path / "in")
    out = tmp_path / "out"
    victim = servers[1]

    def kill_when_started() -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if out.is_dir() and len(_saved(out)) >= 6:
                victim.process.send_signal(signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    report = run(_job(tmp_path, servers, discover([str(tmp_path / "in")])))
    killer.join(timeout=WAIT)
    assert victim.process.poll() is not None, "the server was not killed during the run"
    assert (report.done, report.skipped, report.failed, report.pending) == (COUNT - len(DARK), len(DARK), [], 0)
    assert report.servers[victim.url]["dropped"], report.servers
    assert _saved(out) == _expected_outputs(sources)
    assert set(_statuses(out).values()) == {"done", "skipped"}
    _same_outputs(out, first_run[0] / "out")


# ---------------------------------------------------------------------------------------
# Pieces, without servers
# ---------------------------------------------------------------------------------------

def test_output_names_come_from_the_source_name():
    assert output_names("shoe", [("ComfyUI_00001_.png", b"")]) == ["shoe.png"]
    assert output_names("shoe", [("a.png", b""), ("b.webp", b"")]) == ["shoe_1.png", "shoe_2.webp"]


def test_manifest_gives_sources_of_the_same_stem_distinct_outputs_and_recovers_a_killed_run(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add([Path("/a/shoe.png"), Path("/b/shoe.png"), Path("/a/shoe.jpg")])
    stems = {row["key"]: row["stem"] for row in manifest.rows()}
    assert stems == {"/a/shoe.png": "shoe", "/b/shoe.png": "shoe_png", "/a/shoe.jpg": "shoe_jpg"}
    manifest.running("/a/shoe.png", "s1")
    manifest.saving("/b/shoe.png", ["shoe_png.png"])  # killed after naming, before writing
    manifest.saving("/a/shoe.jpg", ["shoe_jpg.png"])
    (tmp_path / "shoe_jpg.png").write_bytes(b"x")  # killed after writing, before 'done'
    manifest.close()
    statuses = {row["key"]: row["status"] for row in Manifest(tmp_path).rows()}
    assert statuses == {"/a/shoe.png": "pending", "/b/shoe.png": "pending", "/a/shoe.jpg": "done"}


def test_image_problems_name_the_defect(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(path)
    assert image_problem(path.read_bytes()) is None
    assert image_problem(path.read_bytes(), max_pixels=63).startswith("huge")


def test_target_is_the_only_load_image_or_a_named_node():
    prompt = {"4": {"class_type": "LoadImage", "inputs": {}, "_meta": {"title": "Catalog photo"}},
              "9": {"class_type": "SaveImage", "inputs": {}}}
    assert resolve_target(prompt, None) == ("4", "image")
    assert resolve_target(prompt, "Catalog photo.image") == ("4", "image")
    assert resolve_target(prompt, "9.images") == ("9", "images")
    with pytest.raises(Exception, match="names 0 nodes"):
        resolve_target(prompt, "12")
    with pytest.raises(Exception, match="2 LoadImage nodes"):
        resolve_target({**prompt, "5": {"class_type": "LoadImage", "inputs": {}}}, None)


def test_progress_line_shows_rate_and_eta():
    import io

    from catalog.runner import _Progress

    stream = io.StringIO()
    progress = _Progress(stream, total=40)
    progress.started -= 30.0  # 30 s into the run
    progress.update(10, {"done": 8, "skipped": 1, "failed": 1, "bad": 0}, servers=2, final=True)
    line = stream.getvalue()
    assert "10/40" in line and "20.0 items/min" in line and "ETA 90 s" in line and "servers 2" in line, line
