"""Evaluation maths against known answers and scikit-image's reference SSIM."""
import math

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import structural_similarity

from harness import pack_import, run_prompt, workspace

metrics = pack_import("nodes.ops.metrics")
masks = pack_import("nodes.ops.masks")


def photo() -> torch.Tensor:
    return torch.from_numpy(data.astronaut()[::4, ::4].astype(np.float32) / 255.0).unsqueeze(0)  # 128x128x3


def square_mask(size: int = 128, lo: int = 32, hi: int = 96) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, lo:hi, lo:hi] = 1.0
    return mask


def test_identical_images_score_perfectly():
    image = photo()
    scores = metrics.preservation(image, image.clone(), square_mask())
    assert scores["psnr_outside"] == [math.inf]
    assert scores["ssim_outside"][0] == pytest.approx(1.0, abs=1e-6)
    assert scores["max_abs_diff_outside"] == [0.0]
    assert scores["mean_change_inside"] == [0.0]


@pytest.mark.parametrize("shift", [1, 3])
def test_ssim_matches_scikit_image_on_a_shifted_photo(shift):
    image = photo()
    shifted = torch.roll(image, shifts=shift, dims=2)
    ours = metrics.ssim_map(image, shifted).mean().item()
    reference = structural_similarity(
        image[0].numpy(), shifted[0].numpy(), channel_axis=-1, data_range=1.0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )
    assert ours == pytest.approx(reference, abs=1e-5)
    assert ours < 0.95


def test_changes_inside_the_mask_do_not_count_as_lost_preservation():
    image = photo()
    edited = image.clone()
    edited[:, 40:88, 40:88] = 0.0  # well inside the 32..96 square, beyond the SSIM window of its edge
    scores = metrics.preservation(image, edited, square_mask())
    assert scores["psnr_outside"] == [math.inf]
    assert scores["max_abs_diff_outside"] == [0.0]
    inside = image[:, 32:96, 32:96].abs().mean(-1)
    expected_change = (inside[:, 8:56, 8:56].sum() / (64 * 64)).item()
    assert scores["mean_change_inside"][0] == pytest.approx(expected_change, rel=1e-5)


def test_known_psnr_outside_the_mask():
    image = torch.full((1, 64, 64, 3), 0.5)
    result = image + 0.1
    mask = torch.zeros(1, 64, 64)
    scores = metrics.preservation(image, result, mask)
    assert scores["psnr_outside"][0] == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    assert scores["max_abs_diff_outside"][0] == pytest.approx(0.1, abs=1e-6)
    assert math.isnan(scores["mean_change_inside"][0])  # empty edited area: nothing to measure


def test_hard_seam_scores_higher_than_feathered_blend():
    background = torch.linspace(0.2, 0.4, 128).view(1, 1, 128, 1).expand(1, 128, 128, 3)
    foreground = torch.full((1, 128, 128, 3), 0.7)
    mask = square_mask()
    hard = torch.lerp(background, foreground, mask.unsqueeze(-1))
    soft_mask = masks.feather(mask, 24, "centred", "smoothstep")
    soft = torch.lerp(background, foreground, soft_mask.unsqueeze(-1))
    hard_ratio = metrics.seam_score(hard, mask, 4)["seam_ratio"][0]
    soft_ratio = metrics.seam_score(soft, mask, 4)["seam_ratio"][0]
    assert hard_ratio > 3.0
    assert soft_ratio < hard_ratio / 2


def test_seam_of_an_untouched_photo_is_near_one():
    ratio = metrics.seam_score(photo(), square_mask(), 4)["seam_ratio"][0]
    assert 0.3 < ratio < 3.0


def test_mismatched_sizes_say_what_to_do():
    with pytest.raises(ValueError, match="scale the result back"):
        metrics.preservation(photo(), torch.zeros(1, 64, 64, 3), square_mask())
    with pytest.raises(ValueError, match="batch sizes differ"):
        metrics.preservation(photo().expand(2, -1, -1, -1), torch.zeros(3, 128, 128, 3), square_mask())


def _save_png(name: str, image: torch.Tensor) -> str:
    from PIL import Image

    array = (image[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(workspace().input / name)
    return name


def test_preservation_node_through_comfyui():
    source = photo()
    result = source.clone()
    result[:, 40:88, 40:88] = 1.0
    prompt = {
        "src": {"class_type": "LoadImage", "inputs": {"image": _save_png("pres_src.png", source)}},
        "res": {"class_type": "LoadImage", "inputs": {"image": _save_png("pres_res.png", result)}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "paste": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "edited": {"class_type": "MaskComposite", "inputs": {
            "destination": ["mask", 0], "source": ["paste", 0], "x": 32, "y": 32, "operation": "add"}},
        "score": {"class_type": "SCPreservationScore", "inputs": {
            "source": ["src", 0], "result": ["res", 0], "mask": ["edited", 0], "mask_marks": "edited area"}},
    }
    out = run_prompt(prompt)
    psnr, ssim, max_diff, change, report, chart = out.outputs["score"]
    assert psnr == [math.inf] and max_diff == [0.0] and ssim[0] == pytest.approx(1.0, abs=1e-6)
    assert change[0] > 0.1
    assert '"psnr_outside": "inf"' in report[0]
    assert chart[0].shape[-1] == 3 and chart[0].shape[1] > 100
    assert out.ui["score"]["images"], "the chart is previewed on the node"


def test_leakage_matrix_and_region_report():
    crops = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    texts = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised inside
    matrix = metrics.leakage_matrix(crops, texts)
    assert torch.allclose(matrix, torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    report = metrics.region_report(matrix, ["cat", "dog"])
    assert report[1]["best_other_text"] == "cat" and report[1]["margin"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="one text per region"):
        metrics.leakage_matrix(crops, texts[:1])


def test_pose_errors_count_missing_keypoints_as_wrong():
    target = torch.zeros(1, 18, 3)
    target[0, :4] = torch.tensor([[0.0, 0.0, 1.0], [100.0, 0.0, 1.0], [0.0, 100.0, 1.0], [50.0, 50.0, 1.0]])
    found = target.clone()
    found[0, 1, :2] += torch.tensor([6.0, 8.0])  # 10 px off: outside 0.05 x 100 px
    found[0, 3] = 0.0  # not found
    person = metrics.pose_errors(target, found, threshold=0.05)[0]
    assert person["pck"] == pytest.approx(2 / 4)
    assert person["mean_error_px"] == pytest.approx(10 / 3)
    assert person["bbox_size_px"] == 100.0 and person["keypoints_matched"] == 3


def test_pose_keypoints_are_scaled_from_their_canvas():
    flat = [0.0] * 54
    flat[0:3] = [50.0, 20.0, 0.9]
    pose = metrics.poses_from_keypoints({"people": [{"pose_keypoints_2d": flat}], "canvas_width": 100,
                                         "canvas_height": 50}, 100, 200)
    assert pose[0, 0].tolist() == pytest.approx([100.0, 40.0, 0.9])
    flat[0:2] = [0.5, 0.4]  # normalised coordinates
    pose = metrics.poses_from_keypoints({"people": [{"pose_keypoints_2d": flat}]}, 100, 200)
    assert pose[0, 0, :2].tolist() == pytest.approx([100.0, 40.0])
    with pytest.raises(ValueError, match="'people' list"):
        metrics.poses_from_keypoints([], 10, 10)
