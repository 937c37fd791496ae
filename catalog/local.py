"""`--local N`: N ComfyUI servers on 127.0.0.1 from the pack's own ComfyUI, each in its own
temporary base folder whose custom_nodes holds only this pack (plus any extra node folders)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .client import ComfyClient, ServerDown

PACK_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT = 300.0  # a busy machine can take minutes to import torch and ComfyUI
PACK_FOLDER_NAME = "selective_control"


class LocalServerError(RuntimeError):
    """A local ComfyUI could not be found or did not start."""


@dataclass
class LocalServer:
    url: str
    root: Path
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def find_comfyui(comfyui: Path | None = None, python: Path | None = None) -> tuple[Path, Path]:
    """(ComfyUI folder, its Python): the given ones, else the ComfyUI this pack is installed in
    (…/ComfyUI/custom_nodes/<pack>), else the pack's own `.comfyui` / `.comfyui-latest` with
    the venv beside it (`.venv` / `.venv-latest`)."""
    candidates = [(comfyui, python)] if comfyui else [
        (PACK_ROOT.parents[1], None),
        (PACK_ROOT / ".comfyui", PACK_ROOT / ".venv" / "bin" / "python"),
        (PACK_ROOT / ".comfyui-latest", PACK_ROOT / ".venv-latest" / "bin" / "python"),
    ]
    for folder, interpreter in candidates:
        if folder and (Path(folder) / "main.py").is_file():
            chosen = python or interpreter
            return Path(folder).resolve(), Path(chosen if chosen and Path(chosen).exists() else sys.executable)
    raise LocalServerError(
        f"no ComfyUI found for --local (looked in {[str(c[0]) for c in candidates if c[0]]}): pass --comfyui "
        "PATH (the folder with main.py) or give --server URLs of running servers")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _launch(comfyui: Path, python: Path, extra_nodes: list[Path], cpu_threads: int | None) -> LocalServer:
    root = Path(tempfile.mkdtemp(prefix="catalog-comfyui-"))
    for name in ("custom_nodes", "user", "input", "output", "temp", "models"):
        (root / name).mkdir()
    links = {PACK_FOLDER_NAME: PACK_ROOT, **{Path(folder).name: Path(folder) for folder in extra_nodes}}
    for name, folder in links.items():
        (root / "custom_nodes" / name).symlink_to(folder.resolve(), target_is_directory=True)
    port = _free_port()
    command = [str(python), str(comfyui / "main.py"), "--listen", HOST, "--port", str(port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(root),
               "--user-directory", str(root / "user"), "--input-directory", str(root / "input"),
               "--output-directory", str(root / "output"), "--temp-directory", str(root / "temp")]
    env = dict(os.environ)
    if cpu_threads:
        command.append("--cpu")
        env["OMP_NUM_THREADS"] = str(cpu_threads)  # the child's only: servers share the cores
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=str(comfyui), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
    return LocalServer(f"http://{HOST}:{port}", root, process)


def _wait_ready(server: LocalServer, deadline: float) -> None:
    client = ComfyClient(server.url, timeout=2)
    while True:
        if server.process.poll() is not None:
            raise LocalServerError(f"ComfyUI exited with code {server.process.returncode} while starting "
                                   f"(log {server.log}):\n{server.log_tail()}")
        try:
            client.get_json("/object_info/LoadImage")
            return
        except ServerDown:
            if time.monotonic() > deadline:
                raise LocalServerError(f"ComfyUI at {server.url} did not answer in time:\n"
                                       f"{server.log_tail()}") from None
            time.sleep(0.25)


def stop(server: LocalServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)
    shutil.rmtree(server.root, ignore_errors=True)


@contextlib.contextmanager
def local_servers(count: int, comfyui: Path | None = None, python: Path | None = None,
                  extra_nodes: list[Path] = (), cpu: bool = False,
                  start_timeout: float = START_TIMEOUT) -> Iterator[list[LocalServer]]:
    """Start ``count`` servers at once, wait until all answer (each start gives up after
    ``start_timeout`` seconds; ``math.inf``: only when the server exits), stop them all on exit.
    With ``cpu`` they run on the CPU and split its cores between them (torch threads)."""
    folder, interpreter = find_comfyui(comfyui, python)
    threads = max(1, (os.cpu_count() or 1) // count) if cpu else None
    servers: list[LocalServer] = []
    try:
        servers = [_launch(folder, interpreter, list(extra_nodes), threads) for _ in range(count)]
        deadline = time.monotonic() + start_timeout
        for server in servers:
            _wait_ready(server, deadline)
        yield servers
    finally:
        for server in servers:
            stop(server)
