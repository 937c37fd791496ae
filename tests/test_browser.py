"""Every shipped workflow (workflows/*.json) and tests/data/core_workflow.json, opened in the
real ComfyUI frontend inside Debian's chromium, driven by tests/browser/check_workflows.mjs.

Per workflow: no missing node types or models, no console errors beyond the known harmless
offline ones (listed in check_workflows.mjs), no dialog left open, no toast (alerts such as the
frontend's schema validation of the file), every widget value valid
for the server's /object_info, the frontend's own ``graphToPrompt`` output equal to
tests/harness/workflow.ui_to_api (class_type and inputs per node id), and a screenshot in
tests/browser/artifacts/ (or $SC_BROWSER_ARTIFACTS). One workflow is queued from the UI and
must finish. The pack's "Add region" (js/selective_control.js) is run from the canvas's node
menu at the root graph, inside a subgraph made with the frontend's Convert to Subgraph, on a
chain that enters the subgraph from outside (left alone) and on Combine Regions. Skips when chromium or the npm packages are missing: `bash scripts/setup_browser.sh`.

The server's models folder gets an empty placeholder for every model a workflow declares in
``properties.models`` / ``models`` (the files the frontend's missing-model dialog offers), so
a model combo is only valid when the workflow declares where to download its file; its input
folder stays empty, as on a fresh install (the workflows read the pack's own example photos).
A second server with no model files at all (a fresh install) opens every shipped workflow with
the frontend's missing-model report shown: 1.32.9's Missing Models dialog (its list read from
the page), 1.49.6's missingModel store judged by the frontend's own isModelDownloadable. Every
entry must be downloadable there or named in the workflow's "One manual step" Note.
Known limit: a dynamic prompt with ``{a|b}`` choices would be resolved at random on both sides.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from harness import comfy
from harness.server import running_server
from harness.workflow import ui_to_api

pytestmark = pytest.mark.slow

BROWSER_DIR = comfy.REPO_ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "check_workflows.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("SC_BROWSER_ARTIFACTS") or BROWSER_DIR / "artifacts")
SHIPPED = sorted((comfy.REPO_ROOT / "workflows").glob("*.json"))
WORKFLOWS = SHIPPED + [comfy.REPO_ROOT / "tests" / "data" / "core_workflow.json"]
QUEUED = "core_workflow.json"  # core nodes only: runs in well under a second
CHAIN = "sdxl_regions.json"  # Apply Regions fed by Region -> Region: "Add region" at the root and in a subgraph
COMBINE = "multi_instance.json"  # Combine Regions with regions_1, regions_2 linked and regions_3 free
# The browser window; scripts/workflow_pictures.py asks for a larger one so the fitted view draws titles.
VIEWPORT = tuple(int(n) for n in os.environ.get("SC_BROWSER_VIEWPORT", "1600x1000").split("x"))
STEP_TIMEOUT_MS = 120_000  # each browser wait / the queued run: hang guards, far beyond a loaded machine
RUN_TIMEOUT = 900.0  # the whole node process
# Settings the frontend reads at start: without TutorialCompleted a fresh user folder opens
# the Templates dialog over everything; the minimap would cover part of each screenshot; at a
# fitted view's zoom nodes are drawn as untitled boxes unless the level-of-detail switch is off
# (0); the canvas info (frame times, node counts) is no part of a workflow.
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                 "LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.Graph.CanvasInfo": False}


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM} (bash scripts/setup_browser.sh installs Debian's)"
    if shutil.which("node") is None:
        return "no node on PATH (Node.js >= 20 runs tests/browser/check_workflows.mjs)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        return "tests/browser/node_modules lacks playwright-core (run bash scripts/setup_browser.sh)"
    return None


def _declared_models(workflow: dict) -> list[dict]:
    """properties.models / models, plus extra.selective_control.model_files (.onnx files the
    frontend cannot list, see tests/test_workflows.py)."""
    models = list(workflow.get("models") or [])
    models += ((workflow.get("extra") or {}).get("selective_control") or {}).get("model_files") or []
    for node in workflow.get("nodes") or []:
        models += (node.get("properties") or {}).get("models") or []
    return [m for m in models if isinstance(m, dict) and m.get("name") and m.get("directory")]


def _prepare(root: Path) -> None:
    """User settings and model placeholders. The input folder stays empty: every picture a workflow
    reads ships with the pack (example_inputs/), as on a fresh install."""
    _write_settings(root)
    for path in WORKFLOWS:
        workflow = json.loads(path.read_text(encoding="utf-8"))
        for model in _declared_models(workflow):
            target = (root / "models" / model["directory"] / model["name"]).resolve()
            assert (root / "models").resolve() in target.parents, f"{path.name}: model path {model} leaves the models folder"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()


def _write_settings(root: Path) -> None:
    settings = root / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(USER_SETTINGS))


def _check_workflows(server, artifacts: Path, options: list[str], workflows: list[Path]) -> dict:
    """Run check_workflows.mjs against ``server`` and return its report (also saved as report.json)."""
    command = ["node", str(SCRIPT), "--url", server.url, "--artifacts", str(artifacts),
               "--timeout-ms", str(STEP_TIMEOUT_MS), "--chromium", str(CHROMIUM), *options, *map(str, workflows)]
    started = time.monotonic()
    try:
        run = subprocess.run(command, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"check_workflows.mjs did not finish within {RUN_TIMEOUT:.0f} s:\n{error.stderr or ''}"[-4000:])
    if run.returncode != 0:
        pytest.fail(f"check_workflows.mjs exited {run.returncode}:\n{run.stderr[-4000:]}\n{server.log_text()[-3000:]}")
    report = json.loads(run.stdout)
    report["seconds"] = time.monotonic() - started
    (artifacts / "report.json").write_text(json.dumps(report, indent=1))
    return report


@pytest.fixture(scope="module")
def browser():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with running_server(_prepare) as server:
        report = _check_workflows(server, ARTIFACTS, ["--viewport", "x".join(map(str, VIEWPORT)), "--queue", QUEUED, "--chain", CHAIN, "--combine", COMBINE], WORKFLOWS)
        yield {
            "report": report,
            "object_info": server.get("/object_info", timeout=30),
            "templates": server.get("/api/workflow_templates"),
            "served": {path.name: _served_template(server, path) for path in SHIPPED},
            "server_log": server.log_text(),
        }


def _served_template(server, path: Path):
    try:
        return server.get(f"/api/workflow_templates/{comfy.PACK_FOLDER_NAME}/{path.name}")
    except Exception as error:  # reported by the test that needs it
        return repr(error)


def _entry(browser: dict, path: Path) -> dict:
    entries = {e["name"]: e for e in browser["report"]["workflows"]}
    assert path.name in entries, f"{path.name} missing from the browser report"
    entry = entries[path.name]
    assert not entry.get("error"), f"{path.name}: {entry['error']}"
    return entry


def _brief(items: list[dict]) -> str:
    return "\n".join(json.dumps({k: v for k, v in item.items() if k != "phase"})[:1500] for item in items)


def test_frontend_starts_without_errors_or_dialogs(browser):
    startup = browser["report"]["startup"]
    assert startup["open_dialogs"] == [], "a dialog is open after start (Templates? settings not seeded?)"
    assert not startup["unexpected"], "console errors while the frontend started:\n" + _brief(startup["unexpected"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_opens_cleanly(browser, path):
    entry = _entry(browser, path)
    assert entry["load_error"] is None and not entry["file_errors"], entry
    assert entry["missing_node_types"] == [], f"{path.name}: node types the frontend does not know"
    assert entry["missing_models"] == [], (
        f"{path.name}: the frontend reports missing models (the directory must be a ComfyUI model folder)")
    assert entry["open_dialogs"] == [], f"{path.name}: dialog open after loading"
    assert entry["toasts"] == [], f"{path.name}: the frontend showed alerts on load (e.g. a workflow id that is not a UUID)"
    assert not entry["console_errors"], f"{path.name}: console errors while loading:\n" + _brief(entry["console_errors"])
    invalid = entry["invalid_widgets"]
    assert not invalid, (f"{path.name}: widget values the node definitions reject (a model file name must be "
                         "declared in the node's properties.models with its URL):\n" + _brief(invalid))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_graph_to_prompt_equals_ui_to_api(browser, path):
    frontend = _entry(browser, path)["prompt"]
    ours = ui_to_api(json.loads(path.read_text(encoding="utf-8")), browser["object_info"], source=str(path))
    assert sorted(ours, key=str) == sorted(frontend, key=str), f"{path.name}: different node ids"
    for node_id, node in frontend.items():
        assert ours[node_id]["class_type"] == node["class_type"], f"{path.name} node {node_id}"
        assert ours[node_id]["inputs"] == node["inputs"], f"{path.name} node {node_id} ({node['class_type']})"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_screenshot_shows_the_graph(browser, path):
    entry = _entry(browser, path)
    # Taken once the fitted view stopped moving and was drawn with every node on screen
    # (check_workflows.mjs waitForSettledView), not after a fixed delay that load can outrun.
    drawn = entry["drawn"]
    assert drawn["visible_nodes"] == drawn["graph_nodes"] == entry["graph_nodes"] > 0, drawn
    shot = Path(entry["screenshot"])
    assert shot.is_file() and shot.stat().st_size > 20_000, shot
    with Image.open(shot) as image:
        assert image.size == VIEWPORT
        small = image.convert("RGB").resize((VIEWPORT[0] // 4, VIEWPORT[1] // 4))
    assert len(small.getcolors(maxcolors=1 << 20)) > 200, f"{shot}: nearly uniform"
    assert max(ImageStat.Stat(small).stddev) > 10, f"{shot}: nearly uniform"


def test_queued_workflow_finishes(browser):
    queue = browser["report"]["queue"]
    assert not queue.get("error"), queue.get("error")
    assert queue["http_status"] == 200 and not queue["node_errors"], queue
    assert queue["status"]["status_str"] == "success" and queue["status"]["completed"], (
        json.dumps(queue["status"])[:3000] + "\n" + browser["server_log"][-3000:])
    assert queue["output_nodes"], "the run produced no outputs"
    assert not queue["console_errors"], _brief(queue["console_errors"])
    # What the Run button sent is what the converter produces.
    path = next(p for p in WORKFLOWS if p.name == QUEUED)
    ours = ui_to_api(json.loads(path.read_text(encoding="utf-8")), browser["object_info"], source=str(path))
    assert {k: (v["class_type"], v["inputs"]) for k, v in queue["sent_prompt"].items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in ours.items()}


def test_template_browser_lists_the_shipped_workflows(browser):
    if not SHIPPED:
        pytest.skip("no workflows/*.json yet")
    listed = browser["templates"].get(comfy.PACK_FOLDER_NAME)
    assert listed is not None, f"/api/workflow_templates has no {comfy.PACK_FOLDER_NAME!r}: {browser['templates']}"
    assert sorted(listed) == sorted(p.stem for p in SHIPPED)
    for path in SHIPPED:
        assert browser["served"][path.name] == json.loads(path.read_text(encoding="utf-8")), (
            f"/api/workflow_templates/{comfy.PACK_FOLDER_NAME}/{path.name} does not serve the file")


def test_pack_extension_colours_nodes_and_previews_masks(browser):
    ext = browser["report"]["extension"]
    assert not ext.get("error"), ext.get("error")
    assert ext["color"] == "#2e4a3a"  # js/selective_control.js NODE_COLOR
    assert ext["menu"] == ["Preview mask: mask"]
    assert ext["preview_wired"], "Preview mask did not wire MaskToImage -> PreviewImage"
    assert ext["regions_preview_wired"], "Preview regions did not wire Apply Regions' preview -> PreviewImage"
    assert not ext["console_errors"], _brief(ext["console_errors"])


def test_combine_regions_inputs_grow_as_the_last_one_is_connected(browser):
    grow = browser["report"]["extension"]["grow"]

    def slots(n: int) -> list[str]:
        return [f"regions_{i}" for i in range(1, n + 1)]

    assert grow["created"] == slots(1)
    # k regions connected: k slots plus one free, up to the backend's 8 (nodes/regions.py COMBINE_SLOTS)
    assert grow["connected"] == [slots(min(k + 1, 8)) for k in range(1, 9)]
    assert grow["no_free_slot_after"] == 8
    assert grow["after_disconnecting_last"] == slots(8)  # regions_8 is the free slot again
    assert grow["after_disconnecting_3_to_7"] == slots(3)  # regions_1, regions_2 linked + one free


def _add_region(browser: dict, case: str) -> dict:
    report = browser["report"]["add_region"]
    assert not report.get("error"), report.get("error")
    assert not report["console_errors"], _brief(report["console_errors"])
    result = report[case]
    assert result["offered"], f"{case}: the node menu of {result['type']} has no 'Add region'"
    assert result["canvas_shows_graph"], f"{case}: the canvas does not show the graph the node is in"
    assert result["root_edges_unchanged"], f"{case}: links of the root graph changed"
    return result


def _inserted_into_chain(result: dict, origin_output: str = "regions") -> None:
    """One new Region between the node and what fed its chain; every other link kept."""
    node, origin = str(result["node"]), f"{result['origin']}.{origin_output}"
    assert [a["type"] for a in result["added"]] == ["SCRegion"], result["added"]
    new = str(result["added"][0]["id"])
    assert result["lost"] == [f"{origin}->{node}.regions"]
    assert sorted(result["gained"]) == sorted([f"{origin}->{new}.regions", f"{new}.regions->{node}.regions"])


def test_add_region_at_the_root_graph_extends_the_chain(browser):
    result = _add_region(browser, "root")
    assert browser["report"]["add_region"]["chain_length"] == 2  # Region -> Region -> Apply Regions in CHAIN
    assert not result["in_subgraph"]
    before, after = result["nodes"]
    assert after == before + 1 and result["root_nodes"] == [before, before + 1]
    _inserted_into_chain(result)


def test_add_region_inside_a_subgraph_adds_the_node_to_that_subgraph(browser):
    """The chain and Apply Regions made into a subgraph (the frontend's Convert to Subgraph), which is
    opened: the new Region lands in the subgraph, linked into its chain; the root graph keeps its nodes."""
    result = _add_region(browser, "subgraph")
    assert browser["report"]["add_region"]["subgraph_chain_length"] == 2
    assert result["in_subgraph"]
    before, after = result["nodes"]
    assert before == 3 and after == 4  # Region, Region, Apply Regions + the new Region
    root_before, root_after = result["root_nodes"]
    assert root_after == root_before
    _inserted_into_chain(result)
    assert result["prompt_chain"] == ["SCRegion"] * 3  # what Run sends: Apply Regions <- 3 Regions


def test_add_region_inside_a_subgraph_on_a_chain_entering_through_its_input(browser):
    """A Region whose chain comes in through the subgraph's input (its link's origin is the subgraph
    input node, no node of the subgraph): the new Region is fed from that input and feeds the Region."""
    result = _add_region(browser, "boundary")
    assert result["in_subgraph"] and int(result["origin"]) < 0  # the subgraph input node
    assert result["nodes"] == [2, 3] and result["root_nodes"][0] == result["root_nodes"][1]
    entering = result["lost"][0].split("->")[0]  # the subgraph input node's slot: "-10.<input index>"
    assert len(result["lost"]) == 1 and entering.startswith(f"{result['origin']}."), result["lost"]
    _inserted_into_chain(result, origin_output=entering.split(".", 1)[1])
    assert result["prompt_chain"] == ["SCRegion"] * 3  # the Region outside still heads the chain


def test_add_region_leaves_a_chain_it_cannot_read_alone(browser):
    """The regions input holds a link id its graph does not have: nothing is added and the input
    keeps its link (the chain is not dropped)."""
    result = _add_region(browser, "unreadable")
    assert result["nodes"][0] == result["nodes"][1] and result["added"] == []
    assert result["gained"] == [] and result["lost"] == [] and result["link_kept"]


def test_add_region_on_combine_regions_fills_the_free_slot(browser):
    result = _add_region(browser, "combine")
    node = str(result["node"])
    assert [a["type"] for a in result["added"]] == ["SCRegion"] and result["lost"] == []
    before, after = result["nodes"]
    assert after == before + 1
    assert result["gained"] == [f"{result['added'][0]['id']}.regions->{node}.regions_3"]
    assert result["inputs"] == [["regions_1", "regions_2", "regions_3"], ["regions_1", "regions_2", "regions_3", "regions_4"]]


@pytest.fixture(scope="module")
def fresh_install():
    """The shipped workflows opened on a server with no model files at all (a fresh install: empty
    models and input folders, the pack's example photos in place), the frontend's Missing Models
    dialog shown and read (check_workflows.mjs --model-dialogs)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    artifacts = ARTIFACTS / "fresh_install"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    with running_server(_write_settings) as server:
        yield _check_workflows(server, artifacts, ["--model-dialogs"], SHIPPED)


def _manual_step_lines(workflow: dict) -> list[str]:
    """The lines of the workflow's "One manual step" Note that name a file and where to get it."""
    notes = [str((node.get("widgets_values") or [""])[0]) for node in workflow.get("nodes") or []
             if node.get("type") in ("Note", "MarkdownNote")]
    return [line for note in notes if note.startswith("One manual step") for line in note.splitlines()
            if " from http" in line]


DOWNLOADABLE_SUFFIXES = (".safetensors", ".sft")  # frontend 1.32.9's rule; 1.49.6 also takes .ckpt/.pth/.pt


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_fresh_install_lists_only_models_the_user_can_download(fresh_install, path):
    """Done-when of issue 17: the frontend lists only model files it can download, or the workflow's
    Note explains the manual step for the file; no input is invalid except a model the user is told
    how to get."""
    entry = _entry({"report": fresh_install}, path)
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert entry["missing_node_types"] == [] and entry["load_error"] is None and not entry["file_errors"], entry
    assert not entry["console_errors"], f"{path.name}: console errors while loading:\n" + _brief(entry["console_errors"])
    assert entry["open_dialogs"] == [], f"{path.name}: a dialog besides Missing Models is open"
    dialog = entry["model_dialog"]
    listed = {e["name"] for e in dialog["entries"]}
    # the models the workflow declares for the dialog (properties.models / models) are all listed
    declared = {m["name"] for m in _declared_models(workflow)
                if m not in ((workflow.get("extra") or {}).get("selective_control") or {}).get("model_files", [])}
    assert declared <= listed, f"{path.name}: {dialog['source']} does not list {sorted(declared - listed)}"
    manual = _manual_step_lines(workflow)
    for model in dialog["entries"]:
        if model["downloadable"]:
            assert model["name"].endswith(DOWNLOADABLE_SUFFIXES) and model["url"].startswith("https://huggingface.co/"), model
        else:
            assert any(model["name"] in line for line in manual), (
                f"{path.name}: {dialog['source']} lists {model} which it cannot download, and no "
                "'One manual step' Note line says where to get it")
    assert dialog["missing_media"] == [], f"{path.name}: the frontend finds input files missing: {dialog['missing_media']}"
    for widget in entry["invalid_widgets"]:
        value = str(widget["value"])
        assert value in listed or any(value in line for line in manual), (
            f"{path.name}: invalid input on a fresh install that is no model the user is told how to get:\n" + _brief([widget]))
