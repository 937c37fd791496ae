"""Masked control images: exact output size, zeros outside the mask, canny agreement, annotator files."""
import numpy as np
import pytest
import torch
from skimage import data

from harness import node_error_message, pack_import, run_prompt, workspace

ops = pack_import("nodes.ops.control")
annotators = pack_import("nodes.models.annotators")
models = pack_import("nodes.models")


@pytest.fixture(scope="module")
def astronaut():
    return torch.from_numpy(data.astronaut()).float().div(255.0).unsqueeze(0)  # [1,512,512,3]


def ellipse_mask(height, width, batch=1):
    y = torch.arange(height).view(-1, 1) + 0.5
    x = torch.arange(width).view(1, -1) + 0.5
    inside = ((x - width * 0.45) / (width * 0.3)) ** 2 + ((y - height * 0.5) / (height * 0.35)) ** 2 <= 1
    return inside.float().expand(batch, height, width).contiguous()


def opencv_canny(image, low=100, high=200):
    """The reference: OpenCV's own Canny of each frame in 8 bits, white edges on black in three channels."""
    import cv2

    frames = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    edges = torch.from_numpy(np.stack([cv2.Canny(frame, low, high) for frame in frames])).float().div(255.0)
    return edges.unsqueeze(-1).expand(*edges.shape, 3)


def canny_annotate(batch):
    return ops.canny(batch, 100, 200)


@pytest.mark.parametrize("mode", ops.MODES)
def test_output_has_the_inputs_exact_odd_size_and_batch(mode, astronaut):
    image = torch.nn.functional.interpolate(astronaut.movedim(-1, 1), size=(389, 517), mode="bilinear").movedim(1, -1)
    image = image.repeat(3, 1, 1, 1)
    half_size = lambda b: torch.nn.functional.interpolate(b.movedim(-1, 1), scale_factor=0.5).movedim(1, -1)  # noqa: E731
    control, mask = ops.masked_control_image(image, ellipse_mask(100, 120), lambda b: half_size(canny_annotate(b)),
                                             mode, feather_px=4)
    assert control.shape == (3, 389, 517, 3)
    assert mask.shape == (3, 389, 517)


@pytest.mark.parametrize("mode", ops.MODES)
def test_zeros_outside_the_mask(mode, astronaut):
    mask = ellipse_mask(512, 512)
    before = astronaut.clone()
    control, out_mask = ops.masked_control_image(astronaut, mask, canny_annotate, mode, feather_px=6)
    assert torch.equal(astronaut, before)  # input untouched
    assert torch.count_nonzero(control[0][mask[0] == 0]) == 0
    assert control[0][mask[0] > 0].sum() > 100  # edges were found inside
    assert torch.all(out_mask <= mask) and out_mask.max() == 1.0  # inward feather never grows


def test_canny_inside_the_mask_matches_canny_of_the_full_image(astronaut):
    mask = ellipse_mask(512, 512)
    full = opencv_canny(astronaut)
    after, _ = ops.masked_control_image(astronaut, mask, canny_annotate, "annotate_then_mask")
    inside = mask[0] > 0
    assert torch.equal(after[0][inside], full[0][inside])
    before, _ = ops.masked_control_image(astronaut, mask, canny_annotate, "mask_then_annotate")
    interior = pack_import("nodes.ops.masks").grow(mask, -6)[0] > 0  # away from the silhouette edge
    agree = (before[0][interior] == full[0][interior]).float().mean()
    assert agree > 0.995


def test_mask_batch_mismatch_is_a_clear_error(astronaut):
    with pytest.raises(ValueError, match=r"image has shape \(3, 512, 512, 3\) and mask has shape \(2, 512, 512\)"):
        ops.masked_control_image(astronaut.repeat(3, 1, 1, 1), ellipse_mask(512, 512, 2), canny_annotate)


def test_residual_masks_are_zero_where_the_mask_does_not_reach_and_follow_the_hint_crop():
    import comfy.utils

    mask = torch.zeros(1, 60, 100)
    mask[:, :, 70:] = 1.0
    for size in ((8, 8), (4, 4), (3, 3)):
        m = ops.mask_for_residual(mask, (8, 8), size)
        probe = comfy.utils.common_upscale(mask.unsqueeze(1), size[1] * 8, size[0] * 8, "bilinear", "center")
        covered = torch.nn.functional.adaptive_avg_pool2d(probe, size) > 0
        assert torch.equal(m > 0, covered), size  # same crop as ComfyUI applies to the hint
    assert ops.center_crop_box(60, 100, 8, 8) == (0, 20, 60, 60)


def test_missing_annotator_file_names_file_folder_and_source(astronaut):
    with pytest.raises(models.ModelFileError) as error:
        annotators.annotate("softedge_hed", astronaut)
    text = str(error.value)
    assert "lllyasviel/Annotators/ControlNetHED.pth" in text and "models/annotators" in text
    assert "huggingface.co/lllyasviel/Annotators" in text


def test_lineart_annotator_loads_from_the_controlnet_aux_layout_once_and_keeps_the_size():
    Generator = annotators._controlnet_aux("lineart").Generator

    torch.manual_seed(0)
    path = workspace().models / "annotators" / "lllyasviel" / "Annotators" / "sk_model.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(Generator(3, 1, 3).state_dict(), path)
    image = torch.rand(2, 97, 131, 3)
    cached_before = set(annotators._cache._entries)  # other tests' annotators may still be cached
    out = annotators.annotate("lineart", image, resolution=128)
    again = annotators.annotate("lineart", image, resolution=128)
    assert out.shape == (2, 97, 131, 3)
    assert torch.equal(out, again)
    loaded = set(annotators._cache._entries) - cached_before
    assert len(loaded) == 1 and next(iter(loaded))[-1] == "lineart"  # loaded once, then taken from the cache
    control, _ = ops.masked_control_image(image, ellipse_mask(97, 131), lambda b: annotators.annotate("lineart", b, 128))
    assert control.shape == image.shape


def test_node_reports_missing_weights_and_runs_canny():
    np.random.seed(0)
    from PIL import Image

    Image.fromarray(data.astronaut()[::4, ::4]).save(workspace().input / "astro_small.png")
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "astro_small.png"}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
        "control": {"class_type": "SCMaskedControlImage", "inputs": {
            "image": ["load", 0], "mask": ["mask", 0], "annotator": "canny", "mode": "mask_then_annotate",
            "feather": 0, "fill": "grey", "resolution": 512, "canny_low": 100, "canny_high": 200}},
    }
    result = run_prompt(prompt, outputs=["control"])
    assert result.output("control", 0).shape == (1, 128, 128, 3)
    # a full mask without feather: exactly OpenCV Canny of the loaded image, thresholds passed through
    control, control_mask = result.output("control", 0), result.output("control", 1)
    loaded = torch.from_numpy(np.asarray(Image.open(workspace().input / "astro_small.png").convert("RGB"),
                                         dtype=np.float32) / 255.0)[None]
    assert torch.equal(control, opencv_canny(loaded, 100, 200))
    assert not torch.equal(control, opencv_canny(loaded, 50, 100))
    assert 0.02 < float((control[..., 0] > 0).float().mean()) < 0.5  # edges, not an empty or noise image
    assert torch.equal(control_mask, torch.ones(1, 128, 128))
    prompt["control"]["inputs"]["annotator"] = "depth_midas"
    message = node_error_message(prompt, outputs=["control"])
    assert "dpt_hybrid-midas-501f0c75.pt" in message and "models/annotators" in message
