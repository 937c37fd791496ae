"""Limit Model Patch ControlNet To Mask (SC) on core's model-patch ControlNets: Z-Image Fun and Qwen-Image
DiffSynth (ComfyUI 0.33's ModelPatchLoader + Apply ... ControlNet nodes), through ComfyUI's executor.

Residual probes are test-only block patches placed before core's control patch and after the pack's
node: what one patched block adds is the difference of the two, per image token.
"""
import pytest
import torch

from harness import box_mask_nodes, node_error_message, pack_import, run_prompt, tiny_dit, tiny_model_patch
from harness.fixture_nodes import fixture_node

ops = pack_import("nodes.ops.control")
compat = pack_import("nodes.sampling.compat")

# --------------------------------------------------------------------------- pure token maths (both legs)


def test_token_weights_cover_the_grid_rows_then_columns_and_give_padding_tokens_zero():
    mask = torch.zeros(1, 128, 96)
    mask[:, 32:96, 16:64] = 1.0  # token rows 2..5, columns 1..3 at 16 px per token
    weights = ops.token_weights(mask, (1, 16, 16, 12), 2, 64)  # 8x6 = 48 grid tokens padded to 64
    assert weights.shape == (1, 64, 1)
    grid = weights[0, :48, 0].reshape(8, 6)
    expected = torch.zeros(8, 6)
    expected[2:6, 1:4] = 1.0
    assert torch.equal(grid, expected) and weights[0, 48:].abs().max() == 0
    frames = ops.token_weights(mask, (1, 16, 2, 16, 12), 2, 96)  # frames outermost
    assert torch.equal(frames[0, :48], weights[0, :48]) and torch.equal(frames[0, 48:], weights[0, :48])
    half = ops.token_weights(torch.full((1, 128, 96), 0.5), (1, 16, 16, 12), 2, 48)
    assert torch.equal(half, torch.full((1, 48, 1), 0.5))
    with pytest.raises(ValueError, match="40 image tokens cannot hold the 1x8x6 token grid"):
        ops.token_weights(mask, (1, 16, 16, 12), 2, 40)


def test_weights_per_row_repeat_per_cond_and_refuse_other_batches():
    one, two = torch.zeros(1, 4, 1), torch.stack([torch.zeros(4, 1), torch.ones(4, 1)])
    assert ops.weights_per_row(one, 4, 2, "x") is one  # broadcasts
    assert torch.equal(ops.weights_per_row(two, 4, 2, "x")[:, 0, 0], torch.tensor([0.0, 1, 0, 1]))
    assert ops.weights_per_row(two, 2, 1, "x") is two
    with pytest.raises(ValueError, match=r"mask has batch 2 but the latent batch is 3 \(tokens\)"):
        ops.weights_per_row(two, 6, 2, "tokens")


def test_blend_by_weight_is_exact_at_zero_and_one():
    gen = torch.Generator().manual_seed(0)
    before, after = torch.randn(2, 50, 8, generator=gen), torch.randn(2, 50, 8, generator=gen) * 1e3
    weights = torch.tensor([0.0, 1.0]).repeat(25).reshape(1, 50, 1)
    out = ops.blend_by_weight(before, after, weights)
    assert torch.equal(out[:, 0::2], before[:, 0::2]) and torch.equal(out[:, 1::2], after[:, 1::2])


def test_core_control_patches_are_found_by_name_replaced_in_place_and_the_input_model_keeps_its_own():
    """compat's class names against the ComfyUI running (0.3.75 has the Qwen DiffSynth patch only)."""
    import sys

    import nodes
    from harness import tiny_models

    module = sys.modules[nodes.NODE_CLASS_MAPPINGS["QwenImageDiffsynthControlnet"].__module__]
    present = [name for name in compat.MODEL_PATCH_CONTROLS if hasattr(module, name)]
    assert "DiffSynthCnetPatch" in present
    model = tiny_models.unet("sd15").clone()
    controls = [type(name, (), {})() for name in present]  # stand-ins named as core's (no model inside)
    model.set_model_patch("foreign", "double_block")
    for control in controls:  # as core's nodes install them (Z-Image Fun's also in the noise refiner)
        if type(control).__name__ == "ZImageControlPatch":
            model.set_model_patch(control, "noise_refiner")
        model.set_model_patch(control, "double_block")

    def listed(m, slot):  # 0.3.75's clone deep-copies the patches, so compare kinds, not objects
        return [p if isinstance(p, str) else (p[0], type(p[1]).__name__) if isinstance(p, tuple) else type(p).__name__
                for p in m.model_options["transformer_options"]["patches"].get(slot, [])]

    patched = model.clone()
    assert compat.replace_model_patch_controls(patched, lambda inner: ("wrapped", inner)) == len(controls)
    assert listed(patched, "double_block") == ["foreign"] + [("wrapped", name) for name in present]
    assert listed(model, "double_block") == ["foreign"] + present  # the input model keeps core's patches
    patches = patched.model_options["transformer_options"]["patches"]
    if "ZImageControlPatch" in present:  # one wrapper for the patch installed in two lists
        assert patches["noise_refiner"] == [patches["double_block"][-1]]
    assert compat.replace_model_patch_controls(patched, lambda inner: None) == 0  # wrapped ones are not core's
    removed = model.clone()
    assert compat.replace_model_patch_controls(removed, lambda inner: None) == len(controls)
    assert listed(removed, "double_block") == ["foreign"] and listed(removed, "noise_refiner") == []


# --------------------------------------------------------------------------- through the executor (0.33)

NOT_HERE = tiny_model_patch.unavailable_reason()
needs_model_patch = pytest.mark.skipif(NOT_HERE is not None, reason=str(NOT_HERE))
WIDTH, HEIGHT = 96, 128  # latent 12x16, token grid 6 wide x 8 high; Z-Image pads the 48 tokens to 64
KINDS = list(tiny_model_patch.KINDS)
BOX = (16, 32, 48, 64)  # x, y, width, height in px: token columns 1..3, token rows 2..5
INSIDE = torch.zeros(8, 6, dtype=torch.bool)
INSIDE[2:6, 1:4] = True
INSIDE = INSIDE.flatten()
CORE_NODE = {"qwen_image": "QwenImageDiffsynthControlnet", "z_image": "ZImageFunControlnet"}

RECORDS: dict[str, list] = {}  # probe name -> [(slot, block index, image tokens)] in call order


class BlockProbe:
    """A foreign block patch: records the image tokens it sees and adds ``nudge`` to them."""

    def __init__(self, name, slot, nudge):
        self.name, self.slot, self.nudge = name, slot, nudge

    def __call__(self, kwargs):
        RECORDS.setdefault(self.name, []).append((self.slot, kwargs["block_index"], kwargs["img"].clone()))
        if self.nudge:
            kwargs["img"] = kwargs["img"] + self.nudge
        return kwargs


def probed(model, name, nudge):
    model = model.clone()
    for slot in ("noise_refiner", "double_block"):
        model.set_model_patch(BlockProbe(name, slot, nudge), slot)
    return model


def mask_pair():
    """Two masks: the left half, the top half."""
    masks = torch.zeros(2, HEIGHT, WIDTH)
    masks[0, :, :WIDTH // 2] = 1.0
    masks[1, :HEIGHT // 2] = 1.0
    return masks


def hint_image():
    return torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(3))


def register_nodes():
    import nodes

    tiny_dit.register_test_nodes()
    tiny_model_patch.register_test_nodes()
    nodes.NODE_CLASS_MAPPINGS["TestBlockProbe"] = fixture_node(
        "TestBlockProbe", "Test-only node: a block patch that records image tokens and adds a constant.", ("MODEL",),
        probed, {"model": ("MODEL",), "name": ("STRING", {"default": ""}),
                 "nudge": ("FLOAT", {"default": 0.0, "min": -1.0, "max": 1.0, "step": 0.001})})
    nodes.NODE_CLASS_MAPPINGS["TestMaskPair"] = fixture_node(
        "TestMaskPair", "Test-only node: a batch of two masks (left half, top half).", ("MASK",), mask_pair)
    nodes.NODE_CLASS_MAPPINGS["TestHintImage"] = fixture_node(
        "TestHintImage", "Test-only node: a fixed random control image.", ("IMAGE",), hint_image)


register_nodes()


def branch(kind, tag, *, control=True, mask=None, probe=None, nudges=(0.0, 0.0, 0.0), cfg=2.0, batch=1):
    """Prompt nodes sampling the tiny model of ``kind`` (their KSampler id is ``tag``).

    ``control``: core's control node; ``mask``: None (no pack node), "ones", "zeros", "box" or "pair"
    (TestMaskPair) for the pack node; ``probe``: name of recording probes before core's node and after the pack's;
    ``nudges``: what probes before core's node, between it and the pack's, and after add.
    """
    arch = tiny_model_patch.KINDS[kind]
    n = {}
    model = ["load", 0]
    if probe or nudges[0]:
        n[f"{tag}_p0"] = {"class_type": "TestBlockProbe",
                          "inputs": {"model": model, "name": f"{probe}_before", "nudge": nudges[0]}}
        model = [f"{tag}_p0", 0]
    if control:
        n[f"{tag}_core"] = {"class_type": CORE_NODE[arch], "inputs": {
            "model": model, "model_patch": ["load", 1], "vae": ["load", 2], "image": ["hint", 0], "strength": 1.0}}
        model = [f"{tag}_core", 0]
    if nudges[1]:
        n[f"{tag}_p1"] = {"class_type": "TestBlockProbe", "inputs": {"model": model, "name": "", "nudge": nudges[1]}}
        model = [f"{tag}_p1", 0]
    if mask is not None:
        if mask == "box":
            n.update(box_mask_nodes(f"{tag}_mask", WIDTH, HEIGHT, BOX))
        elif mask == "pair":
            n[f"{tag}_mask"] = {"class_type": "TestMaskPair", "inputs": {}}
        else:
            n[f"{tag}_mask"] = {"class_type": "SolidMask", "inputs": {
                "value": 1.0 if mask == "ones" else 0.0, "width": WIDTH, "height": HEIGHT}}
        n[f"{tag}_limit"] = {"class_type": "SCMaskModelPatchControl",
                             "inputs": {"model": model, "mask": [f"{tag}_mask", 0]}}
        model = [f"{tag}_limit", 0]
    if probe or nudges[2]:
        n[f"{tag}_p2"] = {"class_type": "TestBlockProbe",
                          "inputs": {"model": model, "name": f"{probe}_after", "nudge": nudges[2]}}
        model = [f"{tag}_p2", 0]
    n[f"{tag}_latent"] = {"class_type": "TinyDiTEmptyLatent", "inputs": {
        "architecture": arch, "width": WIDTH, "height": HEIGHT, "batch_size": batch}}
    n[tag] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": [f"{tag}_latent", 0],
        "seed": 5, "steps": 2, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    return n


def run(kind, branches):
    arch = tiny_model_patch.KINDS[kind]
    encode = {"class_type": "TinyDiTTextEncode", "inputs": {"architecture": arch, "text": "a red fox", "tokens": 8}}
    prompt = {"load": {"class_type": "TinyModelPatchLoader", "inputs": {"kind": kind}},
              "hint": {"class_type": "TestHintImage", "inputs": {}},
              "pos": encode, "neg": {**encode, "inputs": {**encode["inputs"], "text": "blurry"}}}
    tags = []
    for tag, options in branches.items():
        prompt.update(branch(kind, tag, **options))
        tags.append(tag)
    RECORDS.clear()
    result = run_prompt(prompt, outputs=tags)
    return {tag: result.output(tag)["samples"] for tag in tags}


def residuals(probe):
    """(slot, block, residual) per patched block: the after-probe's tokens minus the before-probe's."""
    before, after = RECORDS[f"{probe}_before"], RECORDS[f"{probe}_after"]
    assert len(before) == len(after) and before
    return [(slot, block, b_after - b_before)
            for (slot, block, b_before), (slot_after, block_after, b_after) in zip(before, after)
            if (slot, block) == (slot_after, block_after)]


BATCHES = [pytest.param(2.0, 1, id="cfg2"), pytest.param(1.0, 2, id="cfg1-batch2")]


@needs_model_patch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg, batch", BATCHES)
def test_ones_mask_is_core_bit_for_bit_and_empty_mask_is_no_control(kind, cfg, batch):
    common = {"cfg": cfg, "batch": batch}
    out = run(kind, {"plain": {"control": False, **common}, "core": common, "ones": {"mask": "ones", **common},
                     "zeros": {"mask": "zeros", **common}})
    assert (out["core"] - out["plain"]).abs().max() > 1e-3  # the control acts
    assert torch.equal(out["ones"], out["core"])
    assert torch.equal(out["zeros"], out["plain"])


@needs_model_patch
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg, batch", BATCHES)
def test_residual_is_exactly_zero_on_tokens_outside_the_mask(kind, cfg, batch):
    run(kind, {"core": {"probe": "core", "cfg": cfg, "batch": batch},
               "box": {"mask": "box", "probe": "box", "cfg": cfg, "batch": batch}})
    core, masked = residuals("core"), residuals("box")
    assert [(s, b) for s, b, _ in core] == [(s, b) for s, b, _ in masked]
    acting = 0
    for slot, block, residual in masked:
        grid = residual[:, :48]
        assert residual.shape[0] == batch * (2 if cfg > 1 else 1)
        assert grid[:, ~INSIDE].abs().max() == 0, f"{slot} block {block} adds outside the mask"
        assert residual.shape[1] == (64 if kind == "z_image_fun" else 48)  # Z-Image pads to a multiple of 32
        assert torch.count_nonzero(residual[:, 48:]) == 0  # padding tokens
        acting += int(grid[:, INSIDE].abs().max() > 0)
    first_core, first_masked = next((c, m) for (_, _, c), (_, _, m) in zip(core, masked) if c.abs().max() > 0)
    assert torch.equal(first_masked[:, :48][:, INSIDE], first_core[:, :48][:, INSIDE])  # same inputs: core's residual
    assert first_core[:, :48][:, ~INSIDE].abs().max() > 0  # core adds outside
    assert acting >= 2 * 2  # at least two patched blocks act in each of the two steps


@needs_model_patch
def test_one_mask_per_latent_limits_each_latent_to_its_own_mask():
    run("z_image_fun", {"pair": {"mask": "pair", "probe": "pair", "batch": 2},
                        "core": {"probe": "core", "batch": 2}})
    expected = torch.zeros(2, 8, 6, dtype=torch.bool)
    expected[0, :, :3] = True  # left half
    expected[1, :4, :] = True  # top half
    expected = expected.flatten(1)
    acting = set()
    for _, block, residual in residuals("pair"):
        for row in range(4):  # cond 0, cond 1, uncond 0, uncond 1
            assert residual[row, :48][~expected[row % 2]].abs().max() == 0
            if residual[row, :48][expected[row % 2]].abs().max() > 0:
                acting.add(row)
    assert acting == {0, 1, 2, 3}  # every row's control acts inside its own mask
    # the first acting block sees the same tokens in both runs: inside each row's mask, core's residual
    first_core, first_masked = next((c, m) for (_, _, c), (_, _, m) in zip(residuals("core"), residuals("pair"))
                                    if c.abs().max() > 0)
    for row in range(4):
        inside = expected[row % 2]
        assert torch.equal(first_masked[row, :48][inside], first_core[row, :48][inside])


@needs_model_patch
def test_other_block_patches_before_between_and_after_keep_acting():
    kind = "qwen_diffsynth"
    nudges = (0.01, -0.02, 0.03)
    out = run(kind, {"core": {"nudges": nudges}, "ones": {"mask": "ones", "nudges": nudges},
                     "bare": {}, "box": {"mask": "box", "nudges": nudges}, "box_bare": {"mask": "box"}})
    assert torch.equal(out["ones"], out["core"])
    assert (out["core"] - out["bare"]).abs().max() > 1e-3  # the foreign patches act
    assert (out["box"] - out["box_bare"]).abs().max() > 1e-3


@needs_model_patch
def test_a_model_without_a_model_patch_controlnet_gets_a_clear_error():
    prompt = {"load": {"class_type": "TinyModelPatchLoader", "inputs": {"kind": "qwen_diffsynth"}},
              "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT}},
              "limit": {"class_type": "SCMaskModelPatchControl", "inputs": {"model": ["load", 0], "mask": ["mask", 0]}}}
    message = node_error_message(prompt, outputs=["limit"])
    assert "no model-patch ControlNet to limit" in message and "Apply Z-Image Fun ControlNet" in message
