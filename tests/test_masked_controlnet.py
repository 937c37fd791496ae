"""Masked ControlNet / T2I-Adapter: which pixels a control reaches, probed on the model's own calls.

The probe samples through ``comfy.sample.sample`` (what KSampler calls) with a
model_function_wrapper that records, for every UNet call, the control residuals handed to the
model and the model's output.
"""
import pytest
import torch

import comfy.controlnet
import comfy.sample
import nodes
from harness import node_error_message, pack_import, run_prompt, tiny_models
from harness.core_reference import record_model_calls

mc = pack_import("nodes.sampling.masked_control")

SIZE = 64  # control image; latent 8x8
LATENT = SIZE // 8


def _conds(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 64, generator=g), {}]], [[torch.randn(1, 77, 64, generator=g), {}]]


POS, NEG = _conds()


def _hint(seed):
    return torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


def probe(positive, negative, steps=1, sampler="euler", batch=1):
    """Records (residuals, output) of every model call of a short sample at 128x128."""
    model = tiny_models.unet("sd15").clone()
    records = record_model_calls(model)
    latent = torch.zeros(batch, 4, LATENT, LATENT)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    samples = comfy.sample.sample(model, noise, steps, 5.0, sampler, "normal", positive, negative, latent, seed=5)
    return records, samples


def core_apply(cn, hint, positive=POS, negative=NEG, strength=1.0):
    return nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, cn, hint, strength, 0.0, 1.0)


def masked_apply(cn, hint, mask, positive=POS, negative=NEG, strength=1.0, start=0.0, end=1.0):
    return mc.apply_masked_control(positive, negative, cn, hint, mask, strength, start, end)


def left_half(size=SIZE):
    mask = torch.zeros(1, size, size)
    mask[:, :, : size // 2] = 1.0
    return mask


def residual_list(record):
    return [v for vs in record[0].values() for v in vs if v is not None]


class TinyAdapterNet(torch.nn.Module):
    """A T2I-Adapter-shaped module matching the tiny UNet's input blocks (32 ch full, 64 ch half)."""

    unshuffle_amount = 8

    def __init__(self):
        super().__init__()
        self.unshuffle = torch.nn.PixelUnshuffle(8)
        self.conv0 = torch.nn.Conv2d(192, 32, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
        tiny_models._randomize(self, 11)

    def forward(self, x):
        f0 = self.conv0(self.unshuffle(x))
        f1 = self.conv1(f0)
        return {"input": [f1, None, f0, None]}  # popped from the end by the UNet's input blocks


def tiny_adapter():
    return comfy.controlnet.T2IAdapter(TinyAdapterNet(), channels_in=3, compression_ratio=8,
                                       upscale_algorithm="nearest-exact", device="cpu")


@pytest.fixture(scope="module")
def cn():
    return tiny_models.controlnet("sd15")


@pytest.fixture(scope="module")
def plain():
    return probe(POS, NEG)


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_mask_of_ones_equals_core_apply_controlnet_exactly(kind, cn):
    control = cn if kind == "controlnet" else tiny_adapter()
    core, core_samples = probe(*core_apply(control, _hint(1)), steps=3)
    ours, our_samples = probe(*masked_apply(control, _hint(1), torch.ones(1, SIZE, SIZE)), steps=3)
    assert len(core) == len(ours) == 3
    for (_, a), (_, b) in zip(core, ours):
        assert torch.equal(a, b)
    assert torch.equal(core_samples, our_samples)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_empty_mask_has_no_effect(sampler, cn):
    base, base_samples = probe(POS, NEG, steps=3, sampler=sampler)
    ours, samples = probe(*masked_apply(cn, _hint(1), torch.zeros(1, SIZE, SIZE)), steps=3, sampler=sampler)
    assert all(residuals is None for residuals, _ in ours)
    assert torch.equal(samples, base_samples)


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_residuals_are_zero_outside_the_mask_at_every_resolution(kind, cn, plain):
    control = cn if kind == "controlnet" else tiny_adapter()
    ours, _ = probe(*masked_apply(control, _hint(1), left_half()))
    full, _ = probe(*core_apply(control, _hint(1)))
    residuals, full_residuals = residual_list(ours[0]), residual_list(full[0])
    assert len({tuple(r.shape[-2:]) for r in residuals}) >= 2  # several injection resolutions
    for r, f in zip(residuals, full_residuals):
        half = r.shape[-1] // 2
        assert torch.count_nonzero(r[..., half:]) == 0, r.shape
        assert torch.equal(r[..., :half], f[..., :half]), r.shape  # inside: core's residual, untouched
    # the model output changes mostly inside (the UNet mixes features after injection: see docs)
    inside = (ours[0][1] - plain[0][0][1])[..., : LATENT // 2].abs().mean()
    outside = (ours[0][1] - plain[0][0][1])[..., LATENT // 2 + 2 :].abs().mean()
    assert inside > 1e-3
    assert outside < inside


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_exact_outside_keeps_the_output_outside_the_mask_as_without_control(kind, cn, plain):
    control = cn if kind == "controlnet" else tiny_adapter()
    _, samples = probe(*mc.apply_masked_control(POS, NEG, control, _hint(1), left_half(), 1.0, 0.0, 1.0,
                                                exact_outside=True))
    base = plain[1]
    edge = LATENT // 2
    assert torch.allclose(samples[..., edge + 1 :], base[..., edge + 1 :], atol=1e-4, rtol=1e-4)
    assert (samples[..., : edge - 1] - base[..., : edge - 1]).abs().mean() > 1e-2
    # a mask of ones needs no split: identical to core
    _, ones = probe(*mc.apply_masked_control(POS, NEG, control, _hint(1), torch.ones(1, SIZE, SIZE), 1.0, 0.0, 1.0,
                                             exact_outside=True))
    _, core = probe(*core_apply(control, _hint(1)))
    assert torch.equal(ones, core)


def test_two_masked_controls_each_reach_only_their_region(cn):
    left, right = left_half(), 1.0 - left_half()
    pos_a, neg_a = masked_apply(cn, _hint(1), left)
    pos_ab, neg_ab = masked_apply(cn, _hint(2), right, pos_a, neg_a, strength=0.7)
    only_a, _ = probe(pos_a, neg_a)
    only_b, _ = probe(*masked_apply(cn, _hint(2), right, strength=0.7))
    both, _ = probe(pos_ab, neg_ab)
    half = None
    for a, b, ab in zip(residual_list(only_a[0]), residual_list(only_b[0]), residual_list(both[0])):
        half = a.shape[-1] // 2
        assert torch.equal(ab[..., :half], a[..., :half])  # left: control A alone
        assert torch.equal(ab[..., half:], b[..., half:])  # right: control B alone
        assert torch.count_nonzero(a[..., half:]) == 0 and torch.count_nonzero(b[..., :half]) == 0
    assert half is not None


@pytest.mark.parametrize("start, end", [(0.5, 1.0), (0.0, 0.6), (0.2, 0.6)])
def test_start_end_range_is_respected(cn, start, end):
    """The steps that get residuals are the ones core Apply ControlNet (Advanced) gives them with the same range."""
    records, _ = probe(*masked_apply(cn, _hint(1), left_half(), start=start, end=end), steps=6)
    core_records, _ = probe(*nodes.ControlNetApplyAdvanced().apply_controlnet(POS, NEG, cn, _hint(1), 1.0, start, end),
                            steps=6)
    acting = [r is not None for r, _ in records]
    assert acting == [r is not None for r, _ in core_records]
    assert any(acting) and not all(acting)
    if end < 1.0:
        assert not acting[-1]  # the last step is past end_percent
    else:
        assert not acting[0]  # the first step is before start_percent


def test_incoming_conditioning_and_control_are_not_mutated(cn):
    before_keys = [sorted(d.keys()) for _, d in POS + NEG]
    pos, neg = masked_apply(cn, _hint(1), left_half())
    probe(pos, neg)
    assert [sorted(d.keys()) for _, d in POS + NEG] == before_keys
    assert cn.cond_hint_original is None and cn.previous_controlnet is None
    assert pos[0][1]["control"] is neg[0][1]["control"]  # shared, so cond and uncond still batch together
    assert pos[0][0] is POS[0][0]


def test_latent_batch_with_per_latent_masks(cn):
    masks = torch.stack([left_half()[0], 1.0 - left_half()[0]])
    records, _ = probe(*masked_apply(cn, _hint(1), masks), batch=2)
    core, _ = probe(*core_apply(cn, _hint(1)), batch=2)
    for r, full in zip(residual_list(records[0]), residual_list(core[0])):  # [cond/uncond x 2 latents, C, h, w]
        half = r.shape[-1] // 2
        assert r.shape[0] == 4
        assert torch.count_nonzero(r[0::2, ..., half:]) == 0 and torch.count_nonzero(r[1::2, ..., :half]) == 0
        # inside each latent's own mask: core's residual, which is not zero
        assert torch.equal(r[0::2, ..., :half], full[0::2, ..., :half])
        assert torch.equal(r[1::2, ..., half:], full[1::2, ..., half:])
        assert full[0::2, ..., :half].abs().max() > 0 and full[1::2, ..., half:].abs().max() > 0


def test_mask_batch_mismatch_with_latent_batch_is_a_clear_error(cn):
    masks = torch.ones(2, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"mask has batch 2.*latent batch is 3"):
        probe(*masked_apply(cn, _hint(1), masks), batch=3)


def _node_prompt(mask_node, image_batch=1):
    return {
        "ckpt": {"class_type": "TinyCheckpointLoader", "inputs": {"architecture": "sd15"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a person"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "cn": {"class_type": "TinyControlNetLoader", "inputs": {"architecture": "sd15"}},
        "hint": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": image_batch,
                                                       "color": 0xFFFFFF}},
        "mask": mask_node,
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "apply": {"class_type": "SCApplyControlNetMasked", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
            "mask": ["mask", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "core": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        **{name: {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": [src, 0], "negative": [src, 1], "latent_image": ["latent", 0],
            "seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
           for name, src in (("s_ours", "apply"), ("s_core", "core"))},
    }


def test_node_with_full_mask_matches_core_node_through_the_executor():
    prompt = _node_prompt({"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 96, "height": 96}})
    result = run_prompt(prompt, outputs=["s_ours", "s_core"])
    assert torch.equal(result.output("s_ours")["samples"], result.output("s_core")["samples"])


def test_node_rejects_mask_and_image_batch_mismatch():
    mask = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt = _node_prompt(mask, image_batch=3)
    prompt["batch"] = {"class_type": "ImageToMask", "inputs": {"image": ["hint2", 0], "channel": "red"}}
    prompt["hint2"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}}
    prompt["apply"]["inputs"]["mask"] = ["batch", 0]
    message = node_error_message(prompt, outputs=["apply"])
    assert "mask has shape (2, 64, 64)" in message and "(3, 64, 64, 3)" in message
