"""The catalog run: one Ray actor per ComfyUI server, items handed to whichever server has a
free slot, results saved by the driver into the output folder under the manifest's control."""
from __future__ import annotations

import copy
import hashlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import manifest as manifest_module
from .client import (
    ComfyClient,
    PromptFailed,
    ServerDown,
    execution_seconds,
    saved_files,
)
from .convert import WorkflowError, to_api_prompt
from .items import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, image_problem

PACKAGE_DIR = Path(__file__).resolve().parent
_WAIT_STEP = 0.5  # seconds the driver waits for a result before it refreshes the progress line


class RunError(RuntimeError):
    """The run cannot start (no usable server, bad target, ...); the message says why."""


@dataclass
class Job:
    workflow: dict
    sources: list[Path]
    output: Path
    servers: list[str]
    workflow_name: str = "<workflow>"
    target: str | None = None  # "12", "12.image", "Load Image" or None for the only LoadImage
    attempts: int = 3  # tries per item, each on another server when there is one
    per_server: int = 2  # prompts in flight per server: the next one is queued while one runs
    timeout: float = 600.0  # per prompt
    max_pixels: int = DEFAULT_MAX_PIXELS
    stop_after_failures: int = 10  # this many items failing for good in a row stop the run; 0 never
    new_workflow: bool = False
    progress: TextIO | None = None  # where the progress line goes (None: nowhere)
    address: str | None = None  # Ray cluster to join; None starts a local Ray unless one is running


@dataclass
class Report:
    done: int = 0
    skipped: int = 0
    pending: int = 0
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (source, attempts, error)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    # url -> items, seconds per item (the server's own execution time), dropped (why, or None)
    servers: dict[str, dict] = field(default_factory=dict)
    processed: int = 0  # items finished by this run
    seconds: float = 0.0  # from the first item handed out to the last result (servers ready)
    stopped: str | None = None

    def as_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "pending": self.pending,
                "failed": [{"source": s, "attempts": a, "error": e} for s, a, e in self.failed],
                "bad": [{"source": s, "reason": r} for s, r in self.bad], "servers": self.servers,
                "processed": self.processed, "seconds": round(self.seconds, 3), "stopped": self.stopped}

    def text(self) -> str:
        summary = (f"done {self.done}, skipped {self.skipped} (nothing saved: e.g. Filter By Found found no "
                   f"product), failed {len(self.failed)}, bad input {len(self.bad)}, not done {self.pending}")
        lines = [summary]
        if self.stopped:
            lines.append(f"STOPPED: {self.stopped}")
        lines += [f"  failed {source} after {attempts} attempt(s): {error}" for source, attempts, error in self.failed]
        lines += [f"  bad input {source}: {reason}" for source, reason in self.bad]
        for url, stats in self.servers.items():
            per_item = f"{stats['seconds_per_item']:.3f} s/item" if stats["items"] else "no items"
            dropped = f", dropped: {stats['dropped']}" if stats.get("dropped") else ""
            lines.append(f"  server {url}: {stats['items']} items, {per_item}{dropped}")
        if self.pending:
            lines.append("Run the same command again to finish what is not done.")
        return "\n".join(lines)


def resolve_target(prompt: dict, target: str | None) -> tuple[str, str]:
    """(node id, input name) that receives each item's uploaded file name."""
    if target is None:
        loaders = sorted(node_id for node_id, node in prompt.items() if node["class_type"] == "LoadImage")
        if len(loaders) != 1:
            raise RunError(f"the workflow has {len(loaders)} LoadImage nodes ({loaders}): say which one receives "
                           "the items with --target NODE_ID (or NODE_ID.input_name)")
        return loaders[0], "image"
    name, _, input_name = target.partition(".")
    matches = [node_id for node_id, node in prompt.items()
               if node_id == name or (node.get("_meta") or {}).get("title") == name]
    if len(matches) != 1:
        raise RunError(f"--target {target!r} names {len(matches)} nodes; use a node id from the workflow "
                       f"({sorted(prompt, key=lambda n: (len(n), n))})")
    return matches[0], input_name or "image"


class ServerWorker:
    """Runs items on one ComfyUI server: upload, queue, wait on /history, fetch the outputs.
    Never raises for an item: returns {"status": "ok" | "failed" | "down", ...}."""

    def __init__(self, url: str, workflow: dict, workflow_name: str, target: str | None, timeout: float):
        self.client = ComfyClient(url)
        self.url, self.timeout = url, timeout
        self.workflow, self.workflow_name, self.target = workflow, workflow_name, target
        self.prompt: dict | None = None

    def prepare(self) -> str | None:
        """Convert the workflow with this server's own node definitions; an error text if unusable."""
        try:
            prompt = to_api_prompt(self.workflow, self.client.object_info(), source=self.workflow_name,
                                   frontend_version=self.client.frontend_version())
            self.node, self.input = resolve_target(prompt, self.target)
        except (ServerDown, WorkflowError, RunError) as error:
            return str(error)
        self.prompt = prompt
        return None

    def process(self, key: str, upload_name: str, data: bytes) -> dict:
        started = time.monotonic()
        try:
            prompt = copy.deepcopy(self.prompt)
            prompt[self.node]["inputs"][self.input] = self.client.upload_image(upload_name, data)
            prompt_id = self.client.queue(prompt, {"catalog_item": key})
            entry = self.client.wait(prompt_id, self.timeout)
            files = [(f["filename"], self.client.download(f)) for f in saved_files(entry)]
        except PromptFailed as error:
            return {"status": "failed", "error": str(error)}
        except ServerDown as error:
            return {"status": "down", "error": str(error)}
        seconds = execution_seconds(entry)
        return {"status": "ok", "files": files, "seconds": time.monotonic() - started if seconds is None else seconds}


def upload_name(key: str, data: bytes) -> str:
    """The name an item is uploaded under: a hash of its source path and bytes, plus an image
    suffix. Never the source's own name, which could carry header syntax or a path and so choose
    (and overwrite) another file on the server; the same item gets the same name on every try."""
    suffix = Path(key).suffix.lower()
    digest = hashlib.sha256(os.fsencode(key) + b"\0" + data).hexdigest()[:32]
    return f"catalog_{digest}{suffix if suffix in IMAGE_SUFFIXES else '.png'}"


def output_names(stem: str, files: list[tuple[str, bytes]]) -> list[str]:
    """Output file names from the item's stem (see manifest.py): `stem.ext` for one file,
    `stem_1.ext`, ... else."""
    if len(files) == 1:
        return [stem + Path(files[0][0]).suffix]
    return [f"{stem}_{i}{Path(name).suffix}" for i, (name, _) in enumerate(files, 1)]


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class _Progress:
    """One status line: items/min over this run and the ETA of what is left."""

    def __init__(self, stream: TextIO | None, total: int):
        self.stream, self.total = stream, total
        self.started = time.monotonic()
        self.last = 0.0
        self.tty = bool(stream) and stream.isatty()

    def update(self, finished: int, counts: dict, servers: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.stream or (not final and now - self.last < (0.2 if self.tty else 10.0)):
            return
        self.last = now
        rate = finished / max(now - self.started, 1e-9) * 60
        left = self.total - finished
        eta = f"{left / rate * 60:.0f} s" if rate > 0 else "?"
        width = 30
        bar = "#" * int(width * finished / max(self.total, 1))
        line = (f"[{bar:<{width}}] {finished}/{self.total}  done {counts['done']} skipped {counts['skipped']} "
                f"failed {counts['failed']} bad {counts['bad']}  {rate:.1f} items/min  ETA {eta}  servers {servers}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        if final and self.tty:
            self.stream.write("\n")
        self.stream.flush()


def run(job: Job) -> Report:
    """Run the job to the end (or until no server is left or too many failures in a row)."""
    import ray

    manifest = manifest_module.Manifest(job.output)
    try:
        manifest.bind_workflow(job.workflow, allow_change=job.new_workflow)
        manifest.add(job.sources)
        todo = manifest.todo([str(p) for p in job.sources])
        if not ray.is_initialized():
            ray.init(address=job.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"py_modules": [str(PACKAGE_DIR)]})
        return _Dispatcher(job, manifest, todo, ray).run()
    finally:
        manifest.close()


class _Dispatcher:
    def __init__(self, job: Job, manifest, todo: list[tuple[str, str]], ray):
        self.job, self.manifest, self.ray = job, manifest, ray
        self.stems = dict(todo)
        self.queue = deque(key for key, _ in todo)
        self.tried: dict[str, set[str]] = {}
        self.attempts: dict[str, int] = {}
        self.in_flight: dict = {}  # ObjectRef -> (key, url)
        self.workers: dict = {}
        self.stats = {url: {"items": 0, "seconds": 0.0, "dropped": None} for url in job.servers}
        self.counts = {"done": 0, "skipped": 0, "failed": 0, "bad": 0}
        self.failures_in_a_row = 0
        self.stopped: str | None = None

    # -- servers --------------------------------------------------------------------------
    def start_workers(self) -> None:
        actor = self.ray.remote(num_cpus=0)(ServerWorker)
        handles = {url: actor.options(max_concurrency=self.job.per_server).remote(
            url, self.job.workflow, self.job.workflow_name, self.job.target, self.job.timeout)
            for url in self.job.servers}
        errors = dict(zip(handles, self.ray.get([h.prepare.remote() for h in handles.values()])))
        for url, handle in handles.items():
            if errors[url]:
                self.drop(url, errors[url], handle)
            else:
                self.workers[url] = handle
        if not self.workers:
            raise RunError("no usable ComfyUI server:\n" + "\n".join(f"  {u}: {e}" for u, e in errors.items()))

    def drop(self, url: str, reason: str, handle=None) -> None:
        self.stats[url]["dropped"] = reason
        handle = handle or self.workers.pop(url, None)
        if handle is not None:
            self.ray.kill(handle)
        for ref, (key, server) in list(self.in_flight.items()):
            if server == url:
                del self.in_flight[ref]
                self.manifest.requeue(key)
                self.queue.appendleft(key)

    # -- items ----------------------------------------------------------------------------
    def next_item(self, url: str) -> tuple[str, bytes] | None:
        """The next usable item for this server, preferring ones it has not tried yet; bad
        files met on the way are recorded and skipped."""
        for _ in range(len(self.queue)):
            key = self.queue[0]
            if url in self.tried.get(key, ()) and len(self.workers) > 1 and any(
                    url not in self.tried.get(k, ()) for k in self.queue):
                self.queue.rotate(-1)
                continue
            self.queue.popleft()
            try:
                data = Path(key).read_bytes()
                problem = image_problem(data, self.job.max_pixels)
            except OSError as error:
                problem = f"unreadable: {error}"
            if problem:
                self.manifest.bad(key, problem)
                self.counts["bad"] += 1
                continue
            return key, data
        return None

    def fill(self) -> None:
        for url, handle in list(self.workers.items()):
            busy = sum(1 for _, server in self.in_flight.values() if server == url)
            while busy < self.job.per_server and self.queue:
                item = self.next_item(url)
                if item is None:
                    break
                key, data = item
                self.tried.setdefault(key, set()).add(url)
                self.manifest.running(key, url)
                self.in_flight[handle.process.remote(key, upload_name(key, data), data)] = (key, url)
                busy += 1

    def finish(self, key: str, url: str, result: dict) -> None:
        if result["status"] == "down":
            self.manifest.requeue(key)
            self.queue.appendleft(key)
            self.drop(url, result["error"])
            return
        if result["status"] == "failed":
            self.attempts[key] = self.attempts.get(key, 0) + 1
            final = self.attempts[key] >= self.job.attempts
            self.manifest.attempt_failed(key, f"{url}: {result['error']}", final)
            if not final:
                self.queue.append(key)
                return
            self.counts["failed"] += 1
            self.failures_in_a_row += 1
            if self.job.stop_after_failures and self.failures_in_a_row >= self.job.stop_after_failures:
                self.stopped = (f"{self.failures_in_a_row} items in a row failed on every try; the last error was "
                                f"{url}: {result['error']}")
            return
        self.failures_in_a_row = 0
        self.stats[url]["items"] += 1
        self.stats[url]["seconds"] += result["seconds"]
        self.save(key, url, result)

    def save(self, key: str, url: str, result: dict) -> None:
        files = result["files"]
        names = output_names(self.stems[key], files)
        for name in names:
            owner = self.manifest.owner_of(name)
            if owner not in (None, key) or (owner is None and (self.job.output / name).exists()):
                self.fail_saving(key, f"output {self.job.output / name} already exists or is another item's: move "
                                 "it away or use another output folder")
                return
        if files:
            self.manifest.saving(key, names)
            try:
                for name, (_, data) in zip(names, files):
                    write_atomically(self.job.output / name, data)
            except OSError as error:
                self.fail_saving(key, f"output could not be written: {error}")
                return
        status = "done" if files else "skipped"
        self.manifest.finished(key, status, url, result["seconds"])
        self.counts[status] += 1

    def fail_saving(self, key: str, error: str) -> None:
        self.manifest.attempt_failed(key, error, final=True)
        self.counts["failed"] += 1

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> Report:
        total = len(self.queue)
        try:
            if self.queue:
                self.start_workers()
            progress = _Progress(self.job.progress, total)
            started = time.monotonic()
            while (self.queue or self.in_flight) and self.workers and not self.stopped:
                self.fill()
                if not self.in_flight:
                    break
                ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=_WAIT_STEP)
                for ref in ready:
                    if ref not in self.in_flight:
                        continue  # its server was dropped meanwhile; the item is queued again
                    key, url = self.in_flight.pop(ref)
                    try:
                        result = self.ray.get(ref)
                    except self.ray.exceptions.RayActorError as error:
                        self.in_flight[ref] = (key, url)
                        self.drop(url, f"its Ray actor died: {error}")
                        continue
                    self.finish(key, url, result)
                progress.update(sum(self.counts.values()), self.counts, len(self.workers))
            seconds = time.monotonic() - started
            if (self.queue or self.in_flight) and not self.workers and not self.stopped:
                self.stopped = "every server was dropped (see below)"
            progress.update(sum(self.counts.values()), self.counts, len(self.workers), final=True)
        finally:
            for key, _ in self.in_flight.values():
                self.manifest.requeue(key)
            for handle in self.workers.values():
                self.ray.kill(handle)
        return self.report(seconds)

    def report(self, seconds: float) -> Report:
        report = Report(processed=self.counts["done"] + self.counts["skipped"], seconds=seconds,
                        stopped=self.stopped)
        for row in self.manifest.rows():
            status = row["status"]
            if status == "done":
                report.done += 1
            elif status == "skipped":
                report.skipped += 1
            elif status == "failed":
                report.failed.append((row["key"], row["attempts"], row["error"]))
            elif status == "bad":
                report.bad.append((row["key"], row["error"]))
            else:
                report.pending += 1
        for url, stats in self.stats.items():
            report.servers[url] = {"items": stats["items"], "dropped": stats["dropped"],
                                   "seconds_per_item": stats["seconds"] / stats["items"] if stats["items"] else None}
        return report

