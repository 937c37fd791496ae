"""Finding nodes through ComfyUI's executor: SAM/CLIP loaders, the finder end to end, the skip logic.

Models: a random SAM vit_b saved once to models/sams (its image embedding is computed once and
reused through the loader's cache), a tiny random transformers CLIP saved to models/clip_matcher,
and for batches and ranking a real-code SAM with a one-block encoder plus the colour CLIP double
(harness.doubles.ColourMatcher), injected through test-only loader nodes.
"""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from PIL import Image

from harness import node_error_message, pack_import, run_prompt, workspace, write_model_file
from harness.fixture_nodes import fixture_node

sam_models = pack_import("nodes.models.sam")
clip_models = pack_import("nodes.models.clip_matcher")
shared = pack_import("nodes.models")


def calibrate(sam: torch.nn.Module) -> torch.nn.Module:
    """Random SAM logits are ~0 and its predicted IoU ~0: scale and shift them so masks pass SAM's filters."""
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(50.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.95)
    return sam.eval()


def random_sam(arch: str = "vit_b", seed: int = 0) -> torch.nn.Module:
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    return calibrate(sam_model_registry[arch](checkpoint=None))


def tiny_sam(seed: int = 0) -> torch.nn.Module:
    """segment-anything's own classes with a one-block, 32-wide image encoder (decoder unchanged)."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(seed)
    return calibrate(_build_sam(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1,
                                encoder_global_attn_indexes=[0]))


def tiny_clip_config():
    from transformers import CLIPConfig

    common = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1, "num_hidden_layers": 2,
              "hidden_act": "gelu", "projection_dim": 32}
    return CLIPConfig(text_config={**common, "vocab_size": 49408, "max_position_embeddings": 77},
                      vision_config={**common, "image_size": 64, "patch_size": 16}, projection_dim=32)


# --------------------------------------------------------------------------- fixtures and test nodes


_sam_cache = shared.ModelCache(max_entries=1)
TestSAMLoader = fixture_node(
    "TestSAMLoader", "Test-only node: the one-block-encoder SAM, as SC_SAM_MODEL.", ("SC_SAM_MODEL",),
    lambda: _sam_cache.get("tiny-sam", lambda: sam_models.SAMModel(tiny_sam(), "tiny")))


@pytest.fixture(scope="module", autouse=True)
def test_nodes():
    import nodes

    nodes.NODE_CLASS_MAPPINGS.update(TestSAMLoader=TestSAMLoader)
    yield
    nodes.NODE_CLASS_MAPPINGS.pop("TestSAMLoader")


@pytest.fixture(scope="module")
def sam_file() -> str:
    """A random, calibrated SAM vit_b saved once (~375 MB) under a name that does not say vit_b."""
    from safetensors.torch import save_file

    path = write_model_file("sams", "random_sam.safetensors")
    save_file({k: v.contiguous() for k, v in random_sam().state_dict().items()}, str(path))
    return path.name


@pytest.fixture(scope="module")
def clip_folder() -> str:
    from transformers import CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config())
    model.save_pretrained(str(workspace().models / "clip_matcher" / "tiny-clip"))
    return "tiny-clip"


def save_png(name: str, pixels: np.ndarray) -> str:
    Image.fromarray(pixels).save(workspace().input / name)
    return name


def colour_image(name: str, rgb: tuple[int, int, int], size=(192, 256)) -> str:
    pixels = np.empty((*size, 3), dtype=np.uint8)
    pixels[:] = rgb
    return save_png(name, pixels)


def batch_prompt(files: list[str]) -> dict:
    """LoadImage per file, joined with ImageBatch; the batch is node 'batch'."""
    prompt = {f"load{i}": {"class_type": "LoadImage", "inputs": {"image": f}} for i, f in enumerate(files)}
    last = ["load0", 0]
    for i in range(1, len(files)):
        prompt[f"join{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": last, "image2": [f"load{i}", 0]}}
        last = [f"join{i}", 0]
    prompt["_batch_ref"] = last
    return prompt


def finder(images_ref, sam_ref, clip_ref, classes="red", negatives="white, black", **extra) -> dict:
    inputs = {"image": images_ref, "sam": sam_ref, "clip_matcher": clip_ref, "class_names": classes,
              "negative_names": negatives, "threshold": 0.5, "merge": "best", "mode": "guided",
              "prompt_template": "a photo of a {}", "max_prompts": 2, "pred_iou_thresh": 0.0,
              "stability_thresh": 0.0, "dedupe_iou": 0.85, "amg_points_per_side": 4}
    inputs.update(extra)
    return {"class_type": "SCFindObjects", "inputs": inputs}


def colour_batch_prompt(files: list[str], **finder_inputs) -> dict:
    prompt = batch_prompt(files)
    images = prompt.pop("_batch_ref")
    prompt["sam"] = {"class_type": "TestSAMLoader", "inputs": {}}
    prompt["clip"] = {"class_type": "TestColourMatcherLoader", "inputs": {}}
    prompt["find"] = finder(images, ["sam", 0], ["clip", 0], **finder_inputs)
    prompt["filter"] = {"class_type": "SCFilterByFound",
                        "inputs": {"images": images, "masks": ["find", 0], "found": ["find", 1]}}
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": ["filter", 0], "filename_prefix": "found"}}
    return prompt


def saved(prefix: str) -> list:
    return sorted(workspace().output.glob(f"{prefix}_*.png"))


# --------------------------------------------------------------------------- SAM loading


@pytest.mark.parametrize("arch", ["vit_b", "vit_l", "vit_h"])
def test_architecture_is_read_from_the_weights_shapes(arch):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        state_dict = sam_model_registry[arch](checkpoint=None).state_dict()
    assert sam_models.detect_architecture(state_dict) == arch
    wrapped = sam_models.strip_prefix({f"module.{k}": v for k, v in state_dict.items()})
    assert sam_models.detect_architecture(wrapped) == arch


def test_unknown_and_foreign_architectures_are_clear_errors():
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        state_dict = sam_model_registry["vit_b"](checkpoint=None).state_dict()
    state_dict["image_encoder.pos_embed"] = torch.empty(1, 64, 64, 512, device="meta")
    with pytest.raises(shared.ModelFileError, match="unknown SAM architecture: image encoder width 512 with 12 blocks"):
        sam_models.detect_architecture(state_dict)
    with pytest.raises(shared.ModelFileError, match="not a segment-anything.*SAM 2"):
        sam_models.detect_architecture({"text_model.embeddings.token_embedding.weight": torch.empty(1)})


def test_missing_corrupt_and_wrong_checkpoints_say_what_to_do():
    with pytest.raises(shared.ModelFileError, match="'nope.pth' was not found in models/sams.*segment-anything#model"):
        sam_models.load_sam("nope.pth")
    write_model_file("sams", "broken.pth", b"\x80\x02 not a checkpoint" * 50)
    message = node_error_message({"sam": {"class_type": "SCLoadSAM", "inputs": {"model_name": "broken.pth"}}}, ["sam"])
    assert "truncated, corrupt" in message and "sam_vit_b_01ec64.pth" in message
    from safetensors.torch import save_file

    save_file({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 768)}, str(write_model_file("sams", "partial.safetensors")))
    message = node_error_message({"sam": {"class_type": "SCLoadSAM", "inputs": {"model_name": "partial.safetensors"}}},
                                 ["sam"])
    assert "not a segment-anything" in message


# --------------------------------------------------------------------------- CLIP loading


def test_clip_matcher_loads_from_a_folder_and_from_a_single_file_alike(clip_folder):
    folder = clip_models.load_clip_matcher(clip_folder).model
    single = workspace().models / "clip_matcher" / "tiny-clip.safetensors"
    single.write_bytes((workspace().models / "clip_matcher" / clip_folder / "model.safetensors").read_bytes())
    assert clip_folder in clip_models.list_choices() and "tiny-clip.safetensors" in clip_models.list_choices()
    alone = clip_models.load_clip_matcher("tiny-clip.safetensors").model
    texts = ["a photo of a shoe", "a photo of a hat"]
    a, b = folder.encode_text(texts), alone.encode_text(texts)
    assert a.shape == (2, 32) and torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2))
    images = torch.rand(3, 3, 40, 50)
    assert torch.allclose(folder.encode_images(images), alone.encode_images(images), atol=1e-5)
    assert folder.patch_similarity(images[:1], a).shape == (2, 4, 4)


def test_clip_files_without_both_towers_or_with_a_bad_config_are_refused(clip_folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(workspace().models / "clip_matcher" / clip_folder / "model.safetensors"))
    vision_only = {k: v for k, v in weights.items() if k.startswith("vision_model.") or k.startswith("visual_")}
    save_file(vision_only, str(write_model_file("clip_matcher", "vision-only.safetensors")))
    with pytest.raises(shared.ModelFileError, match="only the image tower"):
        clip_models.load_clip_matcher("vision-only.safetensors")
    write_model_file("clip_matcher", "bad/config.json", b'{"model_type": "siglip"}')
    with pytest.raises(shared.ModelFileError, match="'siglip' model, not a full CLIP"):
        clip_models.load_clip_matcher("bad")
    with pytest.raises(shared.ModelFileError, match="not found in models/clip_matcher"):
        clip_models.load_clip_matcher("absent")
    for empty in (None, ""):  # what an empty models folder leaves in the loader's list
        with pytest.raises(shared.ModelFileError, match="models/clip_matcher has none.*press R.*huggingface.co"):
            clip_models.load_clip_matcher(empty)
        with pytest.raises(shared.ModelFileError, match="models/sams has none.*segment-anything#model"):
            sam_models.load_sam(empty)


# --------------------------------------------------------------------------- the finder end to end


def red_disc_photo(name: str, size=(72, 96)) -> str:
    """A red disc on a mid-grey ground (which the colour CLIP double sees as no colour), so it finds "red"."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    pixels = np.full((*size, 3), 128, dtype=np.uint8)
    pixels[(yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 <= (0.35 * size[0]) ** 2] = (220, 30, 30)
    return save_png(name, pixels)


def test_finder_with_sam_vit_b_runs_end_to_end_and_reuses_the_embedding(sam_file):
    """The random vit_b SAM from a file through SCLoadSAM, with the colour CLIP double, which finds the red
    disc: the found case runs (box of the best match = box of the mask output), then other names reuse the
    cached image embedding."""
    prompt = {
        "img": {"class_type": "LoadImage", "inputs": {"image": red_disc_photo("red_disc.png")}},
        "sam": {"class_type": "SCLoadSAM", "inputs": {"model_name": sam_file}},
        "clip": {"class_type": "TestColourMatcherLoader", "inputs": {}},
        "find": finder(["img", 0], ["sam", 0], ["clip", 0], classes="red", negatives="white, black", threshold=0.0),
    }
    result = run_prompt(prompt, outputs=["find", "sam"])
    patcher = result.output("sam")
    assert patcher.model.architecture == "vit_b" and len(patcher.model.embeddings) == 1
    mask, found, scores, preview = (result.output("find", i) for i in range(4))
    assert mask.shape == (1, 72, 96) and preview.shape == (1, 72, 96, 3)
    assert mask.device.type == "cpu" and preview.device.type == "cpu"
    report = json.loads(scores)[0]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert found == [True] and report["found"] and mask.sum() > 0
    assert 0 < report["prompts"] <= 2 + 4 and report["prompts"] < report["decoded"] <= 3 * report["prompts"]
    assert 0 < len(report["masks"]) <= report["decoded"]
    matched = [m for m in report["masks"] if m["matched"]]
    assert matched and report["masks"][: len(matched)] == matched  # matches first, each group best score first
    assert [m["score"] for m in matched] == sorted((m["score"] for m in matched), reverse=True)
    rows, cols = torch.nonzero(mask[0].any(1)).flatten(), torch.nonzero(mask[0].any(0)).flatten()
    assert matched[0]["box"] == [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    assert preview[0][mask[0] > 0].sub(result.output("img", 0)[0][mask[0] > 0]).abs().max() > 0.05  # tinted
    # other class names: same image, the cached embedding is reused (no second encoder pass)
    calls = []
    hook = patcher.model.sam.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        prompt["find"]["inputs"]["class_names"] = "green\nblue"
        again = run_prompt(prompt, outputs=["find", "sam"])
    finally:
        hook.remove()
    assert again.output("sam") is patcher and len(patcher.model.embeddings) == 1 and calls == []
    assert again.output("find", 0).shape == (1, 72, 96) and again.output("find", 1) == [False]


def test_found_images_pass_and_the_rest_are_skipped_with_their_indices():
    files = [colour_image("red_a.png", (230, 20, 20)), colour_image("blue.png", (20, 20, 230)),
             colour_image("red_b.png", (200, 30, 30))]
    prompt = colour_batch_prompt(files)
    prompt["save"]["inputs"]["filename_prefix"] = "two_of_three"
    result = run_prompt(prompt, outputs=["find", "filter", "save"])
    mask, found = result.output("find", 0), result.output("find", 1)
    assert mask.shape == (3, 192, 256) and found == [True, False, True]
    assert mask[1].sum() == 0 and mask[0].sum() > 0 and mask[2].sum() > 0
    images, masks, indices, count = (result.output("filter", i) for i in range(4))
    assert json.loads(indices) == [0, 2] and count == 2
    assert images.shape == (2, 192, 256, 3) and torch.equal(masks, mask[[0, 2]])
    assert images[1, 20, 20].tolist() == pytest.approx([200 / 255, 30 / 255, 30 / 255])
    assert len(saved("two_of_three")) == 2


def test_a_batch_with_nothing_found_stops_the_branch_without_an_error():
    files = [colour_image("blue_a.png", (20, 20, 230)), colour_image("green.png", (20, 220, 20))]
    prompt = colour_batch_prompt(files)
    prompt["save"]["inputs"]["filename_prefix"] = "none_found"
    result = run_prompt(prompt, outputs=["filter", "save"])  # raises if execution failed
    assert result.output("find", 1) == [False, False]
    assert result.output("filter", 3) == 0
    assert not saved("none_found")
    assert not any(event == "execution_error" for event, _ in result.events)


def test_rgba_images_are_searched_as_rgb():
    prompt = colour_batch_prompt([colour_image("red_rgba.png", (230, 20, 20))])
    prompt["alpha"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 256, "height": 192}}
    prompt["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["load0", 0], "alpha": ["alpha", 0]}}
    prompt["find"]["inputs"]["image"] = ["rgba", 0]
    result = run_prompt(prompt, outputs=["find", "rgba"])
    assert result.output("rgba").shape[-1] == 4
    assert result.output("find", 1) == [True] and result.output("find", 3).shape == (1, 192, 256, 3)


def test_empty_class_list_and_mismatched_batches_are_clear_errors():
    prompt = colour_batch_prompt([colour_image("red_c.png", (230, 20, 20))], classes=" \n ")
    assert "class name list is empty" in node_error_message(prompt, ["find"])
    prompt = colour_batch_prompt([colour_image("red_d.png", (230, 20, 20)), colour_image("red_e.png", (230, 20, 20))])
    prompt["three"] = {"class_type": "ImageBatch", "inputs": {"image1": ["join1", 0], "image2": ["load0", 0]}}
    prompt["filter"]["inputs"]["images"] = ["three", 0]
    message = node_error_message(prompt, ["filter"])
    assert "'found' has 2 entries but the image batch has shape (3, 192, 256, 3)" in message


def test_a_mask_batch_of_one_applies_to_every_image():
    prompt = colour_batch_prompt([colour_image("red_f.png", (230, 20, 20)), colour_image("red_g.png", (230, 20, 20))])
    prompt["one"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 24}}
    prompt["filter"]["inputs"]["masks"] = ["one", 0]
    result = run_prompt(prompt, outputs=["filter"])
    masks = result.output("filter", 1)
    assert masks.shape == (2, 192, 256) and torch.equal(masks, torch.ones(2, 192, 256))


def test_automatic_mode_gives_the_same_outputs():
    """SAM's automatic generator in place of the guided prompts, on a red and a blue photo: the same outputs
    as guided mode (found flags, mask and preview sizes, report fields), each mask chosen from its own report."""
    prompt = colour_batch_prompt([colour_image("red_h.png", (230, 20, 20)), colour_image("blue_h.png", (20, 20, 230))],
                                 amg_points_per_side=2)
    prompt["auto"] = {**prompt["find"], "inputs": {**prompt["find"]["inputs"], "mode": "automatic"}}
    result = run_prompt(prompt, outputs=["find", "auto"])
    outputs = {mode: [result.output(node, i) for i in range(4)] for mode, node in (("guided", "find"), ("automatic", "auto"))}
    for mode, (mask, found, scores, preview) in outputs.items():
        report = json.loads(scores)
        assert found == [True, False], mode
        assert mask.shape == (2, 192, 256) and preview.shape == (2, 192, 256, 3), mode
        assert mask[0].sum() > 0 and mask[1].sum() == 0, mode
        assert [r["found"] for r in report] == found and report[0]["decoded"] >= 1, mode
        best = next(m for m in report[0]["masks"] if m["matched"])
        rows, cols = torch.nonzero(mask[0].any(1)).flatten(), torch.nonzero(mask[0].any(0)).flatten()
        assert best["box"] == [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1], mode
        assert best["area"] == pytest.approx(float(mask[0].mean()), abs=1e-5), mode
    guided, automatic = json.loads(outputs["guided"][2]), json.loads(outputs["automatic"][2])
    assert [sorted(r) for r in guided] == [sorted(r) for r in automatic]  # the same report fields
    assert automatic[0]["prompts"] == 0 < guided[0]["prompts"]  # automatic mode gives SAM no prompts
