"""Neural annotators without controlnet_aux's package __init__, limited to a mask, on both legs.

controlnet_aux 0.0.10's ``__init__`` imports its mediapipe_face module, which reads
``mp.solutions`` and so fails with mediapipe >= 0.10.30 (the latest leg). The pack imports only
the network submodules it needs, under a private name. Random-weight networks stand in for the
real checkpoints (same architecture, same state-dict keys, loaded through the same loader); the
checks are about where the annotator's output lands: exactly the annotator's pixels inside the
mask, exactly 0 outside.
"""
import importlib.metadata
import sys

import pytest
import torch

from harness import pack_import, run_prompt, workspace

ops = pack_import("nodes.ops.control")
annotators = pack_import("nodes.models.annotators")
MEDIAPIPE = importlib.metadata.version("mediapipe")
# annotators whose networks are small enough to build with random weights in a test
SMALL = ("lineart", "softedge_hed", "softedge_pidi")


def save_random_weights(name: str):
    annotator = annotators.get(name)
    torch.manual_seed(0)
    network = annotator.build()
    state = network.state_dict()
    if name == "softedge_pidi":  # the real checkpoint wraps the weights: {"state_dict": {"module.<key>": ...}}
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = workspace().models / "annotators" / annotator.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def weights():
    paths = [save_random_weights(name) for name in SMALL]
    yield
    for path in paths:  # other test files check the error for a missing file
        path.unlink()


def picture(batch=1, height=96, width=120):
    torch.manual_seed(1)
    image = torch.rand(batch, height, width, 3) * 0.3
    image[:, 30:70, 40:90] += 0.6  # a bright block for the networks to react to
    return image.clamp(0, 1)


def box_mask(height=96, width=120):
    mask = torch.zeros(1, height, width)
    mask[:, 20:80, 30:100] = 1.0
    return mask


def test_controlnet_aux_package_init_is_never_run():
    annotators.annotate("lineart", picture(), resolution=64)
    assert "controlnet_aux" not in sys.modules  # the real package (other packs' copy) untouched
    if not hasattr(pytest.importorskip("mediapipe"), "solutions"):
        with pytest.raises(AttributeError, match="solutions"):
            import controlnet_aux  # noqa: F401  (what the pack avoids: fails on mediapipe >= 0.10.30)


@pytest.mark.parametrize("name", SMALL)
def test_annotate_then_mask_is_the_annotator_inside_and_zero_outside(name):
    image, mask = picture(), box_mask()
    full = annotators.annotate(name, image, resolution=64)
    control, out_mask = ops.masked_control_image(image, mask, lambda b: annotators.annotate(name, b, 64),
                                                 "annotate_then_mask")
    inside = mask[0] > 0
    assert control.shape == image.shape and torch.equal(out_mask, mask)
    assert torch.count_nonzero(control[0][~inside]) == 0
    assert torch.equal(control[0][inside], full[0][inside])
    assert full[0][inside].std() > 1e-4  # the network produced a picture, not a constant


@pytest.mark.parametrize("name", SMALL)
def test_mask_then_annotate_annotates_only_the_subject_on_the_fill(name):
    image, mask = picture(), box_mask()
    on_grey = ops.fill_outside(image, mask, "grey")
    expected = annotators.annotate(name, on_grey, resolution=64)
    control, _ = ops.masked_control_image(image, mask, lambda b: annotators.annotate(name, b, 64),
                                          "mask_then_annotate", "grey")
    inside = mask[0] > 0
    assert torch.count_nonzero(control[0][~inside]) == 0
    assert torch.equal(control[0][inside], expected[0][inside])
    # the subject alone on grey is not the whole picture: what lies outside the mask changed the result
    whole = annotators.annotate(name, image, resolution=64)
    assert not torch.equal(whole[0][inside], expected[0][inside])


def test_the_big_networks_import_without_the_package_init():
    assert annotators._controlnet_aux("midas.midas.dpt_depth").DPTDepthModel
    assert annotators._controlnet_aux("normalbae.nets.NNET").NNET


def test_node_runs_a_neural_annotator_inside_the_mask():
    from PIL import Image

    pixels = (picture()[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(workspace().input / "block.png")
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "block.png"}},
        "box": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 70, "height": 60}},
        "canvas": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 120, "height": 96}},
        "mask": {"class_type": "MaskComposite", "inputs": {"destination": ["canvas", 0], "source": ["box", 0],
                                                           "x": 30, "y": 20, "operation": "add"}},
        "control": {"class_type": "SCMaskedControlImage", "inputs": {
            "image": ["load", 0], "mask": ["mask", 0], "annotator": "softedge_hed", "mode": "annotate_then_mask",
            "feather": 0, "fill": "grey", "resolution": 64, "canny_low": 100, "canny_high": 200}},
    }
    control = run_prompt(prompt, outputs=["control"]).output("control", 0)
    loaded = torch.from_numpy(pixels).float().div(255).unsqueeze(0)
    full = annotators.annotate("softedge_hed", loaded, resolution=64)
    inside = box_mask()[0] > 0
    assert control.shape == (1, 96, 120, 3)
    assert torch.count_nonzero(control[0][~inside]) == 0
    assert torch.allclose(control[0][inside], full[0][inside], atol=1e-6)
