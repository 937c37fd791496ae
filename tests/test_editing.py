"""Crop For Edit / Stitch Edit Back: sizes per model family, windows at the border, registration of known
drifts on the example photos, no warp without a reliable match, bit-exact stitching, change maps, several
regions, the nodes in ComfyUI's executor, and the real edit path through core's edit nodes on tiny
Qwen-Image-Edit, Flux Kontext and Flux.2 models (ComfyUI 0.33)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from harness import box_mask_nodes, pack_import, run_prompt, tiny_dit, tiny_edit, workspace
from harness.tiny_edit import box_mask, example_photo as photo

ops = pack_import("nodes.ops.editing")
MISSING = tiny_dit.unavailable_reason()
needs_dit = pytest.mark.skipif(MISSING is not None, reason=f"the tiny edit models need ComfyUI 0.33: {MISSING}")
PHOTOS = ("astronaut.jpg", "coffee_cup.jpg", "chelsea_cat.jpg")


@pytest.fixture(scope="module", autouse=True)
def edit_test_nodes():
    import nodes

    tiny_edit.register_test_nodes()
    yield
    for name in tiny_edit.TEST_NODES:
        nodes.NODE_CLASS_MAPPINGS.pop(name, None)


# --------------------------------------------------------------------------- sizes and windows


def test_each_family_gets_its_preferred_size():
    qwen = ops.target_size(300, 500, ops.size_rule("qwen_image_edit"))
    assert qwen[0] % 32 == 0 and qwen[1] % 32 == 0 and qwen[0] * qwen[1] <= 1024 * 1024
    assert qwen[0] * qwen[1] > 0.9 * 1024 * 1024 and abs(qwen[1] / qwen[0] - 5 / 3) < 0.05
    kontext = ops.target_size(300, 500, ops.size_rule("flux_kontext"))
    assert (kontext[1], kontext[0]) in ops.KONTEXT_RESOLUTIONS and kontext == (800, 1328)  # nearest aspect: 1328 / 800 = 1.66
    flux2 = ops.target_size(333, 517, ops.size_rule("flux2"))
    assert flux2[0] % 16 == 0 and flux2[1] % 16 == 0 and flux2[0] * flux2[1] <= 1024 * 1024
    assert ops.target_size(100, 100, ops.size_rule("any", multiple=8, megapixels=0.25)) == (512, 512)
    with pytest.raises(ValueError, match="unknown model family"):
        ops.size_rule("sdxl")


def test_crop_window_shifts_inward_at_the_border_and_never_mirrors():
    picture = photo("coffee_cup.jpg")                       # 400 x 600
    stitch = ops.crop_for_edit(picture, box_mask(400, 600, (0, 150, 60, 250)), "qwen_image_edit", margin=64)
    x0, y0, x1, y1 = stitch.regions[0].window
    assert x0 == 0 and y0 >= 0 and x1 <= 600 and y1 <= 400   # shifted inside: no padding needed
    crop = ops.resize_image(picture[:, y0:y1, x0:x1], *stitch.crops.shape[1:3])
    assert torch.equal(stitch.crops, crop)                    # the crop is the picture's own pixels
    # Kontext on a tall narrow strip: the window must be wider than the picture, so it is padded by
    # repeating the edge column, never with a mirror image of the picture.
    strip = picture[:, :, 280:330]
    stitch = ops.crop_for_edit(strip, box_mask(400, 50, (10, 100, 40, 300)), "flux_kontext", margin=16)
    x0, _, x1, _ = stitch.regions[0].window
    assert x0 < 0 and x1 > 50
    window = ops.cut_window(strip[0], stitch.regions[0].window)
    assert torch.equal(window[:, : -x0], strip[0, stitch.regions[0].window[1]:stitch.regions[0].window[3], :1].expand(-1, -x0, -1))
    assert torch.equal(window[:, 50 - x0:], strip[0, stitch.regions[0].window[1]:stitch.regions[0].window[3], -1:].expand(-1, x1 - 50, -1))
    assert float(stitch.crop_masks[0, :, :2].max()) == 0.0    # padding is never part of the mask


def test_several_masks_give_crops_of_one_size_and_empty_masks_are_refused():
    picture = photo("astronaut.jpg")
    masks = torch.cat((box_mask(512, 512, (40, 40, 100, 120)), box_mask(512, 512, (300, 250, 460, 330))))
    stitch = ops.crop_for_edit(picture, masks, "flux2", margin=32)
    assert stitch.crops.shape[0] == 2 and stitch.crop_masks.shape[0] == 2 and len(stitch.regions) == 2
    for region in stitch.regions:
        x0, y0, x1, y1 = region.window
        assert abs((x1 - x0) / (y1 - y0) - stitch.crops.shape[2] / stitch.crops.shape[1]) < 0.02  # same aspect
    with pytest.raises(ValueError, match="mask 1 of the batch is empty"):
        ops.crop_for_edit(picture, torch.cat((masks[:1], torch.zeros(1, 512, 512))), "flux2")


# --------------------------------------------------------------------------- registration

DRIFTS = [(32, -32, 1.0, 0.0), (-32, 20, 1.05, 1.0), (18, 32, 0.95, -1.0), (-7, -11, 1.03, 0.5), (0.0, 0.0, 1.0, 0.0)]
MASKS = {"astronaut.jpg": (180, 60, 300, 200), "coffee_cup.jpg": (200, 100, 400, 250), "chelsea_cat.jpg": (120, 80, 260, 220)}


@pytest.mark.parametrize("name", PHOTOS)
def test_registration_recovers_known_drifts_within_half_a_pixel(name):
    """Shifts up to 32 px, zooms of 5 %, rotations of 1 degree, noise and a repainted masked region: the found
    transform puts every crop pixel within 0.5 px of where the true one does; a plain stitch is off by the drift."""
    picture = photo(name)
    height, width = picture.shape[1:3]
    stitch = ops.crop_for_edit(picture, box_mask(height, width, MASKS[name]), "qwen_image_edit", margin=96)
    crop_h, crop_w = stitch.crops.shape[1:3]
    usable = ops.usable_area(stitch.crop_masks[0], stitch.regions[0].window, height, width, (crop_h // 4, crop_w // 4))
    for seed, drift in enumerate(DRIFTS):
        true = tiny_edit.drift_matrix(*drift)
        found = ops.register(stitch.crops[0], tiny_edit.edit_with_drift(picture, stitch, 0, true, seed=seed), usable)
        assert found.applied and found.confidence > 0.8, (name, drift, found.describe())
        assert tiny_edit.corner_error(found.matrix, true, crop_h, crop_w) <= 0.5, (name, drift, found.describe())
        plain = tiny_edit.corner_error(ops.IDENTITY, true, crop_h, crop_w)
        assert plain >= math.hypot(drift[0], drift[1]) - 1e-6  # what a stitch without registration is off by


@pytest.mark.parametrize("replacement", ["noise", "another photo"])
def test_no_reliable_match_means_no_warp_and_says_why(replacement):
    picture = photo("astronaut.jpg")
    stitch = ops.crop_for_edit(picture, box_mask(512, 512, MASKS["astronaut.jpg"]), "qwen_image_edit", margin=96)
    crop_h, crop_w = stitch.crops.shape[1:3]
    if replacement == "noise":
        edited = torch.rand(1, crop_h, crop_w, 3, generator=torch.Generator().manual_seed(1))
    else:
        edited = ops.resize_image(photo("chelsea_cat.jpg"), crop_h, crop_w)
    result = ops.stitch_edit(stitch, edited, feather_px=0)
    [found] = result.registrations
    assert not found.applied and found.confidence < 0.15 and "no reliable match" in found.reason
    assert torch.equal(found.matrix, ops.IDENTITY)
    # Not warped: the stitched pixels are the edit scaled back unshifted (a plain stitch).
    plain = ops.stitch_edit(stitch, edited, register_drift=False, feather_px=0)
    assert torch.equal(result.image, plain.image)
    # A mask that covers the whole crop leaves nothing to compare.
    whole = ops.crop_for_edit(picture, torch.ones(1, 512, 512), "qwen_image_edit", margin=0)
    [found] = ops.stitch_edit(whole, whole.crops).registrations
    assert not found.applied and "almost nothing of the crop" in found.reason


# --------------------------------------------------------------------------- stitching


def _expected_outside(mask: torch.Tensor, reach: int) -> torch.Tensor:
    """Pixels farther than ``reach`` px from the mask (by exact distance): these must be the source's."""
    grow = pack_import("nodes.ops.masks").grow
    return grow(mask, reach)[0] < 0.5


@pytest.mark.parametrize("size, box", [((301, 453), (150, 90, 260, 201)),     # odd sizes
                                       ((257, 311), (0, 0, 70, 90)),          # a corner: touches two edges
                                       ((199, 401), (330, 40, 401, 199))])    # touches the right and bottom edges
def test_pixels_outside_the_grown_mask_are_the_source_bit_for_bit(size, box):
    height, width = size
    picture = ops.resize_image(photo("chelsea_cat.jpg"), height, width)
    mask = box_mask(height, width, box)
    stitch = ops.crop_for_edit(picture, mask, "qwen_image_edit", margin=40, megapixels=0.1)
    true = tiny_edit.drift_matrix(6, -4, 1.02, 0.3)
    edited = tiny_edit.edit_with_drift(picture, stitch, 0, true).unsqueeze(0)
    # A change outside the mask, near it: the stitch may grow over it, no further than the limit.
    edited[:, :, : edited.shape[2] // 8] = torch.tensor([0.0, 1.0, 0.0])
    feather, limit = 6, 12
    result = ops.stitch_edit(stitch, edited, feather_px=feather, grow_limit_px=limit, colour_match=True)
    kept = result.weight[0] <= 0
    assert kept.any()
    assert torch.equal(result.image[0][kept], picture[0][kept])                      # 100 % bit-identical
    assert bool(kept[_expected_outside(mask, feather + limit + 1)].all())          # the grown mask stays in bounds
    assert result.image.shape == picture.shape and result.image.dtype == picture.dtype
    assert torch.equal(stitch.source, picture)                                     # inputs untouched


def test_change_map_reports_changes_outside_the_mask_and_growth_stays_within_the_limit():
    picture = photo("coffee_cup.jpg")
    mask = box_mask(400, 600, MASKS["coffee_cup.jpg"])
    stitch = ops.crop_for_edit(picture, mask, "qwen_image_edit", margin=96)
    edited = tiny_edit.edit_with_drift(picture, stitch, 0, tiny_edit.drift_matrix(10, 5, 1.0, 0.0), noise=0.0)
    crop_h, crop_w = stitch.crops.shape[1:3]
    clean = ops.stitch_edit(stitch, edited.unsqueeze(0))
    assert clean.registrations[0].applied and clean.change_scores[0] < 0.01
    assert float(clean.changes.sum()) < 0.01 * 400 * 600 and clean.grown_px == [0]
    # The model also repainted a blob just right of the mask: reported, and covered when growth allows.
    changed = edited.clone()
    changed[crop_h // 3: crop_h // 2, int(crop_w * 0.78): int(crop_w * 0.86)] = torch.tensor([0.1, 0.1, 0.9])
    spill = ops.stitch_edit(stitch, changed.unsqueeze(0), grow_limit_px=60)
    assert spill.change_scores[0] > 0.01 and float(spill.changes.sum()) > 500
    assert spill.grown_px[0] > 500
    held = ops.stitch_edit(stitch, changed.unsqueeze(0), grow_limit_px=0)
    assert held.grown_px == [0] and float((held.weight > 0).sum()) < float((spill.weight > 0).sum())


def test_registration_makes_the_stitch_line_up_where_a_plain_stitch_is_off():
    """Two regions of one picture, each crop drifted its own way, stitched in one call: with registration the
    stitched pixels match the drift-free edit; without it they are off by the drift. (Switching
    registration off inside stitch_edit turns this test and the exactness tests above red.)"""
    picture = photo("astronaut.jpg")
    masks = torch.cat((box_mask(512, 512, (60, 300, 160, 420)), box_mask(512, 512, (330, 60, 450, 170))))
    stitch = ops.crop_for_edit(picture, masks, "flux2", margin=80)
    drifts = [tiny_edit.drift_matrix(-20, 14, 1.04, -0.8), tiny_edit.drift_matrix(25, -9, 0.96, 0.6)]
    edited = torch.stack([tiny_edit.edit_with_drift(picture, stitch, i, m, noise=0.0) for i, m in enumerate(drifts)])
    truth = torch.stack([tiny_edit.edit_with_drift(picture, stitch, i, ops.IDENTITY, noise=0.0) for i in range(2)])
    target = ops.stitch_edit(stitch, truth, register_drift=False, feather_px=12)
    ours = ops.stitch_edit(stitch, edited, feather_px=12)
    plain = ops.stitch_edit(stitch, edited, register_drift=False, feather_px=12)
    assert all(r.applied for r in ours.registrations)
    band = (target.weight[0] > 0) & (masks.amax(0) < 0.5)        # the feathered band outside the masks
    ours_error = (ours.image[0] - target.image[0]).abs()[band].mean()
    plain_error = (plain.image[0] - target.image[0]).abs()[band].mean()
    assert ours_error < 0.01 < plain_error and plain_error > 5 * ours_error
    for found, true in zip(ours.registrations, drifts):
        assert tiny_edit.corner_error(found.matrix, true, *stitch.crops.shape[1:3]) <= 0.5


# --------------------------------------------------------------------------- the nodes in ComfyUI


def _save_input(name: str, picture: torch.Tensor) -> None:
    path = workspace().input / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((picture[0].numpy() * 255).round().astype(np.uint8)).save(path)


def test_nodes_undo_a_known_drift_in_comfyui_and_report_it():
    picture = ops.resize_image(photo("astronaut.jpg"), 255, 257)  # odd sizes
    _save_input("edit_astronaut.png", picture)
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "edit_astronaut.png"}},
        **box_mask_nodes("mask", 257, 255, (90, 30, 60, 70)),
        "crop": {"class_type": "SCCropForEdit", "inputs": {"image": ["load", 0], "mask": ["mask", 0],
                                                           "model_family": "any", "margin": 60, "multiple_of": 8,
                                                           "megapixels": 0.05}},
        "edit": {"class_type": "TestDrift", "inputs": {"image": ["crop", 0], "dx": 9.0, "dy": -6.0, "zoom": 1.03,
                                                       "degrees": 0.7}},
        "stitch": {"class_type": "SCStitchEditBack", "inputs": {
            "stitch": ["crop", 2], "edited": ["edit", 0], "register": True, "feather": 8, "grow_limit": 0,
            "change_threshold": 0.12, "colour_match": False, "max_zoom": 0.1, "max_shift": 0.25,
            "min_confidence": 0.3}},
    }
    result = run_prompt(prompt, outputs=["crop", "stitch"])
    crops, crop_masks = result.output("crop", 0), result.output("crop", 1)
    assert crops.shape[1] % 8 == 0 and crops.shape[2] % 8 == 0 and crop_masks.shape == crops.shape[:3]
    image, weight, changes = (result.output("stitch", i) for i in range(3))
    confidence, report = result.output("stitch", 4), json.loads(result.output("stitch", 5))
    loaded = run_prompt({"load": prompt["load"]}, outputs=["load"]).output("load", 0)
    assert image.shape == loaded.shape and weight.shape == changes.shape == loaded.shape[:3]
    kept = weight[0] <= 0
    assert torch.equal(image[0][kept], loaded[0][kept])
    [entry] = report
    assert entry["warped"] and abs(confidence - entry["confidence"]) < 1e-4 and confidence > 0.8
    # The crop is about 3.5x the picture's scale, so TestDrift's (9, -6) crop px is what the report gives.
    assert abs(entry["shift_px"][0] - 9.0) < 0.3 and abs(entry["shift_px"][1] + 6.0) < 0.3
    assert abs(entry["zoom"] - 1.03) < 0.002 and abs(entry["rotation_deg"] - 0.7) < 0.05


def test_stitch_refuses_a_batch_that_does_not_match_the_crops():
    picture = photo("chelsea_cat.jpg")
    masks = torch.cat((box_mask(300, 451, (10, 10, 50, 50)), box_mask(300, 451, (200, 100, 260, 180))))
    stitch = ops.crop_for_edit(picture, masks, "any", margin=16, multiple=8, megapixels=0.02)
    with pytest.raises(ValueError, match="batch 3 but Crop For Edit made 2 crops"):
        ops.stitch_edit(stitch, torch.cat((stitch.crops, stitch.crops[:1])))


# --------------------------------------------------------------------------- the real edit path (ComfyUI 0.33)


def _edit_prompt(family: str, architecture: str) -> dict:
    """Load -> mask -> Crop For Edit -> core's edit conditioning -> KSampler (2 steps) -> VAE Decode -> Stitch."""
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "edit_cat.png"}},
        **box_mask_nodes("mask", 150, 100, (50, 30, 30, 24)),
        "crop": {"class_type": "SCCropForEdit", "inputs": {"image": ["load", 0], "mask": ["mask", 0],
                                                           "model_family": family, "margin": 16, "multiple_of": 16,
                                                           "megapixels": 64 * 64 / 1024 / 1024}},
        "model": {"class_type": "TinyDiTLoader", "inputs": {"architecture": architecture}},
        "clip": {"class_type": "TinyDiTCLIPLoader", "inputs": {"architecture": architecture}},
        "vae": ({"class_type": "TinyQwenVAELoader", "inputs": {}} if architecture == "qwen_image" else
                {"class_type": "TinyDiTVAELoader", "inputs": {"architecture": architecture}}),
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["crop", 0], "vae": ["vae", 0]}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["model", 0], "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["encode", 0], "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "stitch": {"class_type": "SCStitchEditBack", "inputs": {
            "stitch": ["crop", 2], "edited": ["decode", 0], "register": True, "feather": 4, "grow_limit": 8,
            "change_threshold": 0.12, "colour_match": True, "max_zoom": 0.1, "max_shift": 0.25,
            "min_confidence": 0.3}},
    }
    if architecture == "qwen_image":
        prompt["text"] = {"class_type": "TextEncodeQwenImageEditPlus", "inputs": {
            "clip": ["clip", 0], "prompt": "make the cat's ear blue", "image1": ["crop", 0]}}
        prompt["empty"] = {"class_type": "TextEncodeQwenImageEditPlus", "inputs": {"clip": ["clip", 0], "prompt": ""}}
    else:
        prompt["text"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "make the ear blue"}}
        prompt["empty"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["text", 0]}}
    prompt["positive"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["text", 0], "latent": ["encode", 0]}}
    prompt["negative"] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["empty", 0], "latent": ["encode", 0]}}
    return prompt


@needs_dit
@pytest.mark.parametrize("family, architecture, channels, per_cell", [
    ("qwen_image_edit", "qwen_image", (16, 1), 8),   # Qwen-Image's 5-D latent from the real Wan 2.1 VAE class
    ("flux_kontext", "flux", (16,), 8),
    ("flux2", "flux2", (128,), 16),
])
def test_the_edit_path_runs_through_core_edit_nodes_on_tiny_models(family, architecture, channels, per_cell):
    """Kontext's resolution list has nothing below 672 px, so its run uses the budget rule at 64 x 64 (a
    documented stand-in; Kontext's own sizes are checked above). The tiny random models paint noise, so
    Stitch Edit Back must find no reliable match, not warp, and still keep every pixel outside the mask."""
    picture = ops.resize_image(photo("chelsea_cat.jpg"), 100, 150)
    _save_input("edit_cat.png", picture)
    prompt = _edit_prompt("any" if family == "flux_kontext" else family, architecture)
    result = run_prompt(prompt, outputs=["load", "crop", "positive", "stitch"])
    crop_h, crop_w = result.output("crop", 0).shape[1:3]
    assert crop_h % per_cell == 0 and crop_w % per_cell == 0
    [(_, options)] = result.output("positive")
    [reference] = options["reference_latents"]
    # the crop's own size reached the model as its reference, in the model's latent layout
    assert tuple(reference.shape) == (1, *channels, crop_h // per_cell, crop_w // per_cell)
    image, weight = result.output("stitch", 0), result.output("stitch", 1)
    [entry] = json.loads(result.output("stitch", 5))
    assert image.shape == (1, 100, 150, 3) and torch.isfinite(image).all()
    kept = weight[0] <= 0
    assert kept.float().mean() > 0.5 and torch.equal(image[0][kept], result.output("load", 0)[0][kept])
    assert not entry["warped"] and "no reliable match" in entry["registration"]
