"""The UI-workflow runner (tests/harness/workflow.py) against a hand-checked core-node workflow."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import comfy
from harness.workflow import WorkflowError, object_info, process_dynamic_prompt, run_workflow, ui_to_api

DATA = Path(__file__).parent / "data"
WORKFLOW = DATA / "core_workflow.json"
RED, GREEN = (255, 0, 0), (0, 255, 0)


@pytest.fixture(scope="module")
def info() -> dict:
    return object_info()


@pytest.fixture()
def workflow() -> dict:
    return json.loads(WORKFLOW.read_text())


def _node(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def test_object_info_matches_server_format(info):
    ksampler = info["KSampler"]
    assert ksampler["input_order"]["required"][:2] == ["model", "seed"]
    assert ksampler["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["Morphology"]["input"]["required"]["operation"][0] == "COMBO"  # a V3 node
    assert "PrimitiveNode" not in info and "Reroute" not in info


def test_conversion_equals_frontend_form(info, workflow):
    expected = json.loads((DATA / "core_workflow.api.json").read_text())
    prompt = ui_to_api(workflow, info, source=str(WORKFLOW))
    assert sorted(prompt, key=int) == sorted(expected, key=int)
    for node_id, node in expected.items():
        assert prompt[node_id]["class_type"] == node["class_type"], node_id
        assert prompt[node_id]["inputs"] == node["inputs"], node_id
        title = node["_meta"]["title"]
        if "title" not in _node(workflow, int(node_id)):  # untitled: the frontend shows the display name
            title = info[node["class_type"]]["display_name"] or node["class_type"]  # renamed in 0.33: SolidMask
        assert prompt[node_id]["_meta"] == {"title": title}, node_id


def test_workflow_executes(workflow):
    result = run_workflow(WORKFLOW, outputs=["11", "10"])
    assert result.output("10").seed == 42  # RandomNoise, seed widget without its control value
    composite = result.output("5").numpy()
    assert composite.shape == (1, 24, 32, 3)
    saved = result.ui["11"]["images"][0]
    path = comfy.workspace().output / saved["subfolder"] / saved["filename"]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (48, 64, 3)
    # Not inverted (bypassed), mask dropped (muted) so the patch is pasted fully, width from
    # the PrimitiveNode (32, not the stale 512), y from PrimitiveInt (4), then scaled 2x.
    expected = np.empty_like(pixels)
    expected[:] = RED
    expected[8:32, 16:48] = GREEN
    np.testing.assert_array_equal(pixels, expected)


def test_run_workflow_accepts_a_dict(workflow):
    result = run_workflow(workflow, outputs=["5"])
    assert tuple(result.output("5")[0, 5, 9].tolist()) == (0.0, 1.0, 0.0)


def test_muted_widget_source_removes_the_input(info, workflow):
    _node(workflow, 12)["mode"] = 2  # mute PrimitiveInt: ImageCompositeMasked loses `y` entirely
    prompt = ui_to_api(workflow, info)
    assert "12" not in prompt and "y" not in prompt["5"]["inputs"]


def test_bypass_picks_input_of_the_consumer_type(info, workflow):
    _node(workflow, 5)["mode"] = 4  # bypass the composite: ImageScale gets `destination` via the Reroute
    prompt = ui_to_api(workflow, info)
    assert prompt["9"]["inputs"]["image"] == ["1", 0]


def test_unknown_node_type_is_named(info, workflow):
    _node(workflow, 9)["type"] = "SCNoSuchNode"
    with pytest.raises(WorkflowError, match=r"unknown node type 'SCNoSuchNode'.*node 9.*core_workflow\.json"):
        ui_to_api(workflow, info, source=str(WORKFLOW))


def test_unknown_node_type_through_run_workflow(tmp_path, workflow):
    _node(workflow, 9)["type"] = "SCNoSuchNode"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(workflow))
    with pytest.raises(WorkflowError, match=r"SCNoSuchNode.*broken\.json"):
        run_workflow(path)


def test_widgets_values_count_mismatch(info, workflow):
    _node(workflow, 10)["widgets_values"] = [42]  # seed without its "control after generate" value
    with pytest.raises(WorkflowError, match=r"node 10 \(RandomNoise\).*1 values.*2 widget slots.*inputs changed"):
        ui_to_api(workflow, info, source=str(WORKFLOW))


def test_unknown_input_name(info, workflow):
    _node(workflow, 5)["inputs"][3]["name"] = "offset_y"
    _node(workflow, 5)["inputs"][3]["widget"] = {"name": "offset_y"}
    with pytest.raises(WorkflowError, match=r"unknown input 'offset_y'"):
        ui_to_api(workflow, info)


def test_primitive_into_unknown_widget(info, workflow):
    node = _node(workflow, 1)
    node["inputs"][0]["widget"] = {"name": "size"}
    with pytest.raises(WorkflowError, match=r"unknown widget 'size'"):
        ui_to_api(workflow, info)


def test_subgraphs_are_refused(info, workflow):
    workflow["definitions"] = {"subgraphs": [{"id": "c0ffee00-0000-4000-8000-000000000000", "name": "Inner"}]}
    with pytest.raises(WorkflowError, match="subgraph"):
        ui_to_api(workflow, info)


def test_api_format_is_refused(info):
    with pytest.raises(WorkflowError, match="already an API-format prompt"):
        ui_to_api(json.loads((DATA / "core_workflow.api.json").read_text()), info)


def test_seed_widget_rules_and_upload_values(info):
    # KSampler: seed carries a control value; LoadImage: the upload button's value is not sent.
    wf = {"nodes": [
        {"id": 1, "type": "KSampler", "mode": 0, "inputs": [], "outputs": [],
         "widgets_values": [7, "randomize", 2, 1.5, "euler", "normal", 1.0]},
        {"id": 2, "type": "LoadImageMask", "mode": 0, "inputs": [], "outputs": [],
         "widgets_values": ["a.png", "red", "image"]},
        {"id": 3, "type": "CLIPTextEncode", "mode": 0, "inputs": [], "outputs": [],
         "widgets_values": ["a /* hidden */cat {red|red} \\{x\\}"]},
        {"id": 4, "type": "StringConcatenate", "mode": 0, "inputs": [], "outputs": [],
         "widgets_values": ["a", "b", ", "]},
    ], "links": []}
    prompt = ui_to_api(copy.deepcopy(wf), info)
    assert prompt["1"]["inputs"] == {"seed": 7, "steps": 2, "cfg": 1.5, "sampler_name": "euler",
                                     "scheduler": "normal", "denoise": 1.0}
    assert prompt["2"]["inputs"] == {"image": "a.png", "channel": "red"}
    assert prompt["3"]["inputs"] == {"text": "a cat red {x}"}
    assert prompt["4"]["inputs"] == {"string_a": "a", "string_b": "b", "delimiter": ", "}


def test_dynamic_prompt_choices():
    assert process_dynamic_prompt("x {a|b} // tail") in ("x a ", "x b ")
    assert process_dynamic_prompt("{a|{b|b}}") in ("a", "b")
