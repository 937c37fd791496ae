"""Region (CLIP) and pose scores through ComfyUI's executor, against known answers.

Region score: the colour CLIP double (harness.doubles.ColourMatcher) embeds a crop as its mean
colour minus grey and a text as the colour it names, so the crop x text matrix is known in
closed form. Pose score: mediapipe on scikit-image's astronaut, scored against itself and
against a copy of its keypoints shifted by a known offset.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage import data

from harness import box_mask_nodes, pack_import, run_prompt, workspace

metrics = pack_import("nodes.ops.metrics")


class TestShiftPose:
    """Test-only node: POSE_KEYPOINT with every visible keypoint moved by (dx, dy) pixels."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pose": ("POSE_KEYPOINT",), "dx": ("FLOAT", {"default": 0.0, "min": -1e4}),
                             "dy": ("FLOAT", {"default": 0.0, "min": -1e4})}}

    RETURN_TYPES = ("POSE_KEYPOINT",)
    FUNCTION = "shift"
    CATEGORY = "testing"

    def shift(self, pose, dx, dy):
        moved = copy.deepcopy(pose)
        for frame in moved if isinstance(moved, list) else [moved]:
            for person in frame["people"]:
                flat = person["pose_keypoints_2d"]
                for k in range(18):
                    if flat[3 * k + 2] > 0:
                        flat[3 * k] += dx
                        flat[3 * k + 1] += dy
        return (moved,)


@pytest.fixture(scope="module", autouse=True)
def test_nodes():
    import nodes

    nodes.NODE_CLASS_MAPPINGS.update(TestShiftPose=TestShiftPose)
    yield
    nodes.NODE_CLASS_MAPPINGS.pop("TestShiftPose")


def _save(name: str, pixels: np.ndarray) -> str:
    Image.fromarray(np.ascontiguousarray(pixels)).save(workspace().input / name)
    return name


def _third_mask(node: str, x: int) -> dict:
    return {**box_mask_nodes(f"{node}_m", 192, 128, (x, 0, 64, 128)),
            f"{node}_i": {"class_type": "MaskToImage", "inputs": {"mask": [f"{node}_m", 0]}}}


def region_prompt(image_file: str, texts: str) -> dict:
    prompt = {
        "img": {"class_type": "LoadImage", "inputs": {"image": image_file}},
        **_third_mask("r0", 0), **_third_mask("r1", 64), **_third_mask("r2", 128),
        "b01": {"class_type": "ImageBatch", "inputs": {"image1": ["r0_i", 0], "image2": ["r1_i", 0]}},
        "b012": {"class_type": "ImageBatch", "inputs": {"image1": ["b01", 0], "image2": ["r2_i", 0]}},
        "masks": {"class_type": "ImageToMask", "inputs": {"image": ["b012", 0], "channel": "red"}},
        "clip": {"class_type": "TestColourMatcherLoader", "inputs": {}},
        "score": {"class_type": "SCRegionScore", "inputs": {
            "image": ["img", 0], "region_masks": ["masks", 0], "region_texts": texts, "clip_matcher": ["clip", 0]}},
    }
    return prompt


def test_region_score_gives_the_known_leakage_matrix():
    pixels = np.zeros((128, 192, 3), np.uint8)
    pixels[:, :64, 0] = 255  # red region
    pixels[:, 64:128, 1] = 255  # green region
    pixels[:64, 128:, 0] = 255  # blue region, its top half taken over by red: a leak
    pixels[64:, 128:, 2] = 255
    out = run_prompt(region_prompt(_save("regions.png", pixels), "a red car\na green tree\na blue sky"))
    mean_score, worst, report, heatmap = out.outputs["score"]
    third = 1 / 3
    s = 1 / math.sqrt(3)  # half red, half blue: mean colour minus grey points at (0, -1, 0)
    expected = [[1.0, -third, -third], [-third, 1.0, -third], [s, -s, s]]
    matrix = json.loads(report[0])[0]["matrix"]
    assert np.allclose(matrix, expected, atol=0.02)
    regions = json.loads(report[0])[0]["regions"]
    assert [r["text"] for r in regions] == ["a red car", "a green tree", "a blue sky"]
    assert regions[2]["best_other_text"] == "a red car" and regions[2]["margin"] == pytest.approx(0.0, abs=0.02)
    assert regions[0]["margin"] == pytest.approx(1 + third, abs=0.02)
    assert mean_score[0] == pytest.approx((2 + s) / 3, abs=0.02)
    assert worst[0] == pytest.approx(0.0, abs=0.02)
    assert heatmap[0].shape[-1] == 3 and heatmap[0].shape[1] > 200
    assert out.ui["score"]["images"], "the heatmap is previewed on the node"


def test_region_score_needs_one_text_per_mask():
    from harness import PromptError

    pixels = np.full((128, 192, 3), 128, np.uint8)
    with pytest.raises(PromptError, match="3 region masks but 2 region texts"):
        run_prompt(region_prompt(_save("grey.png", pixels), "red\ngreen"))


def pose_prompt(dx: float, dy: float, threshold: float) -> dict:
    return {
        "img": {"class_type": "LoadImage", "inputs": {"image": _save("astronaut.png", data.astronaut())}},
        "pose": {"class_type": "SCPoseFromImage", "inputs": {"image": ["img", 0], "min_confidence": 0.3, "mask_margin": 4}},
        "shift": {"class_type": "TestShiftPose", "inputs": {"pose": ["pose", 1], "dx": dx, "dy": dy}},
        "score": {"class_type": "SCPoseScore", "inputs": {
            "target_pose": ["shift", 0], "image": ["img", 0], "threshold": threshold, "min_confidence": 0.3}},
    }


def test_pose_scored_against_itself_is_exact():
    out = run_prompt(pose_prompt(0.0, 0.0, 0.05), outputs=["score"])
    pck, error, report, chart = out.outputs["score"]
    person = json.loads(report[0])[0][0]
    assert pck == [1.0] and error[0] == pytest.approx(0.0, abs=1e-9)
    assert person["keypoints_target"] >= 8 and person["keypoints_matched"] == person["keypoints_target"]
    assert chart[0].shape[-1] == 3


@pytest.mark.parametrize("threshold", [0.005, 0.05])
def test_shifted_target_gives_the_known_error(threshold):
    out = run_prompt(pose_prompt(3.0, 4.0, threshold), outputs=["score"])
    pck, error, report, _ = out.outputs["score"]
    person = json.loads(report[0])[0][0]
    assert error[0] == pytest.approx(5.0, abs=1e-6)  # every keypoint off by the 3-4-5 triangle
    within = 5.0 <= threshold * person["bbox_size_px"]
    assert pck == [1.0 if within else 0.0]
    assert person["bbox_size_px"] > 150  # the astronaut's pose spans much of the 512 px photo
