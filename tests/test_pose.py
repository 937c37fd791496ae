"""mediapipe pose on scikit-image's astronaut, COCO-18 drawing colours, keypoint dicts, pose masks.

Reference positions (checked by eye on the 512x512 photo): the nose is at about (223, 128),
the subject's right shoulder (image left) at about (113, 240), the left one at about (306, 257).
"""
import numpy as np
import pytest
import torch
from skimage import data

from harness import box_mask_nodes, pack_import, run_prompt, workspace

ops = pack_import("nodes.ops.control")
pose_ops = pack_import("nodes.ops.pose")


@pytest.fixture(scope="module")
def astronaut_pose():
    frame = data.astronaut()
    with pose_ops.PoseDetector() as detector:
        return detector.detect(frame)


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
