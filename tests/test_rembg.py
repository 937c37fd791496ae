"""Background removal with the real u2netp.onnx on scikit-image photos, through ComfyUI's executor."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from harness import REPO_ROOT, node_error_message, pack_import, run_prompt, workspace, write_model_file

rembg_models = pack_import("nodes.models.rembg_models")
shared = pack_import("nodes.models")
U2NETP = REPO_ROOT / ".test-assets" / "u2netp.onnx"


@pytest.fixture(scope="module", autouse=True)
def u2netp():
    if not U2NETP.is_file():
        pytest.skip("no .test-assets/u2netp.onnx: run scripts/setup.sh (it extracts the real weights)")
    write_model_file("rembg", "u2netp.onnx", U2NETP.read_bytes())


def photo_prompt(name: str, pixels: np.ndarray, model: str = "u2netp.onnx", **extra) -> dict:
    Image.fromarray(pixels).save(workspace().input / name)
    inputs = {"image": ["img", 0], "model": model, "alpha_matting": False}
    inputs.update(extra)
    return {"img": {"class_type": "LoadImage", "inputs": {"image": name}},
            "cut": {"class_type": "SCRemoveBackground", "inputs": inputs}}


def corners(mask: torch.Tensor, size: int = 20) -> torch.Tensor:
    return torch.stack([mask[:size, :size], mask[:size, -size:], mask[-size:, :size], mask[-size:, -size:]])


def test_the_mask_covers_the_cup_and_not_the_corners():
    pixels = data.coffee()  # 400x600, a cup of coffee in the middle on a table
    result = run_prompt(photo_prompt("coffee.png", pixels), outputs=["cut"])
    mask, cutout = result.output("cut", 0), result.output("cut", 1)
    assert mask.shape == (1, 400, 600) and cutout.shape == (1, 400, 600, 3)
    assert mask.min() >= 0 and mask.max() <= 1
    cup = mask[0, 120:280, 200:400]  # the middle of the cup
    assert cup.mean() > 0.8
    assert corners(mask[0]).mean() < 0.1
    expected = torch.from_numpy(pixels).float() / 255 * mask[0, ..., None]
    assert torch.allclose(cutout[0], expected, atol=1 / 255 + 1e-4)
    shown = result.ui["cut"]["images"]  # the node shows the mask as a coloured overlay on the photo
    assert len(shown) == 1 and shown[0]["type"] == "temp"
    overlay = np.asarray(Image.open(workspace().temp / shown[0]["subfolder"] / shown[0]["filename"]))
    assert overlay.shape == (400, 600, 3)
    red = overlay[200, 300].astype(int) - pixels[200, 300].astype(int)  # inside the cup: tinted red
    assert red[0] > red[2]
    assert np.abs(overlay[:10, :10].astype(int) - pixels[:10, :10].astype(int)).max() <= 26  # corner: barely tinted


def test_the_mask_covers_the_astronaut_and_a_batch_is_masked_image_by_image():
    pixels = data.astronaut()  # 512x512 portrait, the person fills the lower middle
    prompt = photo_prompt("astronaut.png", pixels)
    prompt["two"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img", 0], "image2": ["img", 0]}}
    prompt["cut"]["inputs"]["image"] = ["two", 0]
    mask = run_prompt(prompt, outputs=["cut"]).output("cut", 0)
    assert mask.shape == (2, 512, 512) and torch.equal(mask[0], mask[1])
    assert mask[0, 250:500, 150:350].mean() > 0.7  # face and suit
    assert mask[0, :20, -20:].mean() < 0.1 and mask[0, :20, :20].mean() < 0.1  # the flag / background corners


def test_alpha_matting_softens_the_edge_but_keeps_the_subject():
    pixels = np.asarray(Image.fromarray(data.coffee()).resize((300, 200)))
    plain = run_prompt(photo_prompt("small_coffee.png", pixels), outputs=["cut"]).output("cut", 0)
    matted = run_prompt(photo_prompt("small_coffee.png", pixels, alpha_matting=True, erode_size=5),
                        outputs=["cut"]).output("cut", 0)
    assert matted.shape == plain.shape
    assert matted[0, 60:140, 100:200].mean() > 0.8 and corners(matted[0], 10).mean() < 0.1
    assert not torch.equal(matted, plain)


def test_greyscale_and_rgba_inputs_are_converted_not_refused():
    grey = np.asarray(Image.fromarray(data.coffee()).convert("L").convert("RGB"))
    prompt = photo_prompt("grey_coffee.png", grey)
    prompt["alpha"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 600, "height": 400}}
    prompt["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["img", 0], "alpha": ["alpha", 0]}}
    prompt["cut"]["inputs"]["image"] = ["rgba", 0]
    mask = run_prompt(prompt, outputs=["cut"]).output("cut", 0)
    assert mask.shape == (1, 400, 600) and mask[0, 120:280, 200:400].mean() > 0.7


def test_the_session_reads_the_file_without_touching_the_environment():
    import types

    environ = os.environ
    os.environ = types.MappingProxyType(dict(environ))  # any write raises TypeError (pytest's own writes too,
    try:                                                # so it is swapped back right after the call)
        session = rembg_models.new_session("u2netp.onnx")
    finally:
        os.environ = environ
    assert session.model_name == "u2netp"
    assert type(session).__mro__[1].__name__ == "U2netpSession"  # rembg's own class: its pre- and post-processing


def test_masks_equal_rembgs_own_named_session_and_its_u2net_custom_session(monkeypatch, tmp_path):
    """Same numbers as before (rembg found the file through U2NET_HOME) and as rembg's u2net_custom, which
    only accepts files under rembg's own home folder (U2NET_HOME), so it cannot read models/rembg as is."""
    from rembg import new_session

    pixels = np.asarray(Image.fromarray(data.coffee()).resize((300, 200)))
    ours = rembg_models.remove_background(rembg_models.new_session("u2netp.onnx"), pixels)
    in_comfyui = str(workspace().models / "rembg" / "u2netp.onnx")
    with pytest.raises(ValueError, match="within the models directory"):  # why the pack does not use u2net_custom
        new_session("u2net_custom", model_path=in_comfyui, providers=["CPUExecutionProvider"])
    (tmp_path / "u2netp.onnx").write_bytes(U2NETP.read_bytes())
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # the old way, here in the test only
    named = rembg_models.remove_background(new_session("u2netp", providers=["CPUExecutionProvider"]), pixels)
    custom = rembg_models.remove_background(
        new_session("u2net_custom", model_path=str(tmp_path / "u2netp.onnx"), providers=["CPUExecutionProvider"]),
        pixels)
    assert ours.shape == (200, 300) and 0.2 < ours.mean() < 0.8
    assert np.array_equal(ours, named)
    assert np.array_equal(ours, custom)  # u2net_custom preprocesses like u2netp; not like isnet or birefnet


def test_missing_unknown_and_corrupt_models_are_clear_errors_and_nothing_is_downloaded():
    with pytest.raises(shared.ModelFileError, match="'u2net.onnx' was not found in models/rembg.*danielgatis/rembg"):
        rembg_models.new_session("u2net.onnx")
    write_model_file("rembg", "mystery.onnx", U2NETP.read_bytes())
    with pytest.raises(shared.ModelFileError, match="no model named 'mystery'.*u2netp.onnx"):
        rembg_models.new_session("mystery.onnx")
    write_model_file("rembg", "silueta.onnx", b"not an onnx model" * 100)
    message = node_error_message(photo_prompt("tiny.png", np.zeros((32, 32, 3), np.uint8), model="silueta.onnx"),
                                 ["cut"])
    assert "truncated or corrupt" in message and "silueta.onnx" in message
    assert not (workspace().models / "rembg" / "models").exists()  # rembg's download folder never appeared
