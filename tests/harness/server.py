"""A real ComfyUI server process for tests, spoken to over HTTP on 127.0.0.1.

The server gets its own temporary base directory whose ``custom_nodes`` folder holds only a
link to this repository, so it loads this pack and nothing else, and writes nowhere else.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from . import comfy

HOST = "127.0.0.1"
START_TIMEOUT = 240.0  # ComfyUI 0.33 imports ~100 comfy_extras modules: minutes on a loaded 2-core machine


class Server:
    def __init__(self, root: Path, port: int, process: subprocess.Popen, log: Path):
        self.root, self.port, self.process, self.log = root, port, process, log
        self.output = root / "output"
        self.user = root / "user"
        self.models = root / "models"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def get(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, data: dict, timeout: float = 10.0):
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST {path} -> {error.code}: {error.read().decode(errors='replace')}") from error

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def running_server(prepare: Callable[[Path], None] | None = None,
                   start_timeout: float = START_TIMEOUT, python: Path | None = None,
                   comfyui_dir: Path | None = None, link_pack: bool = True) -> Iterator[Server]:
    """Start ``main.py`` in a fresh temporary base directory and stop it (and delete the
    folder) on exit. ``prepare(root)`` may put files into ``root/user``, ``root/models``, ...
    before the server starts. ``python``/``comfyui_dir``: another environment and ComfyUI than
    the tests' own; ``link_pack=False`` leaves ``custom_nodes`` to ``prepare`` (e.g. a clone)."""
    import torch

    comfyui_dir = comfyui_dir or comfy.COMFYUI_DIR
    root = Path(tempfile.mkdtemp(prefix="selective-control-server-"))
    for name in ("custom_nodes", "user", "input", "output", "temp", "models"):
        (root / name).mkdir()
    if link_pack:
        (root / "custom_nodes" / comfy.PACK_FOLDER_NAME).symlink_to(comfy.REPO_ROOT, target_is_directory=True)
    if prepare is not None:
        prepare(root)
    port = _free_port()
    command = [
        str(python or sys.executable), str(comfyui_dir / "main.py"),
        "--listen", HOST, "--port", str(port), "--disable-auto-launch", "--disable-api-nodes",
        "--base-directory", str(root),  # custom_nodes and models come from here
        "--user-directory", str(root / "user"), "--input-directory", str(root / "input"),
        "--output-directory", str(root / "output"), "--temp-directory", str(root / "temp"),
    ]
    if not torch.cuda.is_available():
        command.append("--cpu")
    log = root / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=str(comfyui_dir), stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    instance = Server(root, port, process, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {process.returncode} while starting:\n{instance.log_text()[-4000:]}")
            try:
                instance.get("/object_info/EmptyImage", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within {start_timeout:.0f} s:\n{instance.log_text()[-4000:]}")
                time.sleep(0.25)
        yield instance
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)
