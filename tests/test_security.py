"""Anyone who can queue a prompt picks every input value: no path-like input may read or write outside the
folder it belongs to, and no number or text may make the work unbounded.

Every path-like input of every node is tried through ComfyUI's own validation and executor with: absolute
paths (existing and missing), '..' chains (existing and missing), links inside the folder that point out, NUL
and newline, 5000 characters, and the same name in other letter case. Combo values come through a link (from a
node whose output type is COMBO), because ComfyUI 0.33 checks a typed-in combo value against its list but no
version checks a linked one, and 0.3.75 checks neither for V3 nodes: the pack's own rule must hold on its own.
Everything the attacks aim at lives in a canary folder outside ComfyUI's folders; it is compared byte for
byte before and after, and an audit hook records every open/listdir/scandir/mkdir/remove/rename under it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from harness import REPO_ROOT, PromptError, boot, pack_import, run_prompt, workspace
from harness.fixture_nodes import fixture_node
from harness.tiny_models import register_test_nodes
from PIL import Image

ops = pack_import("nodes.ops.files")
finding_ops = pack_import("nodes.ops.finding")
mask_ops = pack_import("nodes.ops.masks")
models = pack_import("nodes.models")
pack_nodes = pack_import("nodes")
EXAMPLES = REPO_ROOT / "example_inputs"

# A picture no photo has: a 7x5 pattern of odd levels. Nothing outside the folders may come back as an IMAGE.
CANARY_PIXELS = (np.arange(7 * 5 * 3, dtype=np.uint16).reshape(5, 7, 3) * 37 % 251).astype(np.uint8)


def _value_node(name: str, kind: str) -> type:
    return fixture_node(name, f"Test-only node: its text as a {kind} output (a linked value).", (kind,),
                        lambda value: value, {"value": ("STRING", {"default": ""})})


def _refusing_loader(name: str, kind: str) -> type:
    return fixture_node(name, f"Test-only node: None as {kind} (the node must refuse its text first).", (kind,),
                        lambda: None)


_watching: list[str] = []  # the canary folder while a prompt runs
_touched: list[tuple[str, str]] = []
_WATCHED_EVENTS = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename", "os.rmdir",
                   "os.symlink", "os.truncate", "os.chmod", "os.utime", "shutil.rmtree", "shutil.copyfile"}


def _audit(event: str, args: tuple) -> None:
    if not _watching or event not in _WATCHED_EVENTS:
        return
    for arg in args[:2]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            path = os.fsdecode(arg)
            if os.path.realpath(path).startswith(_watching[0]):  # through links too
                _touched.append((event, path))


@dataclass
class Canary:
    root: Path  # outside every ComfyUI folder

    def snapshot(self) -> dict[str, tuple]:
        found = {}
        for path in sorted(self.root.rglob("*")):
            stat = path.lstat()
            content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            found[str(path.relative_to(self.root))] = (stat.st_mode, stat.st_size, stat.st_mtime_ns, content)
        return found


@pytest.fixture(scope="module")
def canary():
    """The canary folder and the links that point into it from inside every folder the pack reads or writes."""
    boot()
    import nodes

    register_test_nodes()
    nodes.NODE_CLASS_MAPPINGS.update(
        SecurityComboValue=_value_node("SecurityComboValue", "COMBO"),
        SecurityTextValue=_value_node("SecurityTextValue", "STRING"),
        SecurityIntValue=fixture_node("SecurityIntValue", "Test-only node: an INT output (a linked value).", ("INT",),
                                      int, {"value": ("STRING", {"default": "0"})}),
        SecurityFloatValue=fixture_node("SecurityFloatValue", "Test-only node: a FLOAT output (a linked value).",
                                        ("FLOAT",), float, {"value": ("STRING", {"default": "0"})}),
        SecurityNoSAM=_refusing_loader("SecurityNoSAM", "SC_SAM_MODEL"),
        SecurityNoClipMatcher=_refusing_loader("SecurityNoClipMatcher", "SC_CLIP_MATCHER"),
    )
    if not _audit_installed:
        sys.addaudithook(_audit)
        _audit_installed.append(True)
    root = Path(tempfile.mkdtemp(prefix="sc-canary-")).resolve()
    ws = workspace()
    assert not str(root).startswith(str(ws.root.resolve()))
    for folder in ("photos", "dataset/images", "dataset/controls", "dataset/masks", "outdir", "models", "clip"):
        (root / folder).mkdir(parents=True)
    for path in ("canary.png", "photos/canary.png", "dataset/images/c.png", "dataset/controls/c.png",
                 "dataset/masks/c.png", "outdir/victim.png"):
        Image.fromarray(CANARY_PIXELS).save(root / path)
    (root / "models" / "sam.pth").write_bytes(b"not read" * 8)
    (root / "models" / "u2netp.onnx").write_bytes(b"not read" * 8)
    (root / "clip" / "config.json").write_text('{"model_type": "clip"}')
    links = {ws.input / "sec_link_photos": root / "photos", ws.input / "sec_link_dataset": root / "dataset",
             ws.output / "sec_link_out": root / "outdir", ws.output / "sec_named" / "victim.png": root / "outdir/victim.png",
             ws.models / "sams" / "sec_link.pth": root / "models/sam.pth",
             ws.models / "rembg" / "u2netp.onnx": root / "models/u2netp.onnx",
             ws.models / "clip_matcher" / "sec_link": root / "clip",
             ws.models / "controlnet" / "sec_link": root / "outdir"}
    # A file an earlier test left under a link's name (test_rembg's u2netp.onnx) is set aside and put back after.
    kept = {link: link.with_name(link.name + ".kept-by-test-security") for link in links
            if link.exists() or link.is_symlink()}
    for link, aside in kept.items():
        link.rename(aside)
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=target.is_dir())
    # ComfyUI lists its model folders through links (os.walk with followlinks) when it builds the loaders'
    # choices: that listing is the server's own, of links its admin made, so it is done here, before watching.
    import folder_paths

    for name in ("sams", "rembg", "clip_matcher", "controlnet"):
        folder_paths.get_filename_list(name)
    yield Canary(root)
    for link in links:
        link.unlink()
    for link, aside in kept.items():
        aside.rename(link)
    shutil.rmtree(root)


_audit_installed: list[bool] = []


@dataclass
class PathInput:
    """One path-like input of one node, how to put a value into it, and what its refusal says."""

    label: str
    where: str  # the folder its refusal names
    target: str  # what the attacks aim at, relative to the canary folder
    link: str  # a link inside the input's folder that points into the canary
    prompt: Callable[[str], dict]  # a prompt whose node "t" gets the value
    missing: str  # what a name in other letter case (absent inside the folder) gives
    prefix: str = ""  # put before every value (the pack's example folders)
    absolute_refusal: str = ""  # the refusal of absolute and '..' values, when it is not the `where` one


def _combo(class_type: str, name: str, **other) -> Callable[[str], dict]:
    return lambda value: {"v": {"class_type": "SecurityComboValue", "inputs": {"value": value}},
                          "t": {"class_type": class_type, "inputs": {name: ["v", 0], **other}}}


def _image() -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}


def _save(subfolder: str, names: list[str]) -> dict:
    return {"img": _image(), "n": {"class_type": "SecurityTextValue", "inputs": {"value": json.dumps(names)}},
            "t": {"class_type": "SCSaveImagesNamed", "inputs": {"images": ["img", 0], "names": ["n", 0],
                                                               "subfolder": subfolder, "if_exists": "replace"}}}


def _train(value: str) -> dict:
    return {"tiny": {"class_type": "TinyCheckpointLoader", "inputs": {"architecture": "sd15"}},
            "t": {"class_type": "SCTrainLocalControl", "inputs": {
                "model": ["tiny", 0], "vae": ["tiny", 2], "init": "fresh standard T2I-Adapter", "steps": 1,
                "learning_rate": 1e-4, "batch_size": 1, "sobel_weight": 1.0, "start_percent": 0.0,
                "end_percent": 1.0, "seed": 0, "gradient_checkpointing": False, "dataset_folder": value}}}


def _save_adapter(value: str) -> dict:
    return {"cn": {"class_type": "TinyControlNetLoader", "inputs": {"architecture": "sd15"}},
            "t": {"class_type": "SCSaveAdapter", "inputs": {"control_net": ["cn", 0], "filename_prefix": value}}}


REMBG_OPTIONS = {"image": ["img", 0], "alpha_matting": False, "foreground_threshold": 240,
                 "background_threshold": 10, "erode_size": 10, "post_process": False}
INPUTS = [
    PathInput("Load Image Folder.folder", "ComfyUI's input folder", "photos", "sec_link_photos",
              _combo("SCLoadImageFolder", "folder"), "does not exist"),
    PathInput("Load Image Folder.folder ('pack examples/...')", "the pack's example_inputs folder", "photos", "",
              _combo("SCLoadImageFolder", "folder"), "does not exist", prefix="pack examples/"),
    PathInput("Load Example Image.image", "the pack's example_inputs folder", "canary.png", "",
              _combo("SCLoadExampleImage", "image"), "is not one of the pack's example photos"),
    PathInput("Save Images Named.subfolder", "ComfyUI's output folder", "outdir", "sec_link_out",
              lambda value: _save(value, ["x"]), ""),
    PathInput("Save Images Named.names", "ComfyUI's output folder", "outdir/victim", "victim",
              lambda value: _save("sec_named", [value]), "", absolute_refusal="is not a plain file name"),
    PathInput("Train Local Control Adapter.dataset_folder", "ComfyUI's input folder", "dataset", "sec_link_dataset",
              _train, "no such folder in ComfyUI's input folder"),
    PathInput("Save Adapter.filename_prefix", "models/controlnet", "outdir/adapter", "sec_link/adapter",
              _save_adapter, ""),
    PathInput("Load SAM.model_name", "models/sams", "models/sam.pth", "sec_link.pth",
              _combo("SCLoadSAM", "model_name"), "was not found in models/sams"),
    PathInput("Load CLIP Matcher.model_name", "models/clip_matcher", "clip", "sec_link",
              _combo("SCLoadCLIPMatcher", "model_name"), "was not found in models/clip_matcher"),
    PathInput("Remove Background.model", "models/rembg", "models/u2netp.onnx", "u2netp.onnx",
              lambda value: {"img": _image(), **_combo("SCRemoveBackground", "model", **REMBG_OPTIONS)(value)},
              "was not found in models/rembg"),
]
WRITERS = {"Save Images Named.subfolder", "Save Images Named.names", "Save Adapter.filename_prefix"}


def _attacks(spec: PathInput, canary_root: Path) -> dict[str, tuple[str, str]]:
    """``{attack: (value, expected error regex)}`` for one input."""
    outside = re.escape(spec.absolute_refusal or f"must be inside {spec.where}")
    climb = "../" * 24  # more than any temporary folder is deep

    def aimed(path: Path) -> str:
        return str(path)

    values = {
        "absolute path, exists": (aimed(canary_root / spec.target), outside),
        "absolute path, missing": (aimed(canary_root / "missing" / spec.target), outside),
        "'..' chain, exists": (climb + aimed(canary_root / spec.target).lstrip("/"), outside),
        "'..' chain, missing": (climb + aimed(canary_root / "missing" / spec.target).lstrip("/"), outside),
        "NUL in the name": ("sec\x00name", "contains a control character"),
        "newline in the name": ("sec\nname", "contains a control character"),
        "5000 characters": ("a" * 5000, "characters long"),
    }
    if spec.link:
        values["link inside the folder that points out"] = (spec.link, re.escape(f"must be inside {spec.where}"))
        values["other letter case"] = (spec.link.swapcase(), re.escape(spec.missing) if spec.missing else None)
    else:
        values["other letter case"] = ("COFFEE_CUP.JPG" if "image" in spec.label else "CATALOG",
                                       re.escape(spec.missing))
    return {name: (spec.prefix + value, expected) for name, (value, expected) in values.items()}


CASES = [(spec, attack) for spec in INPUTS for attack in _attacks(spec, Path("/c"))]


def _core_refusal(prompt: dict) -> str | None:
    """What ComfyUI's own validation says about node "t" (as if it were an output node), or None if it passes.

    The harness skips validation for prompts without an output node, so it is asked here, as the server asks
    it for every node a queued prompt needs."""
    import execution

    valid, errors, _ = asyncio.run(execution.validate_inputs("security", prompt, "t", {}))
    return None if valid else "; ".join(f"{e['message']}: {e.get('details', '')}" for e in errors)


def _run_watched(canary: Canary, prompt: dict) -> tuple[str | None, object]:
    """ComfyUI's refusal (its validation's, else the node's error; None if the prompt ran) and the result;
    nothing under the canary may be touched."""
    before = canary.snapshot()
    _touched.clear()
    _watching[:] = [str(canary.root)]
    try:
        result, message = None, _core_refusal(prompt)
        if message is None:
            result = run_prompt(prompt, outputs=["t"])
    except PromptError as error:
        result, message = None, str(error).split("\n")[0]
    finally:
        _watching.clear()
    assert _touched == [], f"opened or listed outside the folders: {_touched[:5]}"
    assert canary.snapshot() == before, "a file outside ComfyUI's folders was written"
    return message, result


@pytest.mark.parametrize("spec, attack", CASES, ids=[f"{s.label} | {a}" for s, a in CASES])
def test_every_path_input_stays_in_its_folder(canary, spec, attack):
    value, expected = _attacks(spec, canary.root)[attack]
    message, result = _run_watched(canary, spec.prompt(value))
    if expected is None:  # another name inside the folder a save writes to: written there, nothing else
        assert message is None, message
        return
    assert message is not None, f"{spec.label} took {value[:100]!r}"
    assert re.search(expected, message), message
    if str(canary.root) not in value:
        assert str(canary.root) not in message, "the error tells where a link leads"


@pytest.mark.parametrize("spec", INPUTS, ids=[s.label for s in INPUTS])
def test_an_outside_path_gets_one_message_whether_it_exists_or_not(canary, spec):
    attacks = _attacks(spec, canary.root)
    for kind in ("absolute path", "'..' chain"):
        messages = []
        for state in ("exists", "missing"):
            value = attacks[f"{kind}, {state}"][0]
            message, _ = _run_watched(canary, spec.prompt(value))
            messages.append(re.sub(r"'[^']*'", "VALUE", message, count=1))  # the value itself, as echoed
        assert messages[0] == messages[1]


def test_combo_values_typed_in_are_refused_too(canary):
    """Typed into the widget instead of linked: 0.33 refuses them at validation ("Value not in list"), 0.3.75
    leaves V3 combos unchecked and the node's own rule refuses them; either way nothing is read."""
    for value in (str(canary.root / "photos"), "../" * 24 + str(canary.root / "photos").lstrip("/")):
        message, _ = _run_watched(canary, {"t": {"class_type": "SCLoadImageFolder", "inputs": {"folder": value}}})
        assert re.search(r"Value not in list|must be inside ComfyUI's input folder", message), message


def test_the_canary_would_be_seen_if_it_were_read(canary):
    """The check can fail: a copy of the canary inside input/ loads, and equals the canary exactly."""
    inside = workspace().input / "sec_inside"
    inside.mkdir(exist_ok=True)
    shutil.copy(canary.root / "photos" / "canary.png", inside / "canary.png")
    for value in ("sec_inside", str(inside)):  # relative, and absolute inside the input folder
        message, result = _run_watched(canary, _combo("SCLoadImageFolder", "folder")(value))
        assert message is None, message
        image = result.output("t")
        assert torch.equal((image[0] * 255).round().to(torch.uint8), torch.from_numpy(CANARY_PIXELS))


def test_folders_added_to_comfyui_count_as_inside(canary, tmp_path):
    """A folder the user adds to ComfyUI's list (extra_model_paths.yaml) is inside: absolute paths there and
    links from models/sams into it are taken; the same file elsewhere is not."""
    import folder_paths

    extra = tmp_path / "extra_sams"
    extra.mkdir()
    (extra / "mine.pth").write_bytes(b"weights")
    link = workspace().models / "sams" / "sec_extra_link.pth"
    link.symlink_to(extra / "mine.pth")
    try:
        with pytest.raises(ValueError, match="must be inside models/sams"):
            models.model_path("sams", str(extra / "mine.pth"), "anywhere")
        folder_paths.add_model_folder_path("sams", str(extra))
        assert models.model_path("sams", str(extra / "mine.pth"), "anywhere") == str((extra / "mine.pth").resolve())
        assert models.model_path("sams", "sec_extra_link.pth", "anywhere") == str((extra / "mine.pth").resolve())
        assert models.model_path("sams", "mine.pth", "anywhere") == str((extra / "mine.pth").resolve())
    finally:
        paths, _ = folder_paths.folder_names_and_paths["sams"]
        if str(extra) in paths:
            paths.remove(str(extra))
        link.unlink()


# --------------------------------------------------------------------------- saves never destroy a file


def test_if_exists_keeps_or_replaces_the_existing_file():
    output = workspace().output / "sec_if_exists"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir()
    old = output / "shot.png"
    Image.fromarray(CANARY_PIXELS).save(old)
    original = old.read_bytes()
    (output / "shot_00007_.png").write_bytes(b"an earlier counted save")

    def save(if_exists: str, value: float) -> list[dict]:
        prompt = {"img": {"class_type": "EmptyImage", "inputs": {"width": 7, "height": 5, "batch_size": 1,
                                                                 "color": int(value * 255) * 0x010101}},
                  "t": {"class_type": "SCSaveImagesNamed", "inputs": {"images": ["img", 0], "names": '["shot"]',
                                                                     "subfolder": "sec_if_exists",
                                                                     "if_exists": if_exists}}}
        return run_prompt(prompt).ui["t"]["images"]

    assert save("add counter", 1.0) == [{"filename": "shot_00008_.png", "subfolder": "sec_if_exists", "type": "output"}]
    assert old.read_bytes() == original
    with Image.open(output / "shot_00008_.png") as counted:
        assert np.asarray(counted).min() == 255  # the new picture went to the counted name
    assert save("skip", 0.0) == []
    assert old.read_bytes() == original and sorted(p.name for p in output.iterdir()) == [
        "shot.png", "shot_00007_.png", "shot_00008_.png"]
    assert save("replace", 0.0)[0]["filename"] == "shot.png"
    with Image.open(old) as replaced:
        assert old.read_bytes() != original and np.asarray(replaced).max() == 0


def test_an_api_prompt_saved_before_if_exists_never_overwrites():
    """Prompts without if_exists (API prompts saved by older versions, the catalog runner's) get the default."""
    output = workspace().output / "sec_old_prompt"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir()
    (output / "a.png").write_bytes(b"someone else's file")
    run_prompt({"img": _image(), "t": {"class_type": "SCSaveImagesNamed", "inputs": {
        "images": ["img", 0], "names": '["a"]', "subfolder": "sec_old_prompt"}}})
    assert (output / "a.png").read_bytes() == b"someone else's file"
    assert sorted(p.name for p in output.iterdir()) == ["a.png", "a_00001_.png"]


# --------------------------------------------------------------------------- bounds


def test_every_number_input_has_a_range():
    for node in pack_nodes.NODES:
        for name, (low, high) in pack_nodes.input_ranges(node).items():
            assert low is not None and high is not None, f"{node.__name__}.{name} has no min/max"


@pytest.mark.parametrize("class_type, name, kind, value, expected", [
    ("SCFeatherMask", "radius", "SecurityIntValue", "50000", "radius is 50000, outside its range 0..4096"),
    ("SCGrowMask", "pixels", "SecurityIntValue", "-100000", "pixels is -100000, outside its range -4096..4096"),
    ("SCMaskCleanup", "threshold", "SecurityFloatValue", "nan", "threshold is nan, outside its range 0.0..1.0"),
])
def test_a_linked_number_beyond_its_range_is_a_clear_error(canary, class_type, name, kind, value, expected):
    """ComfyUI checks typed-in numbers against min/max but not linked ones (on both legs): the pack does."""
    from harness import node_error_message

    import nodes

    widgets = {key: spec[1]["default"] for key, spec in nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()[
        "required"].items() if len(spec) > 1 and "default" in spec[1]}
    prompt = {"m": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}},
              "v": {"class_type": kind, "inputs": {"value": value}},
              "t": {"class_type": class_type, "inputs": {**widgets, "mask": ["m", 0], name: ["v", 0]}}}
    assert _core_refusal(prompt) is None  # linked: ComfyUI does not check the value, on either leg
    assert expected in node_error_message(prompt, outputs=["t"])
    if kind == "SecurityIntValue":  # typed in: ComfyUI's own validation refuses it, on both legs
        prompt["t"]["inputs"][name] = int(value)
        assert re.search(r"(bigger than max|smaller than min) of -?4096", _core_refusal(prompt) or "")


def test_a_feather_radius_far_beyond_the_image_stays_exact():
    """Radii above ~46k overflowed int32 squared distances into NaN masks; any radius is exact now."""
    mask = torch.zeros(1, 12, 20)
    mask[:, 3:8, 5:11] = 1.0
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    inside = mask[0] >= 0.5
    points = torch.stack([ys.flatten(), xs.flatten()], 1)
    other = torch.cdist(points, points).masked_fill(inside.flatten()[None, :] == inside.flatten()[:, None], math.inf)
    signed = (other.min(1).values - 0.5) * (inside.flatten().float() * 2 - 1)
    for radius in (50_000, 10**6, 10**9):
        for direction in ("inward", "outward", "centred"):
            out = mask_ops.feather(mask, radius, direction, "linear")
            expected = mask_ops.feather_profile(signed.reshape(1, 12, 20), radius, direction, "linear")
            assert not torch.isnan(out).any()
            assert torch.allclose(out, expected, atol=1e-6), (radius, direction)


def test_long_name_lists_are_linear_and_bounded(canary):
    text = ",".join(f"name{i % 1000}" for i in range(10_000))  # 1000 names, each 10 times, < 100k characters
    assert len(text) < finding_ops.MAX_NAMES_CHARS
    assert finding_ops.names_from_lines(text) == [f"name{i}" for i in range(1000)]
    assert finding_ops.names_from_lines("b, a\nb,, c") == ["b", "a", "c"]
    with pytest.raises(ValueError, match="class_names has 5000 different names; at most 1000"):
        finding_ops.names_from_lines(",".join(f"n{i}" for i in range(5000)))
    from harness import node_error_message

    ten_mib = "shoe\n" * (2 * 1024 * 1024)
    prompt = {"img": _image(), "sam": {"class_type": "SecurityNoSAM", "inputs": {}},
              "clip": {"class_type": "SecurityNoClipMatcher", "inputs": {}},
              "t": {"class_type": "SCFindObjects", "inputs": {
                  "image": ["img", 0], "sam": ["sam", 0], "clip_matcher": ["clip", 0], "class_names": ten_mib,
                  "negative_names": "background", "threshold": 0.5, "merge": "best", "mode": "guided",
                  "prompt_template": "a photo of a {}"}}}
    assert "class_names is 10485760 characters long; at most 100000" in node_error_message(prompt, outputs=["t"])
    prompt["t"]["inputs"].update(class_names="shoe", prompt_template="{} " * 5000)
    assert "prompt_template is 15000 characters long; at most 2000" in node_error_message(prompt, outputs=["t"])


# --------------------------------------------------------------------------- network

NETWORK_MODULES = {"socket", "ssl", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp", "websocket",
                   "websockets", "ftplib", "huggingface_hub"}


def test_the_pack_adds_no_routes_and_opens_no_connections():
    """SECURITY.md's promise, read from the source: no networking module is imported by any pack module
    ComfyUI loads, nothing registers a route on ComfyUI's server, and the frontend script fetches nothing."""
    import ast

    sources = [REPO_ROOT / "__init__.py", *sorted((REPO_ROOT / "nodes").rglob("*.py"))]
    for path in sources:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & NETWORK_MODULES, (path.name, names)
        assert not re.search(r"\.routes\b|add_route|hf_hub_download|snapshot_download|torch\.hub", path.read_text()), \
            path.name
    for script in (REPO_ROOT / "js").rglob("*.js"):
        assert not re.search(r"\bfetch\(|fetchApi|XMLHttpRequest|WebSocket\(|https?://", script.read_text()), script.name
