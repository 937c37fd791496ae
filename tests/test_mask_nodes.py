"""Each mask node run through ComfyUI's own executor, with numbers checked."""
import numpy as np
import pytest
import torch
from harness import node_error_message, pack_import, run_prompt, workspace
from PIL import Image

masks = pack_import("nodes.ops.masks")


def save_mask(name: str, array: np.ndarray) -> dict:
    """Write a 0/1 mask as a PNG in the input folder; return a LoadImageMask node for it."""
    Image.fromarray((array * 255).astype(np.uint8)).convert("RGB").save(workspace().input / name)
    return {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": "red"}}


def save_image(name: str, array: np.ndarray) -> dict:
    Image.fromarray((array * 255).astype(np.uint8)).save(workspace().input / name)
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def square(size: int = 15, lo: int = 3, hi: int = 12) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.float32)
    m[lo:hi, lo:hi] = 1
    return m


def test_feather_node_numbers():
    prompt = {
        "1": save_mask("sq.png", square()),
        "2": {"class_type": "SCFeatherMask",
              "inputs": {"mask": ["1", 0], "radius": 2, "direction": "inward", "falloff": "linear"}},
    }
    out = run_prompt(prompt, outputs=["2"]).output("2")
    assert out.shape == (1, 15, 15)
    assert out[0, 3, 3:12].tolist() == [0.25] * 9 and out[0, 11, 3:12].tolist() == [0.25] * 9
    assert out[0, 4, 4:11].tolist() == [0.75] * 7 and out[0, 2].eq(0).all()


def test_grow_and_combine_nodes():
    dot = np.zeros((9, 9), dtype=np.float32)
    dot[4, 4] = 1
    prompt = {
        "1": save_mask("dot.png", dot),
        "2": {"class_type": "SCGrowMask", "inputs": {"mask": ["1", 0], "pixels": 2}},
        "3": {"class_type": "SCCombineMasks", "inputs": {"mask_a": ["2", 0], "mask_b": ["1", 0], "operation": "difference"}},
    }
    result = run_prompt(prompt, outputs=["2", "3"])
    assert int(result.output("2").sum()) == 13
    diff = result.output("3")
    assert int(diff.sum()) == 12 and diff[0, 4, 4] == 0


def test_cleanup_node():
    m = np.zeros((12, 12), dtype=np.float32)
    m[1:8, 1:8] = 1
    m[3:5, 3:5] = 0
    m[10, 10] = 1
    prompt = {
        "1": save_mask("holes.png", m),
        "2": {"class_type": "SCMaskCleanup",
              "inputs": {"mask": ["1", 0], "threshold": 0.5, "fill_holes": True, "min_island_px": 2}},
    }
    out = run_prompt(prompt, outputs=["2"]).output("2")
    assert int(out.sum()) == 49 and out[0, 1:8, 1:8].eq(1).all()


def test_crop_uncrop_nodes_roundtrip_exact():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3)).astype(np.float32) / 255
    m = np.zeros((32, 40), dtype=np.float32)
    m[10:14, 12:20] = 1
    prompt = {
        "1": save_image("photo.png", img),
        "2": save_mask("box.png", m),
        "3": {"class_type": "SCCropToMask",
              "inputs": {"image": ["1", 0], "mask": ["2", 0], "padding": 2, "round_to_8": True, "target_size": 0}},
        "4": {"class_type": "SCUncrop",
              "inputs": {"original": ["1", 0], "crop": ["3", 0], "crop_info": ["3", 2], "feather": 0}},
        "5": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}},
        "6": {"class_type": "SCUncrop",
              "inputs": {"original": ["1", 0], "crop": ["5", 0], "crop_info": ["3", 2], "mask": ["3", 1], "feather": 0}},
        "7": {"class_type": "SCUncrop",
              "inputs": {"original": ["1", 0], "crop": ["5", 0], "crop_info": ["3", 2], "mask": ["3", 1], "feather": 2}},
    }
    result = run_prompt(prompt, outputs=["3", "4", "6", "7"])
    crop, info = result.output("3", 0), result.output("3", 2)
    assert crop.shape == (1, 8, 16, 3) and info.box == (8, 8, 24, 16)
    original = result.output("4")
    loaded = torch.from_numpy(np.round(img * 255) / 255).float()
    assert torch.equal(original[0], loaded)
    pasted = result.output("6")[0]
    assert pasted[10:14, 12:20].eq(0).all()
    assert torch.equal(pasted[:10], loaded[:10]) and torch.equal(pasted[:, :12], loaded[:, :12])
    soft = result.output("7")[0]  # inward smoothstep feather 2: weights 0.15625 (edge ring), 0.84375 (next)
    assert torch.allclose(soft[10, 15], loaded[10, 15] * (1 - 0.15625), atol=1e-6)
    assert torch.allclose(soft[11, 15], loaded[11, 15] * (1 - 0.84375), atol=1e-6)
    assert torch.equal(soft[:10], loaded[:10])


def test_mask_to_latent_node():
    m = np.zeros((64, 64), dtype=np.float32)
    m[:, :32] = 1
    m[:4, 32:36] = 1  # a quarter of one 8x8 latent cell
    prompt = {
        "1": save_mask("half.png", m),
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "SCMaskToLatent", "inputs": {"latent": ["2", 0], "mask": ["1", 0]}},
    }
    result = run_prompt(prompt, outputs=["3"])
    latent, grid = result.output("3", 0), result.output("3", 1)
    assert grid.shape == (1, 8, 8) and latent["noise_mask"].shape == (1, 1, 8, 8)
    assert grid[0, :, :4].eq(1).all() and grid[0, 0, 4].item() == 0.25 and grid[0, 1:, 4:].eq(0).all()
    assert "samples" in latent


def test_batch_mismatch_error_message():
    prompt = {
        "1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 0}},
        "3": {"class_type": "ImageToMask", "inputs": {"image": ["2", 0], "channel": "red"}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0}},
        "5": {"class_type": "ImageToMask", "inputs": {"image": ["4", 0], "channel": "red"}},
        "6": {"class_type": "SCCombineMasks", "inputs": {"mask_a": ["3", 0], "mask_b": ["5", 0], "operation": "union"}},
    }
    message = node_error_message(prompt, outputs=["6"])
    assert "ValueError" in message and "(3, 8, 8)" in message and "(2, 8, 8)" in message
    assert "batch of 1" in message


def test_uncrop_wrong_original_error_message():
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}},
        "3": {"class_type": "SCCropToMask",
              "inputs": {"image": ["1", 0], "mask": ["2", 0], "padding": 0, "round_to_8": True, "target_size": 0}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "5": {"class_type": "SCUncrop",
              "inputs": {"original": ["4", 0], "crop": ["3", 0], "crop_info": ["3", 2], "feather": 0}},
    }
    message = node_error_message(prompt, outputs=["5"])
    assert "same image" in message and "32x32" in message


@pytest.mark.parametrize("node_id", ["SCFeatherMask", "SCGrowMask", "SCCombineMasks", "SCMaskCleanup",
                                     "SCCropToMask", "SCUncrop", "SCMaskToLatent"])
def test_schemas_have_tooltips_and_descriptions(node_id):
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    schema = cls.GET_SCHEMA()
    assert schema.description and schema.display_name and schema.category == "selective_control/masks"
    assert all(i.tooltip for i in schema.inputs), [i.id for i in schema.inputs if not i.tooltip]
