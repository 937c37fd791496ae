"""The catalog runner (catalog/) on a local Ray with two real ComfyUI CPU servers on 127.0.0.1,
running a tiny-model workflow (tests/data/catalog_tiny.json: tiny SD1.5 img2img, then Filter By
Found on a brightness test, then SaveImage) over 40 small images.

Executions are counted from the servers' own /history (each prompt carries its item in
extra_data), so "exactly once" is what the servers did, not what the runner believes. Nothing
here waits on a clock: kills happen at a chosen point of the run (after the n-th finished item),
faulty servers are loopback proxies that fail on a chosen route. The server-killing test runs
last: it kills one of the two shared servers.
"""
from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import itertools
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from harness import comfy
from PIL import Image

ray = pytest.importorskip("ray", reason="the catalog runner needs Ray: pip install ray")

from catalog import __main__ as cli
from catalog.client import ComfyClient
from catalog.items import discover, image_problem
from catalog.local import local_servers
from catalog.manifest import FILE_NAME, LOCK_NAME, Manifest, OutputInUse
from catalog.runner import Job, ServerWorker, _Dispatcher, output_names, resolve_target, run, upload_name

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
WORKFLOW = json.loads((DATA / "catalog_tiny.json").read_text())
SERVER_NODES = Path(__file__).parent / "catalog_server_nodes"
COUNT = 40
DARK = {3, 17, 29}  # below TestFoundIfBright's threshold: Filter By Found blocks, nothing is saved
CRAFTED_NAME = "x\"; filename*=UTF-8''sub%2Fvictim.png; d=\""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def servers():
    # No start deadline: a loaded machine may take minutes; a server that cannot start exits, and that ends the wait.
    with local_servers(2, comfy.COMFYUI_DIR, Path(sys.executable), extra_nodes=[SERVER_NODES], cpu=True,
                       start_timeout=math.inf) as started:
        yield started


def _make_images(folder: Path, count: int = COUNT, shade: int = 0) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        value = 30 if i in DARK else 120 + 3 * i + shade  # every image different, so mixed-up outputs show
        pixels = np.full((32, 32, 3), value, np.uint8)
        pixels[: 4 + i % 24, :, 0] = 255 - value
        path = folder / f"photo_{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _job(tmp_path: Path, urls: list[str], sources, **options) -> Job:
    """A run with no time limit per prompt: on a loaded machine a tiny prompt may take minutes."""
    return Job(options.pop("workflow", WORKFLOW), sources, tmp_path / "out", urls, **{"timeout": math.inf, **options})


def _urls(servers) -> list[str]:
    return [s.url for s in servers]


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
    with contextlib.closing(sqlite3.connect(out / FILE_NAME)) as db:
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
    """Every image file under ``out``, as paths relative to it."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*.png")}


def _after_finished(count: int, action, finished=Manifest.finished):
    """Manifest.finished that runs ``action()`` right after the ``count``-th item is finished."""
    calls = itertools.count(1)

    def finished_then_act(self, *args, **kwargs):
        finished(self, *args, **kwargs)
        if next(calls) == count:
            action()

    return finished_then_act


# `python -m catalog` that SIGKILLs itself right after its KILL_AFTER-th item is finished.
_KILLED_DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from catalog import __main__ as cli, manifest
from test_catalog import _after_finished
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
manifest.Manifest.finished = _after_finished(int(os.environ["KILL_AFTER"]), kill)
sys.exit(cli.main(sys.argv[1:]))
"""


# ---------------------------------------------------------------------------------------
# Faulty servers: loopback proxies in front of a real one
# ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _faulty_proxy(target: str, fault: str, route: str):
    """An HTTP proxy on 127.0.0.1 in front of ``target`` that answers requests for ``route``
    wrongly: ``cut`` forwards the answer's headers and half its body, then closes the connection;
    ``html`` answers 200 with an HTML page (a login or error page of a proxy). It listens on
    loopback only, one thread per connection, and stops with the block."""
    upstream = urllib.parse.urlsplit(target)
    page = b"<!DOCTYPE html><html><body><h1>Sign in to continue</h1></body></html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.forward()

        def do_POST(self) -> None:
            self.forward()

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            faulty = urllib.parse.urlsplit(self.path).path.startswith(route)
            if faulty and fault == "html":
                self.answer(200, "text/html; charset=utf-8", page)
                return
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port)
            try:
                headers = {"Content-Type": self.headers["Content-Type"]} if self.headers["Content-Type"] else {}
                connection.request(self.command, self.path, body or None, headers)
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            self.answer(response.status, response.headers.get("Content-Type", "application/octet-stream"), data,
                        cut=faulty and fault == "cut")

        def answer(self, status: int, kind: str, data: bytes, cut: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if cut else data)
            self.close_connection = cut

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("fault, route, message", [
    ("cut", "/view", "IncompleteRead"),
    ("html", "/view", "answered something else (text/html"),
    ("html", "/history", "answered no JSON object"),
    ("html", "/prompt", "answered no JSON object"),
    ("html", "/upload/image", "answered no JSON object"),
])
def test_an_answer_cut_off_or_not_comfyuis_means_the_server_is_down(servers, tmp_path, fault, route, message):
    source = _make_images(tmp_path / "in", 1)[0]
    data = source.read_bytes()
    with _faulty_proxy(servers[0].url, fault, route) as url:
        worker = ServerWorker(url, WORKFLOW, "catalog_tiny.json", None, timeout=math.inf)
        assert worker.prepare() is None
        result = worker.process(str(source), upload_name(str(source), data), data)
    assert result["status"] == "down", result
    assert message in result["error"], result["error"]


# ---------------------------------------------------------------------------------------
# Runs on the two servers
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(local_ray, servers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    sources = _make_images(tmp / "in")
    report = run(_job(tmp, _urls(servers), discover([str(tmp / "in")])))
    return tmp, sources, report


def test_every_image_is_done_exactly_once(first_run, servers):
    tmp, sources, report = first_run
    assert (report.done, report.skipped, report.failed, report.bad, report.pending) == (
        COUNT - len(DARK), len(DARK), [], [], 0), report.text()
    assert _executions(servers, sources) == {str(p): 1 for p in sources}
    assert _saved(tmp / "out") == _expected_outputs(sources)
    # Work went to both servers (the first hand-out fills every server's per_server slots), and
    # each reports its own time per item.
    assert all(stats["items"] >= 2 and stats["seconds_per_item"] > 0 for stats in report.servers.values()), report.servers
    # Each output is its own source's (sources differ, and so do their outputs).
    pixels = [_pixels(tmp / "out" / name) for name in sorted(_saved(tmp / "out"))]
    assert len({p.tobytes() for p in pixels}) == len(pixels)


def test_re_running_a_finished_job_redoes_nothing(first_run, servers):
    tmp, sources, _ = first_run
    before = {p.name: p.stat().st_mtime_ns for p in (tmp / "out").iterdir() if p.suffix == ".png"}
    report = run(_job(tmp, _urls(servers), discover([str(tmp / "in")])))
    assert report.processed == 0 and report.done == COUNT - len(DARK) and report.skipped == len(DARK)
    assert _executions(servers, sources) == {str(p): 1 for p in sources}
    assert {p.name: p.stat().st_mtime_ns for p in (tmp / "out").iterdir() if p.suffix == ".png"} == before


def test_killing_the_driver_then_re_running_finishes_the_rest_and_redoes_none(first_run, servers, tmp_path):
    sources = _make_images(tmp_path / "in")
    out = tmp_path / "out"
    workflow_file = tmp_path / "workflow.json"
    workflow_file.write_text(json.dumps(WORKFLOW))
    command = [sys.executable, "-c", _KILLED_DRIVER.format(tests=str(Path(__file__).parent)), str(workflow_file),
               str(tmp_path / "in"), "--out", str(out), "--server", *_urls(servers),
               "--address", ray.get_runtime_context().gcs_address, "--timeout", "inf", "--quiet"]
    driver = subprocess.run(command, cwd=comfy.REPO_ROOT, env={**os.environ, "KILL_AFTER": "8"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert driver.returncode == -signal.SIGKILL, driver.stdout.decode(errors="replace")[-3000:]
    first = _statuses(out)
    finished_first = {key for key, status in first.items() if status in ("done", "skipped")}
    assert len(finished_first) == 8, first

    report = run(_job(tmp_path, _urls(servers), discover([str(tmp_path / "in")])))
    assert (report.done, report.skipped, report.failed, report.pending) == (COUNT - len(DARK), len(DARK), [], 0)
    assert report.processed == COUNT - 8
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
    report = run(_job(tmp_path, _urls(servers), discover([str(folder)]), max_pixels=100 * 100))
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
    report = run(_job(tmp_path, _urls(servers), discover([str(tmp_path / "in")]), workflow=workflow,
                      attempts=2, stop_after_failures=4))
    assert report.stopped and "4 items in a row failed" in report.stopped
    assert len(report.failed) == 4 and report.done == 0 and report.pending == COUNT - 4  # it stopped early
    for _, attempts, error in report.failed:
        assert attempts == 2
        assert "TinyCheckpointLoader" in error and "sd3" in error, error
    assert "sd3" in report.text() and "Run the same command again" in report.text()
    assert not _executions(servers, sources)  # nothing invalid was ever queued


def test_servers_that_cut_a_download_or_answer_html_are_dropped_and_their_items_done_once(
        local_ray, servers, tmp_path):
    """Sources of the same names in two folders; one good server and two proxies in front of the
    other: one cuts every download halfway, one answers /history with an HTML page."""
    # 3 + 3, none of them dark: the first hand-out gives each of the three servers two items.
    sources = _make_images(tmp_path / "in" / "a", 3) + _make_images(tmp_path / "in" / "b", 3, shade=1)
    out = tmp_path / "out"
    with _faulty_proxy(servers[1].url, "cut", "/view") as cutting, \
            _faulty_proxy(servers[1].url, "html", "/history") as html:
        report = run(_job(tmp_path, [servers[0].url, cutting, html], discover([str(tmp_path / "in")])))
    assert (report.done, report.skipped, report.failed, report.bad, report.pending) == (6, 0, [], [], 0), report.text()
    assert "IncompleteRead" in report.servers[cutting]["dropped"], report.servers
    assert "answered no JSON object" in report.servers[html]["dropped"], report.servers
    assert report.servers[servers[0].url]["dropped"] is None and report.servers[servers[0].url]["items"] == 6
    # Every item was executed once on the good server and saved once, under its folder.
    assert _executions(servers[:1], sources) == {str(p): 1 for p in sources}
    assert _saved(out) == {f"{folder}/photo_{i:02d}.png" for folder in "ab" for i in range(3)}
    with contextlib.closing(sqlite3.connect(out / FILE_NAME)) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM outputs").fetchone() == (6, 6)
    pixels = [_pixels(out / name).tobytes() for name in _saved(out)]
    assert len(set(pixels)) == 6


def test_a_crafted_source_name_cannot_choose_the_uploaded_files_name(local_ray, servers, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    crafted = folder / CRAFTED_NAME
    Image.new("RGB", (32, 32), (200, 150, 100)).save(crafted, format="PNG")
    victim = servers[0].root / "input" / "sub" / "victim.png"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"another user's file")
    before = {p for p in (servers[0].root / "input").rglob("*")}
    report = run(_job(tmp_path, [servers[0].url], [crafted]))
    assert report.done == 1, report.text()
    added = {p for p in (servers[0].root / "input").rglob("*")} - before
    assert [p.name for p in added] == [upload_name(str(crafted), crafted.read_bytes())]
    assert victim.read_bytes() == b"another user's file"
    assert _saved(tmp_path / "out") == {f"{crafted.stem}.png"}


def test_killing_a_server_mid_run_still_does_every_image_once(first_run, servers, tmp_path, monkeypatch):
    """Runs last in this module: it kills one of the shared servers, right after the 6th item is done."""
    sources = _make_images(tmp_path / "in")
    out = tmp_path / "out"
    victim = servers[1]

    def kill_victim() -> None:
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()

    monkeypatch.setattr(Manifest, "finished", _after_finished(6, kill_victim))
    report = run(_job(tmp_path, _urls(servers), discover([str(tmp_path / "in")])))
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
    assert output_names("a/shoe", [("x.png", b"")]) == ["a/shoe.png"]


def test_an_output_that_cannot_be_written_fails_its_item_only(tmp_path):
    """A source folder named like another source's output (`a.png/` beside `a.png`), and a file
    in --out that no item wrote: those items fail with the reason, the others are saved."""
    sources = [Path("/in/a.png"), Path("/in/a.png/x.png"), Path("/in/b.png"), Path("/in/c.png")]
    job = _job(tmp_path, [], sources)
    manifest = Manifest(job.output)
    manifest.add(sources)
    (job.output / "c.png").write_bytes(b"someone else's")
    dispatcher = _Dispatcher(job, manifest, manifest.todo([str(p) for p in sources]), ray=None)
    for source in sources:
        dispatcher.save(str(source), "http://s", {"files": [("o.png", source.name.encode())], "seconds": 1.0})
    rows = {row["key"]: (row["status"], row["error"]) for row in manifest.rows()}
    manifest.close()
    assert rows["/in/a.png"] == rows["/in/b.png"] == ("done", None)
    assert rows["/in/a.png/x.png"][0] == "failed" and "could not be written" in rows["/in/a.png/x.png"][1]
    assert rows["/in/c.png"][0] == "failed" and "already exists or is another item's" in rows["/in/c.png"][1]
    assert (job.output / "a.png").read_bytes() == b"a.png" and (job.output / "c.png").read_bytes() == b"someone else's"


def test_upload_names_are_made_by_the_runner_and_the_client_sends_no_other():
    name = upload_name(f"/photos/{CRAFTED_NAME}", b"pixels")
    assert name.startswith("catalog_") and name.endswith(".png") and set(name[8:-4]) <= set("0123456789abcdef")
    assert upload_name("/photos/front.JPG", b"pixels").endswith(".jpg")
    assert upload_name("/photos/front.jpg", b"pixels") != upload_name("/other/front.jpg", b"pixels")
    assert upload_name("/photos/front.jpg", b"pixels") != upload_name("/photos/front.jpg", b"other pixels")
    with pytest.raises(ValueError, match="not a plain file name"):
        ComfyClient("http://127.0.0.1:9").upload_image(CRAFTED_NAME, b"pixels")  # refused before any request


def test_manifest_gives_sources_of_the_same_stem_distinct_outputs_and_recovers_a_killed_run(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add([Path("/x/a/shoe.png"), Path("/x/b/shoe.png"), Path("/x/a/shoe.jpg")])
    stems = {row["key"]: row["stem"] for row in manifest.rows()}
    assert stems == {"/x/a/shoe.png": "a/shoe", "/x/b/shoe.png": "b/shoe", "/x/a/shoe.jpg": "a/shoe_jpg"}
    manifest.running("/x/a/shoe.png", "s1")
    manifest.saving("/x/b/shoe.png", ["b/shoe.png"])  # killed after naming, before writing
    manifest.saving("/x/a/shoe.jpg", ["a/shoe_jpg.png"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "shoe_jpg.png").write_bytes(b"x")  # killed after writing, before 'done'
    manifest.close()
    manifest = Manifest(tmp_path)
    statuses = {row["key"]: row["status"] for row in manifest.rows()}
    assert statuses == {"/x/a/shoe.png": "pending", "/x/b/shoe.png": "pending", "/x/a/shoe.jpg": "done"}
    assert manifest.owner_of("a/shoe_jpg.png") == manifest.owner_of("A/SHOE_JPG.PNG") == "/x/a/shoe.jpg"
    assert manifest.owner_of("a/shoe.png") is None
    manifest.close()


def test_any_number_of_sources_with_one_stem_get_their_own_stems(tmp_path):
    manifest = Manifest(tmp_path / "skus")
    skus = [Path(f"/catalog/sku{i:05d}/front.jpg") for i in range(10_001)]
    manifest.add(skus)  # was: StopIteration after 10,000
    stems = [row["stem"] for row in manifest.rows()]
    manifest.close()
    assert stems[:2] == ["sku00000/front", "sku00001/front"]
    assert len({stem.lower() for stem in stems}) == 10_001

    manifest = Manifest(tmp_path / "batches")
    # One folder after another, one run each (camera names repeat across batches): the root moves up.
    for batch in range(3):
        manifest.add([Path(f"/batches/{batch}/front.jpg")])
    # Then names that differ only in case (a case-sensitive disk; outputs may go to one that is not).
    manifest.add([Path("/batches/2/front.JPG"), Path("/batches/2/FRONT.jpg")])
    stems = {row["key"][len("/batches/"):]: row["stem"] for row in manifest.rows()}
    manifest.close()
    assert stems == {"0/front.jpg": "front", "1/front.jpg": "1/front", "2/front.jpg": "2/front",
                     "2/front.JPG": "2/front_jpg", "2/FRONT.jpg": "2/FRONT_jpg (2)"}


@pytest.mark.parametrize("order", [1, -1])
def test_no_two_sources_can_write_the_same_output_name(tmp_path, order):
    """Whatever number of files each prompt saves, ignoring case: `cat` saving two files writes
    cat_1.png and cat_2.png, so `cat_1.png` cannot be `cat_1`, in either order of arrival."""
    names = ["cat.png", "cat_1.png", "cat_2.jpg", "Cat.jpg", "cat_1_1.png", "CAT_01.png", "cat_png.png",
             "cat_1_png.png", "a/cat.png", "a/cat_1.png", "cat (2).png", "cat.tar.png", "cat.png.png"]
    manifest = Manifest(tmp_path)
    manifest.add([Path("/p") / name for name in names[::order]])
    stems = {row["key"]: row["stem"] for row in manifest.rows()}
    manifest.close()
    written = collections.Counter(name.lower() for stem in stems.values() for name in set().union(
        *(output_names(stem, [("o.png", b"")] * count) for count in (1, 2, 3))))
    assert [name for name, times in written.items() if times > 1] == [], stems
    if order == 1:  # sorted, as discover() gives them
        assert [stems[f"/p/{name}"] for name in ("cat.png", "cat_1.png", "a/cat.png", "a/cat_1.png")] == [
            "cat", "cat_1_png", "a/cat", "a/cat_1_png"]


def test_a_manifest_of_the_earlier_layout_is_upgraded_in_place(tmp_path):
    with contextlib.closing(sqlite3.connect(tmp_path / FILE_NAME)) as db:
        db.executescript("""
            CREATE TABLE items (key TEXT PRIMARY KEY, stem TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, outputs TEXT NOT NULL DEFAULT '[]', error TEXT, server TEXT,
                seconds REAL, updated REAL);
            CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
            INSERT INTO items (key, stem, status, outputs) VALUES ('/p/cat.png', 'cat', 'done', '["cat_1.png", "cat_2.png"]');
        """)
        db.commit()
    manifest = Manifest(tmp_path)
    assert manifest.owner_of("cat_2.png") == "/p/cat.png"
    manifest.add([Path("/q/cat_1.png")])
    assert {row["key"]: row["stem"] for row in manifest.rows()}["/q/cat_1.png"] == "cat_1_png"
    manifest.close()


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path, caplog):
    out = tmp_path / "out"
    holder = Manifest(out)
    with pytest.raises(OutputInUse, match=r"in use by another catalog run \(pid \d+ on .*\): wait until it ends"):
        Manifest(out)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "workflow.json").write_text(json.dumps(WORKFLOW))
    with caplog.at_level(logging.ERROR, logger="catalog"):
        code = cli.main([str(tmp_path / "workflow.json"), str(tmp_path / "in"), "--out", str(out),
                         "--server", "http://127.0.0.1:9", "--quiet"])
    assert code == 2 and "in use by another catalog run" in caplog.text
    holder.close()
    Manifest(out).close()  # free again once the first run ends


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "out"
    code = (f"import sys; sys.path.insert(0, {str(comfy.REPO_ROOT)!r}); from catalog.manifest import Manifest\n"
            f"held = Manifest({str(out)!r}); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputInUse, match=rf"pid {holder.pid} "):
            Manifest(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).is_file()  # the dead run's lock file is still there, and does not block
    Manifest(out).close()


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
