"""The pack inside a real ComfyUI server process, spoken to over HTTP on 127.0.0.1.

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
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import comfy

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
PROMPT_TIMEOUT = 30.0
PACK_MODULE = f"custom_nodes.{comfy.PACK_FOLDER_NAME}"


class Server:
    def __init__(self, root: Path, port: int, process: subprocess.Popen, log: Path):
        self.root, self.port, self.process, self.log = root, port, process, log
        self.output = root / "output"

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


@pytest.fixture(scope="module")
def server():
    import torch

    root = Path(tempfile.mkdtemp(prefix="selective-control-server-"))
    for name in ("custom_nodes", "user", "input", "output", "temp", "models"):
        (root / name).mkdir()
    (root / "custom_nodes" / comfy.PACK_FOLDER_NAME).symlink_to(comfy.REPO_ROOT, target_is_directory=True)
    port = _free_port()
    command = [
        sys.executable, str(comfy.COMFYUI_DIR / "main.py"),
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
        process = subprocess.Popen(command, cwd=str(comfy.COMFYUI_DIR), stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    instance = Server(root, port, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {process.returncode} while starting:\n{instance.log_text()[-4000:]}")
            try:
                instance.get("/object_info/EmptyImage", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT:.0f} s:\n{instance.log_text()[-4000:]}")
                time.sleep(0.25)
        yield instance
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def _pack_node_ids_in_process() -> set[str]:
    comfy.boot()
    import nodes

    return {name for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == PACK_MODULE}


def test_pack_loads_without_import_errors(server):
    log = server.log_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and comfy.PACK_FOLDER_NAME in line]
    assert not failed, "\n".join(failed) + "\n" + log[-4000:]
    # Only this pack is loaded from custom_nodes.
    assert "websocket_image_save" not in log


def test_object_info_lists_every_pack_node(server):
    info = server.get("/object_info", timeout=30)
    expected = _pack_node_ids_in_process()
    served = {name for name, node in info.items() if node.get("python_module") == PACK_MODULE}
    assert served == expected
    assert all(name.startswith("SC") for name in served), sorted(served)
    for name in expected:
        assert info[name]["category"].startswith("selective_control"), name


def test_extensions_serves_the_pack_js(server):
    shipped = sorted(p.relative_to(comfy.REPO_ROOT / "js").as_posix()
                     for p in (comfy.REPO_ROOT / "js").rglob("*.js"))
    listed = server.get("/extensions")
    prefix = f"/extensions/{comfy.PACK_FOLDER_NAME}/"
    ours = sorted(path[len(prefix):] for path in listed if path.startswith(prefix))
    assert ours == shipped
    for name in ours:
        with urllib.request.urlopen(server.url + prefix + name, timeout=10) as response:
            assert response.status == 200


def test_queued_prompt_saves_the_image(server):
    prefix = f"server_test_{uuid.uuid4().hex[:8]}"
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1, "color": 0x336699}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }
    answer = server.post("/prompt", {"prompt": prompt, "client_id": "selective-control-tests"})
    assert not answer.get("node_errors"), answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + PROMPT_TIMEOUT
    while True:
        history = server.get(f"/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed"):
            break
        if entry and entry.get("status", {}).get("status_str") == "error":
            pytest.fail(f"prompt failed: {entry['status']}")
        if time.monotonic() > deadline:
            pytest.fail(f"prompt {prompt_id} not done within {PROMPT_TIMEOUT:.0f} s:\n{server.log_text()[-3000:]}")
        time.sleep(0.1)
    images = entry["outputs"]["3"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    path = server.output / images[0]["subfolder"] / images[0]["filename"]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (6, 8, 3)
    # SaveImage truncates 255 * value, so 1 - 0.4 may land one below.
    expected = np.array([255 - 0x33, 255 - 0x66, 255 - 0x99])
    assert np.abs(pixels.astype(int) - expected).max() <= 1, pixels[0, 0]
