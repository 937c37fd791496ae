"""The pack inside a real ComfyUI server process (tests/harness/server.py), spoken to over
HTTP on 127.0.0.1; the server loads this pack and nothing else, and writes nowhere else.
"""
from __future__ import annotations

import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from harness import comfy
from harness.server import running_server

pytestmark = pytest.mark.slow

PROMPT_TIMEOUT = 300.0  # a hang guard: the prompt takes well under a second, but load must never cross it
PACK_MODULE = f"custom_nodes.{comfy.PACK_FOLDER_NAME}"


@pytest.fixture(scope="module")
def server():
    with running_server() as instance:
        yield instance


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
