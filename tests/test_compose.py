"""Our attention patches compose with every patch kind ComfyUI offers, in either order.

Each test builds the expected result by hand (our patch alone plus the other node's known term on
one replace patch, or the two orders against each other) and checks both effects are there:
the composed sample differs from each feature alone, and equals the hand-made sum. Other packs
are stand-ins that follow their contracts: IPAdapter_plus's ``Attn2Replace`` (a chain of callbacks
over the stored attention; ``add`` on a patch it finds on a block; SD1.5 keys ``(block, number)``,
SDXL keys ``(block, number, index)``) and an AnimateDiff-style model wrapper. Core's
PerturbedAttentionGuidance, SelfAttentionGuidance and HyperTile run for real through the executor.
"""
import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
from harness import node_error_message, pack_import, run_prompt, tiny_models
from test_regions import assert_close_to_scale, cond, half, region_graph, regions_of, sample

attention = pack_import("nodes.sampling.attention")
regional = pack_import("nodes.sampling.regions")
cross_frame = pack_import("nodes.sampling.cross_frame")
reference = pack_import("nodes.sampling.reference_attention")

IP_WEIGHT = 0.5  # the stand-ins' known term: IP_WEIGHT * q, added to the attention output


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- stand-ins


def ip_term(out, q, k, v, extra_options, weight=1.0, **kwargs):
    """An IPAdapter-style callback: the term it adds to the block's attention output."""
    return weight * q


class Attn2ReplaceStandIn:
    """IPAdapter_plus's ``Attn2Replace`` contract: attention, then every callback's term in its sigma range."""

    def __init__(self, callback=None, **kwargs):
        self.callback, self.kwargs = [callback], [kwargs]

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        out = comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = float(extra_options["sigmas"][0]) if "sigmas" in extra_options else 1e9
        for callback, kwargs in zip(self.callback, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


def ipadapter_style(model, arch: str):
    """A clone with the stand-in on every cross-attention, installed the way IPAdapter_plus installs it."""
    patched = model.clone()
    options = patched.model_options["transformer_options"].copy()
    options["patches_replace"] = dict(options.get("patches_replace", {}))
    attn2 = options["patches_replace"]["attn2"] = dict(options["patches_replace"].get("attn2", {}))
    kwargs = {"weight": IP_WEIGHT, "sigma_start": 1e9, "sigma_end": 0.0}
    for name, number, index in attention.attn1_block_keys(patched):
        key = (name, number) if arch == "sd15" else (name, number, index)
        if key not in attn2:
            attn2[key] = Attn2ReplaceStandIn(ip_term, **kwargs)
            patched.model_options["transformer_options"] = options
        else:
            attn2[key].add(ip_term, **kwargs)
    return patched


class PlusTerm:
    """A replace patch: ``patch(q, k, v)`` plus the stand-ins' term (the hand-made expectation, or a foreign attn1)."""

    def __init__(self, patch=None):
        self.patch = patch

    def __call__(self, q, k, v, extra_options):
        base = (attention.attention(q, k, v, extra_options) if self.patch is None
                else self.patch(q, k, v, extra_options))
        return base + IP_WEIGHT * q


def with_replace(model, kind: str, make):
    """A clone with ``make(key)`` as the ``kind`` replace patch of every block."""
    patched = model.clone()
    for key in attention.attn1_block_keys(patched):
        (patched.set_model_attn1_replace if kind == "attn1" else patched.set_model_attn2_replace)(make(key), *key)
    return patched


def regions_on(model, arch):
    regions = regions_of((cond(arch, 3), half("left"), 1.0), (cond(arch, 4), half("right"), 1.0))
    out, positive, negative, _ = regional.apply_regions(model, cond(arch, 0), cond(arch, 1), regions, "attention", 0)
    return out, positive, negative


# --------------------------------------------------------------------------- replace patches


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_regions_keep_an_ipadapter_style_patch_in_either_order(arch):
    model = tiny_models.unet(arch)
    regional_model, positive, negative = regions_on(model, arch)
    ours = attention.replace_patches(regional_model.model_options, "attn2")
    by_hand = with_replace(model, "attn2", lambda key: PlusTerm(ours[key]))  # regional attention + the term
    expected = sample(by_hand, positive, negative)
    # Before IPAdapter's add(): on ComfyUI 0.33 a clone shares the patch objects with its source
    # (model_options are copied as dicts and lists only), so add() reaches the upstream model too,
    # as it does for IPAdapter's own Attn2Replace chain.
    regions_alone = sample(regional_model, positive, negative)

    ip_then_regions = regions_on(ipadapter_style(model, arch), arch)[0]
    regions_then_ip = ipadapter_style(regional_model, arch)
    for composed in (ip_then_regions, regions_then_ip):
        assert_close_to_scale(sample(composed, positive, negative), expected, relative=1e-4)
    assert relative_change(expected, regions_alone) > 1e-2  # the term acts
    assert relative_change(expected, sample(ipadapter_style(model, arch), positive, negative)) > 1e-2  # regions act


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_cross_frame_keeps_a_foreign_self_attention_patch_in_either_order(arch):
    model = tiny_models.unet(arch)
    positive, negative = cond(arch, 0, batch=2), cond(arch, 1, batch=2)
    extension = cross_frame.CrossFrameExtension((0,), 1.0)
    alone = attention.SelfAttentionDispatcher((extension,))
    expected = sample(with_replace(model, "attn1", lambda key: PlusTerm(alone)), positive, negative, batch=2)

    foreign = with_replace(model, "attn1", lambda key: PlusTerm())
    foreign_then_ours = cross_frame.patch_cross_frame(foreign, "0", 1.0)
    ours_then_foreign = with_replace(cross_frame.patch_cross_frame(model, "0", 1.0), "attn1", lambda key: PlusTerm())
    for composed in (foreign_then_ours, ours_then_foreign):
        assert_close_to_scale(sample(composed, positive, negative, batch=2), expected, relative=1e-4)
    assert relative_change(expected, sample(foreign, positive, negative, batch=2)) > 1e-2
    assert relative_change(expected, sample(cross_frame.patch_cross_frame(model, "0", 1.0), positive, negative,
                                            batch=2)) > 1e-2


# --------------------------------------------------------------------------- pre/post patches, attention override


def test_regions_keep_pre_post_patches_and_an_attention_override_in_either_order():
    model = tiny_models.unet("sd15")
    calls = {"grouped": 0}

    def override(func, *args, **kwargs):
        calls["grouped"] += args[1].shape[1] == 2 * 77  # a group of our regional routing: base + one region
        return func(*args, **kwargs) * 0.9

    def foreign(m):
        m = m.clone()
        m.set_model_attn2_patch(lambda n, context, value, extra_options: (n * 1.1, context, value))
        m.set_model_attn2_output_patch(lambda n, extra_options: n + 0.05)
        m.set_model_attn1_output_patch(lambda n, extra_options: n * 0.95)
        m.model_options["transformer_options"]["optimized_attention_override"] = override
        return m

    regional_model, positive, negative = regions_on(model, "sd15")
    foreign_then_ours = regions_on(foreign(model), "sd15")[0]
    ours_then_foreign = foreign(regional_model)
    first = sample(foreign_then_ours, positive, negative)
    assert calls["grouped"] > 0  # our regional routing went through the override
    assert_close_to_scale(sample(ours_then_foreign, positive, negative), first)
    assert relative_change(first, sample(regional_model, positive, negative)) > 1e-2
    assert relative_change(first, sample(foreign(model), positive, negative)) > 1e-2


# --------------------------------------------------------------------------- model wrappers


class AddsToDenoised:
    """An AnimateDiff-style APPLY_MODEL wrapper: the model's output plus a known term."""

    def __call__(self, executor, x, t, *args, **kwargs):
        return executor(x, t, *args, **kwargs) + 0.1 * x


def test_reference_attention_keeps_a_model_wrapper_in_either_order():
    model = tiny_models.unet("sd15")
    positive, negative = cond("sd15", 0), cond("sd15", 1)
    ref = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))

    def wrapped(m):
        m = m.clone()
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test.animatediff", AddsToDenoised())
        return m

    def referenced(m):
        return reference.patch_reference_attention(m, ref, 1.0, 0.5, None, 0.0, 1.0)

    first = sample(referenced(wrapped(model)), positive, negative)
    assert_close_to_scale(sample(wrapped(referenced(model)), positive, negative), first)
    assert relative_change(first, sample(referenced(model), positive, negative)) > 1e-2
    assert relative_change(first, sample(wrapped(model), positive, negative)) > 1e-2


# --------------------------------------------------------------------------- core nodes, through the executor


def test_regions_and_core_pag_hypertile_keep_both_effects_in_either_order():
    prompt = region_graph()
    sampler = prompt.pop("sample")

    def node(name, class_type, model, **inputs):
        prompt[name] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        return [name, 0]

    def sample_with(name, model):
        prompt[name] = {"class_type": "KSampler", "inputs": {**sampler["inputs"], "model": model}}

    pag = {"scale": 3.0}
    hypertile = {"tile_size": 32, "swap_size": 1, "max_depth": 0, "scale_depth": False}
    sample_with("regions", ["apply", 0])
    sample_with("pag_only", node("pag", "PerturbedAttentionGuidance", ["ckpt", 0], **pag))
    sample_with("regions_pag", node("pag_after", "PerturbedAttentionGuidance", ["apply", 0], **pag))
    prompt["apply_after"] = {"class_type": "SCApplyRegions", "inputs": {**prompt["apply"]["inputs"], "model": ["pag", 0]}}
    sample_with("pag_regions", ["apply_after", 0])
    sample_with("regions_ht", node("ht_after", "HyperTile", ["apply", 0], **hypertile))
    prompt["apply_on_ht"] = {"class_type": "SCApplyRegions", "inputs": {
        **prompt["apply"]["inputs"], "model": node("ht", "HyperTile", ["ckpt", 0], **hypertile)}}
    sample_with("ht_regions", ["apply_on_ht", 0])
    sample_with("ht_only", ["ht", 0])
    names = ["regions", "pag_only", "regions_pag", "pag_regions", "regions_ht", "ht_regions", "ht_only"]
    out = {n: s["samples"] for n, s in zip(names, (run_prompt(prompt, outputs=names).output(n) for n in names))}

    assert_close_to_scale(out["pag_regions"], out["regions_pag"])
    assert relative_change(out["regions_pag"], out["regions"]) > 1e-2  # PAG acts
    assert relative_change(out["regions_pag"], out["pag_only"]) > 1e-2  # regions act
    assert_close_to_scale(out["ht_regions"], out["regions_ht"])
    assert relative_change(out["regions_ht"], out["regions"]) > 1e-3  # HyperTile acts
    assert relative_change(out["regions_ht"], out["ht_only"]) > 1e-2  # regions act


def test_cross_frame_with_core_sag_in_either_order():
    prompt = region_graph()
    sampler = prompt.pop("sample")
    prompt["two"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    sag = {"scale": 0.8, "blur_sigma": 2.0}
    prompt["sag"] = {"class_type": "SelfAttentionGuidance", "inputs": {"model": ["ckpt", 0], **sag}}
    prompt["xf"] = {"class_type": "SCCrossFrameAttention", "inputs": {"model": ["ckpt", 0], "anchor_frames": "0",
                                                                      "strength": 1.0}}
    prompt["xf_on_sag"] = {"class_type": "SCCrossFrameAttention", "inputs": {**prompt["xf"]["inputs"],
                                                                             "model": ["sag", 0]}}
    prompt["sag_on_xf"] = {"class_type": "SelfAttentionGuidance", "inputs": {"model": ["xf", 0], **sag}}
    names = {"sag_only": "sag", "xf_only": "xf", "sag_xf": "xf_on_sag", "xf_sag": "sag_on_xf"}
    for name, model in names.items():
        prompt[name] = {"class_type": "KSampler", "inputs": {
            **sampler["inputs"], "model": [model, 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["two", 0]}}
    result = run_prompt(prompt, outputs=list(names))
    out = {n: result.output(n)["samples"] for n in names}
    assert_close_to_scale(out["xf_sag"], out["sag_xf"])
    assert relative_change(out["sag_xf"], out["xf_only"]) > 1e-3  # SAG acts
    assert relative_change(out["sag_xf"], out["sag_only"]) > 1e-2  # cross-frame acts


def test_hypertile_under_cross_frame_is_a_clear_error_in_the_ui():
    prompt = region_graph()
    sampler = prompt.pop("sample")
    prompt["two"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    prompt["ht"] = {"class_type": "HyperTile", "inputs": {"model": ["ckpt", 0], "tile_size": 32, "swap_size": 1,
                                                         "max_depth": 0, "scale_depth": False}}
    prompt["xf"] = {"class_type": "SCCrossFrameAttention", "inputs": {"model": ["ht", 0], "anchor_frames": "0",
                                                                      "strength": 1.0}}
    prompt["both"] = {"class_type": "KSampler", "inputs": {
        **sampler["inputs"], "model": ["xf", 0], "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": ["two", 0]}}
    message = node_error_message(prompt, outputs=["both"])
    assert "HyperTile" in message and "re-tiles" in message
