"""mediapipe pose on scikit-image's astronaut (both mediapipe APIs), COCO-18 drawing colours,
keypoint dicts, pose masks, the model-file errors.

Reference positions (checked by eye on the 512x512 photo): the nose is at about (223, 128),
the subject's right shoulder (image left) at about (113, 240), the left one at about (306, 257).

Backends: ``mp.solutions`` exists up to mediapipe 0.10.2x (the floor leg); the Tasks API exists
on both legs and is the only one on the latest (mediapipe >= 0.10.30). The Tasks tests use real
weights: a .task bundle built from mediapipe 0.10.14's wheel (``harness.pose_task``).
"""
import importlib.metadata

import numpy as np
import pytest
import torch
from skimage import data

from harness import box_mask_nodes, node_error_message, pack_import, run_prompt, workspace
from harness.pose_task import cached_pose_task, install_pose_task

ops = pack_import("nodes.ops.control")
pose_ops = pack_import("nodes.ops.pose")
pose_models = pack_import("nodes.models.pose")
models = pack_import("nodes.models")
MEDIAPIPE = importlib.metadata.version("mediapipe")
HAS_SOLUTIONS = pose_ops.has_solutions_pose()


def open_backend(name: str):
    if name == "solutions":
        if not HAS_SOLUTIONS:
            pytest.skip(f"mediapipe {MEDIAPIPE} has no mp.solutions (removed in 0.10.30): the Tasks API is tested")
        return pose_ops.SolutionsPoseDetector()
    task = cached_pose_task()
    if task is None:
        pytest.skip("no .test-assets/mediapipe-0.10.14-*.whl to build the .task from: run scripts/setup.sh --dev")
    return pose_ops.TasksPoseDetector(str(task))


@pytest.fixture(scope="module", params=["solutions", "tasks"])
def astronaut_pose(request):
    with open_backend(request.param) as detector:
        return detector.detect(data.astronaut())


def test_nose_and_shoulders_are_found_where_they_are(astronaut_pose):
    nose, right_shoulder, left_shoulder, neck = astronaut_pose[0], astronaut_pose[2], astronaut_pose[5], astronaut_pose[1]
    assert 195 <= nose[0] <= 255 and 100 <= nose[1] <= 160 and nose[2] > 0.5
    assert 80 <= right_shoulder[0] <= 150 and 200 <= right_shoulder[1] <= 280 and right_shoulder[2] > 0.5
    assert 270 <= left_shoulder[0] <= 345 and 215 <= left_shoulder[1] <= 295 and left_shoulder[2] > 0.5
    assert np.allclose(neck[:2], (right_shoulder[:2] + left_shoulder[:2]) / 2)


def test_skeleton_has_openpose_colours_on_the_limbs(astronaut_pose):
    canvas = ops.draw_pose(astronaut_pose[None], 512, 512, 0.3)
    assert canvas.shape == (512, 512, 3) and canvas.dtype == np.uint8
    neck, rs, ls, nose = (astronaut_pose[k, :2] for k in (1, 2, 5, 0))

    def at(p):
        return tuple(int(v) for v in canvas[int(round(p[1])), int(round(p[0]))])

    # limb 0 (neck - right shoulder) in 0.6 x red, limb 1 (neck - left shoulder) in 0.6 x orange,
    # limb 12 (neck - nose) in 0.6 x blue, sampled at the limbs' midpoints (away from the joints)
    assert at((neck + rs) / 2) == (153, 0, 0)
    assert at((neck + ls) / 2) == (153, 51, 0)
    assert at((neck + nose) / 2) == (0, 0, 153)
    assert at(nose) == (255, 0, 0)  # joint 0 in full red
    assert at((5, 5)) == (0, 0, 0)


def test_keypoint_dict_is_openpose_json_in_pixels(astronaut_pose):
    keypoints = ops.pose_keypoint_dict(astronaut_pose[None], 512, 512)
    assert keypoints["canvas_width"] == 512 and keypoints["canvas_height"] == 512
    flat = keypoints["people"][0]["pose_keypoints_2d"]
    assert len(flat) == 54
    assert flat[0:3] == pytest.approx(list(astronaut_pose[0]))


def test_pose_mask_covers_the_person_and_not_the_corners(astronaut_pose):
    mask = ops.pose_person_mask(astronaut_pose, 512, 512, margin=8)
    assert mask.shape == (512, 512)
    for x, y in ((223, 128), (210, 330), (120, 250), (300, 260)):  # face, chest, both shoulders
        assert mask[y, x] == 1.0, (x, y)
    assert mask[:40, :40].sum() == 0 and mask[:40, -40:].sum() == 0
    assert 0.1 < mask.mean() < 0.7
    grown = ops.pose_person_mask(astronaut_pose, 512, 512, margin=20)
    assert grown.sum() > mask.sum() and torch.all(grown >= mask)


def test_empty_pose_gives_an_empty_mask_and_blank_skeleton():
    empty = np.zeros((18, 3))
    assert ops.pose_person_mask(empty, 64, 80).sum() == 0
    assert ops.draw_pose(empty[None], 64, 80).max() == 0


def test_node_with_two_person_regions_outputs_one_mask_each():
    from PIL import Image

    frame = data.astronaut()
    side = np.concatenate([frame, frame[:, ::-1]], axis=1)[::2, ::2]  # two people, 256x512
    Image.fromarray(np.ascontiguousarray(side)).save(workspace().input / "two_people.png")
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "two_people.png"}},
        **box_mask_nodes("m0", 512, 256, (0, 0, 256, 256)), **box_mask_nodes("m1", 512, 256, (256, 0, 256, 256)),
        "i0": {"class_type": "MaskToImage", "inputs": {"mask": ["m0", 0]}},
        "i1": {"class_type": "MaskToImage", "inputs": {"mask": ["m1", 0]}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["i0", 0], "image2": ["i1", 0]}},
        "masks": {"class_type": "ImageToMask", "inputs": {"image": ["batch", 0], "channel": "red"}},
        "pose": {"class_type": "SCPoseFromImage", "inputs": {
            "image": ["load", 0], "person_masks": ["masks", 0], "min_confidence": 0.3, "mask_margin": 4}},
    }
    result = run_prompt(prompt, outputs=["pose"])
    pose_image, keypoints, masks = (result.output("pose", i) for i in range(3))
    assert pose_image.shape == (1, 256, 512, 3)
    assert masks.shape == (2, 256, 512)
    people = keypoints["people"] if isinstance(keypoints, dict) else keypoints[0]["people"]
    assert len(people) == 2
    noses = [p["pose_keypoints_2d"][0] for p in people]
    assert noses[0] < 256 <= noses[1]  # each person found in their own half
    assert masks[0, :, 256:].sum() < 0.05 * masks[0].sum() and masks[1, :, :256].sum() < 0.05 * masks[1].sum()


def test_the_node_picks_the_backend_the_installed_mediapipe_has():
    detector = pose_models.open_detector(0.3)
    with detector:
        expected = pose_ops.SolutionsPoseDetector if HAS_SOLUTIONS else pose_ops.TasksPoseDetector
        assert type(detector) is expected, MEDIAPIPE


def test_both_apis_find_the_same_keypoints():
    if not HAS_SOLUTIONS:
        pytest.skip(f"mediapipe {MEDIAPIPE} has only the Tasks API")
    frame = data.astronaut()
    with open_backend("solutions") as solutions, open_backend("tasks") as tasks:
        a, b = solutions.detect(frame), tasks.detect(frame)
    seen = (a[:, 2] > 0.5) & (b[:, 2] > 0.5)
    assert seen.sum() >= 8  # head, shoulders, elbows (the astronaut is cut off at the chest)
    assert np.abs(a[seen, :2] - b[seen, :2]).max() < 6.0  # same networks, other crops: 4.3 px measured


def test_missing_task_file_names_the_file_the_folder_and_the_download_url(tmp_path):
    linked = install_pose_task()
    if linked is not None:
        linked.rename(tmp_path / linked.name)
    try:
        with pytest.raises(models.ModelFileError) as error:
            pose_models.task_path()
        text = str(error.value)
        assert "'pose_landmarker_full.task' was not found in models/mediapipe" in text
        assert pose_models.TASK_URL in text
        assert "storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full" in text
        if not HAS_SOLUTIONS:  # the node itself needs the file only where mp.solutions is gone
            message = node_error_message(astronaut_pose_prompt(), ["pose"])
            assert "pose_landmarker_full.task" in message and "models/mediapipe" in message
    finally:
        if linked is not None:
            (tmp_path / linked.name).rename(linked)


def test_a_corrupt_task_file_is_a_clear_error():
    path = workspace().models / "mediapipe" / "broken.task"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a task bundle" * 64)
    with pytest.raises(models.ModelFileError, match=r"broken\.task.*pose_landmarker_full\.task"):
        pose_models.open_tasks_detector(str(path), 0.3)


def astronaut_pose_prompt() -> dict:
    from PIL import Image

    Image.fromarray(data.astronaut()).save(workspace().input / "astronaut.png")
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "pose": {"class_type": "SCPoseFromImage", "inputs": {"image": ["load", 0], "min_confidence": 0.3,
                                                             "mask_margin": 4}},
    }


def test_node_finds_the_astronaut_with_the_installed_mediapipe():
    result = run_prompt(astronaut_pose_prompt(), outputs=["pose"])
    keypoints = result.output("pose", 1)
    people = keypoints["people"] if isinstance(keypoints, dict) else keypoints[0]["people"]
    nose = people[0]["pose_keypoints_2d"][0:3]
    assert 195 <= nose[0] <= 255 and 100 <= nose[1] <= 160 and nose[2] > 0.5
