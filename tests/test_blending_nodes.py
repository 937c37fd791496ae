"""Blending nodes through ComfyUI's executor with the tiny SD1.5 UNet (core KSampler, VAE, ControlNet).

Several KSamplers share one prompt (and one module-scoped run) to keep the file fast: the
conditioning is encoded once and each assertion reads the sampler node it needs.
"""
import pytest
import torch

from harness import box_mask_nodes, node_error_message, run_prompt
from harness import tiny_models

SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "uni_pc"]
# A 32x32 px square at (16, 16) of a 64x64 image: latent cells [2:6, 2:6] lie fully inside.
KEPT = (slice(None), slice(None), slice(2, 6), slice(2, 6))


def graph(seed=7, batch=1, sampler="euler", steps=4, cfg=5.0):
    return {
        "ckpt": {"class_type": "TinyCheckpointLoader", "inputs": {"architecture": "sd15"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a person in a red coat"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "sample": sampler_node(["ckpt", 0], ["empty", 0], seed=seed, sampler=sampler, steps=steps, cfg=cfg),
    }


def sampler_node(model, latent, seed=7, sampler="euler", steps=4, cfg=5.0, denoise=1.0, positive=("pos", 0), negative=("neg", 0)):
    return {"class_type": "KSampler", "inputs": {
        "model": model, "positive": list(positive), "negative": list(negative), "latent_image": latent, "seed": seed,
        "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "denoise": denoise}}


def solid(prompt, node, value, width=64, height=64):
    prompt[node] = {"class_type": "SolidMask", "inputs": {"value": value, "width": width, "height": height}}
    return [node, 0]


def box_mask(prompt, node="mask", x=16, y=16, width=32, height=32):
    """A 64x64 mask, white in the given box."""
    prompt.update(box_mask_nodes(node, 64, 64, (x, y, width, height)))
    return [node, 0]


def latents(result, node):
    return result.output(node)["samples"]


# --------------------------------------------------------------------------- preserve region


@pytest.fixture(scope="module")
def preserve_run():
    prompt = graph()
    prompt["source"] = sampler_node(["ckpt", 0], ["empty", 0], seed=99)
    mask = box_mask(prompt)
    for sampler in SAMPLERS:
        prompt[f"keep_{sampler}"] = {"class_type": "SCPreserveRegion", "inputs": {
            "model": ["ckpt", 0], "source": ["source", 0], "mask": mask, "feather": 16.0,
            "start_percent": 0.0, "end_percent": 1.0, "falloff": "none"}}
        prompt[f"out_{sampler}"] = sampler_node([f"keep_{sampler}", 0], ["empty", 0], sampler=sampler)
    prompt["keep_none"] = {"class_type": "SCPreserveRegion", "inputs": {
        **prompt["keep_euler"]["inputs"], "mask": solid(prompt, "no_mask", 0.0)}}
    prompt["out_none"] = sampler_node(["keep_none", 0], ["empty", 0])
    return run_prompt(prompt, outputs=["sample", "source", "out_none", *(f"out_{s}" for s in SAMPLERS)])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_preserve_region_keeps_the_source_in_the_kept_area(preserve_run, sampler):
    final, source = latents(preserve_run, f"out_{sampler}"), latents(preserve_run, "source")
    assert torch.isfinite(final).all()
    # Latents of the random tiny UNet reach ~300; the kept cells match to 2e-4 of that scale.
    assert (final[KEPT] - source[KEPT]).abs().max() <= 2e-4 * source.abs().max()
    assert (final[..., 7, :] - source[..., 7, :]).abs().mean() > 1.0  # beyond the band: generated, not copied


def test_preserve_region_with_an_empty_mask_is_the_plain_model_and_leaves_the_model_untouched(preserve_run):
    assert torch.equal(latents(preserve_run, "out_none"), latents(preserve_run, "sample"))
    options = tiny_models.unet("sd15").model_options
    assert "sampler_post_cfg_function" not in options
    assert not options["transformer_options"].get("patches_replace") and not tiny_models.unet("sd15").wrappers


def test_preserve_region_with_a_size_mismatch_says_what_to_do():
    prompt = graph()
    prompt["small"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
    prompt["keep"] = {"class_type": "SCPreserveRegion", "inputs": {
        "model": ["ckpt", 0], "source": ["small", 0], "mask": box_mask(prompt), "feather": 0.0,
        "start_percent": 0.0, "end_percent": 1.0, "falloff": "none"}}
    prompt["sample"]["inputs"]["model"] = ["keep", 0]
    message = node_error_message(prompt, outputs=["sample"])
    assert "ValueError" in message and "(1, 4, 4, 4)" in message and "(1, 4, 8, 8)" in message


# --------------------------------------------------------------------------- paste back


def test_paste_back_restores_the_kept_pixels_exactly_and_nothing_beyond_the_band():
    prompt = graph()
    prompt["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["decode_src"] = {"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["ckpt", 2]}}
    prompt["paste"] = {"class_type": "SCPasteBack", "inputs": {
        "image": ["decode", 0], "source_image": ["decode_src", 0], "mask": box_mask(prompt),
        "feather": 6.0, "falloff": "smoothstep", "colour_match": True}}
    out = run_prompt(prompt, outputs=["paste", "decode", "decode_src"])
    pasted, result, source = out.output("paste"), out.output("decode"), out.output("decode_src")
    assert (pasted[:, 16:48, 16:48] - source[:, 16:48, 16:48]).abs().max() == 0
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[10:54, 10:54] = False  # farther than the 6 px band
    assert (pasted[:, outside] - result[:, outside]).abs().max() == 0
    band = pasted[:, 13, 16:48]
    assert (band - result[:, 13, 16:48]).abs().max() > 0 and (band - source[:, 13, 16:48]).abs().max() > 0


# --------------------------------------------------------------------------- reference attention


def reference_node(prompt, node, reference, strength=1.0, mask=None):
    inputs = {"model": ["ckpt", 0], "reference": reference, "strength": strength, "style_fidelity": 0.5,
              "start_percent": 0.0, "end_percent": 1.0}
    if mask is not None:
        inputs["mask"] = mask
    prompt[node] = {"class_type": "SCReferenceAttention", "inputs": inputs}
    return [node, 0]


@pytest.fixture(scope="module")
def reference_run():
    """img2img (denoise 0.6) of the base sample, with references: itself, an unrelated sample, masks."""
    prompt = graph()
    prompt["other"] = sampler_node(["ckpt", 0], ["empty", 0], seed=99)
    i2i = {"latent": ["sample", 0], "denoise": 0.6, "seed": 11}
    prompt["plain"] = sampler_node(["ckpt", 0], **i2i)
    variants = {
        "same": reference_node(prompt, "ref_same", ["sample", 0]),
        "unrelated": reference_node(prompt, "ref_other", ["other", 0]),
        "zero": reference_node(prompt, "ref_zero", ["other", 0], strength=0.0),
        "full_mask": reference_node(prompt, "ref_full", ["other", 0], mask=solid(prompt, "white", 1.0)),
        "empty_mask": reference_node(prompt, "ref_empty", ["other", 0], mask=solid(prompt, "black", 0.0)),
        "left_mask": reference_node(prompt, "ref_left", ["other", 0], mask=box_mask(prompt, "left", 0, 0, 32, 64)),
    }
    for name, model in variants.items():
        prompt[name] = sampler_node(model, **i2i)
    prompt["cn"] = {"class_type": "TinyControlNetLoader", "inputs": {"architecture": "sd15"}}
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFFFFFF}}
    prompt["control"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0], "vae": ["ckpt", 2],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    prompt["controlled"] = sampler_node(["ref_other", 0], **i2i, positive=("control", 0), negative=("control", 1))
    result = run_prompt(prompt, outputs=["plain", "controlled", *variants])
    return {name: latents(result, name) for name in ["plain", "controlled", *variants]}


def change(run, name):
    return float((run[name] - run["plain"]).abs().mean())


def test_reference_attention_strength_0_is_the_plain_model_bit_for_bit(reference_run):
    assert torch.equal(reference_run["zero"], reference_run["plain"])


def test_reference_attention_changes_less_when_the_target_is_the_reference(reference_run):
    assert change(reference_run, "unrelated") > 0.1
    assert change(reference_run, "same") < 0.3 * change(reference_run, "unrelated")


def test_reference_attention_mask_limits_it(reference_run):
    run = reference_run
    assert (run["full_mask"] - run["unrelated"]).abs().max() <= 1e-5 * run["plain"].abs().max()  # white = no mask
    assert change(run, "empty_mask") <= 1e-5 * float(run["plain"].abs().max())  # black = no effect
    diff = (run["left_mask"] - run["plain"]).abs()
    left, right = float(diff[..., :4].mean()), float(diff[..., 4:].mean())
    assert left > 2 * right, (left, right)
    assert change(run, "left_mask") < change(run, "unrelated")


def test_reference_attention_keeps_controlnet_working(reference_run):
    controlled = reference_run["controlled"]
    assert torch.isfinite(controlled).all()
    # The residuals reached the target rows (a batch mismatch would make ComfyUI skip them silently).
    assert (controlled - reference_run["unrelated"]).abs().max() > 1e-2


# --------------------------------------------------------------------------- cross-frame attention

_RECORDS: dict[str, list[float]] = {}


class Attn1RecorderNode:
    """Test-only node: records how different frame 0 and frame 1 are after every self-attention."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, tag):
        records = _RECORDS.setdefault(tag, [])

        def record(n, extra_options, **kwargs):
            a, b = n[0].float(), n[1].float()  # frames 0 and 1 of the first cond chunk
            records.append(float((a - b).norm() / (a.norm() + b.norm())))
            return n

        patched = model.clone()
        patched.set_model_attn1_output_patch(record)
        return (patched,)


@pytest.fixture(scope="module")
def cross_frame_run():
    import nodes

    nodes.NODE_CLASS_MAPPINGS["TestAttn1Recorder"] = Attn1RecorderNode
    _RECORDS.clear()
    prompt = graph()
    prompt["xf_1"] = {"class_type": "SCCrossFrameAttention", "inputs": {"model": ["ckpt", 0], "anchor_frames": "0", "strength": 1.0}}
    prompt["one"] = sampler_node(["xf_1", 0], ["empty", 0])
    prompt["two_frames"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    prompt["rec_plain"] = {"class_type": "TestAttn1Recorder", "inputs": {"model": ["ckpt", 0], "tag": "plain"}}
    prompt["xf_2"] = {"class_type": "SCCrossFrameAttention", "inputs": {"model": ["ckpt", 0], "anchor_frames": "0", "strength": 1.0}}
    prompt["rec_xf"] = {"class_type": "TestAttn1Recorder", "inputs": {"model": ["xf_2", 0], "tag": "cross_frame"}}
    prompt["two_plain"] = sampler_node(["rec_plain", 0], ["two_frames", 0])
    prompt["two_xf"] = sampler_node(["rec_xf", 0], ["two_frames", 0])
    result = run_prompt(prompt, outputs=["sample", "one", "two_plain", "two_xf"])
    return {"steps": prompt["two_xf"]["inputs"]["steps"],
            **{name: latents(result, name) for name in ["sample", "one", "two_plain", "two_xf"]}}


def test_cross_frame_attention_with_one_frame_is_the_identity(cross_frame_run):
    assert torch.equal(cross_frame_run["one"], cross_frame_run["sample"])


def test_cross_frame_attention_makes_two_noisy_frames_more_alike(cross_frame_run):
    """Measured where the patch acts: frame-to-frame distance of every self-attention output, relative to
    the outputs' norms, patched / plain. Not on final latents: on a random UNet the shared attention output
    is one residual term that later random layers do not turn into shared content (the patch moves the
    final latent by 24-30% of its norm, yet the final frames' distance changes by 0.965-1.009x).

    Seeds are fixed (sampler seed 7, the tiny UNet's seed 0), so the figures are deterministic; the bounds
    hold for any seed. Measured over 100 pairs (sampler seeds 0-39 with UNet seed 0, seeds 0-19 with UNet
    seeds 1-3): first call 0.871-0.960 (mean 0.923, sd 0.016; this seed 0.945), whole 4-step run
    0.906-0.985 (mean 0.941, sd 0.017; this seed 0.954). Without the patch both are exactly 1. (A single
    layer's ratio is no test: 0.961-1.013 over the same seeds.)"""
    plain, patched = _RECORDS["plain"], _RECORDS["cross_frame"]
    steps = cross_frame_run["steps"]
    assert len(plain) == len(patched) > 0 and len(plain) % steps == 0
    layers = len(plain) // steps  # self-attention calls per model call

    def ratio(count: int) -> float:
        return sum(patched[:count]) / sum(plain[:count])

    assert ratio(layers) < 0.98, ratio(layers)  # first model call: same inputs, only the patch differs
    assert ratio(len(plain)) < 0.99, ratio(len(plain))
    assert torch.isfinite(cross_frame_run["two_xf"]).all()


def test_cross_frame_extended_attention_is_attention_over_the_anchor_keys_too():
    from harness import pack_import

    attention = pack_import("nodes.sampling.attention")
    cross_frame = pack_import("nodes.sampling.cross_frame")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 10, 8, generator=gen) for _ in range(3))  # 2 chunks x 3 frames
    options = {"cond_or_uncond": [1, 0], "n_heads": 2, "attn_precision": None}
    patch = attention.SelfAttentionDispatcher((cross_frame.CrossFrameExtension((0, 2), 1.0),))
    out = patch(q, k, v, options, unknown_future_argument=True)

    def sdpa(rows, keys):
        qh, kh, vh = (t.view(t.shape[0], -1, 2, 4).transpose(1, 2) for t in (q[rows], k[keys], v[keys]))
        kh, vh = kh.transpose(0, 1).flatten(1, 2)[None], vh.transpose(0, 1).flatten(1, 2)[None]
        return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(1, -1, 8)[0]

    for chunk in (0, 3):
        expect = {0: [0, 2], 1: [1, 0, 2], 2: [2, 0]}  # own keys first, then the other anchors
        for frame, keys in expect.items():
            got = out[chunk + frame]
            want = sdpa([chunk + frame], [chunk + key for key in keys])
            assert torch.allclose(got, want, atol=1e-5), (chunk, frame)


class _Groups:
    """Test-only attn1 extension returning fixed extensions."""

    def __init__(self, groups):
        self.groups = groups

    def extend(self, q, k, v, extra_options):
        return self.groups


class _CountingAttention:
    def __init__(self, original):
        self.original, self.calls = original, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


def test_blends_are_plain_plus_weight_times_extended_minus_plain(monkeypatch):
    """Reference-style layout (full-weight row, blended rows, untouched row) plus per-token weights
    and overlapping groups: the merged blend (one fused attention with log-sum-exps) equals the
    two-call definition, untouched rows are ComfyUI's attention bit for bit, and only the rows that
    need no log-sum-exp call ComfyUI's attention."""
    import comfy.ldm.modules.attention as comfy_attention
    from harness import pack_import

    attention = pack_import("nodes.sampling.attention")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 12, 8, generator=gen) * 2 for _ in range(3))
    kx, vx = torch.randn(2, 24, 8, generator=gen) * 3, torch.randn(2, 24, 8, generator=gen)
    token_weight = torch.rand(2, 12, 1, generator=gen)
    options = {"n_heads": 2, "attn_precision": None}
    groups = [
        attention.Extension(torch.tensor([0]), kx[:1], vx[:1], 1.0),  # cond row: extended only
        attention.Extension(torch.tensor([1, 2]), kx, vx, 0.5),  # uncond rows: blend
        attention.Extension(torch.tensor([2, 3]), kx[:, :12], vx[:, :12], token_weight),  # overlaps row 2
    ]  # row 4: untouched

    def comfy(rows, keys=None, values=None):
        keys = k[rows] if keys is None else torch.cat((k[rows], keys), 1)
        values = v[rows] if values is None else torch.cat((v[rows], values), 1)
        return attention.attention(q[rows], keys, values, options)

    plain = comfy([0, 1, 2, 3, 4])
    want = plain.clone()
    want[0] = comfy([0], kx[:1], vx[:1])[0]
    want[[1, 2]] += 0.5 * (comfy([1, 2], kx, vx) - plain[[1, 2]])
    want[[2, 3]] += token_weight * (comfy([2, 3], kx[:, :12], vx[:, :12]) - plain[[2, 3]])

    counter = _CountingAttention(comfy_attention.optimized_attention)
    monkeypatch.setattr(comfy_attention, "optimized_attention", counter)
    dispatcher = attention.SelfAttentionDispatcher((_Groups(groups),))
    merged = dispatcher(q, k, v, options)
    assert counter.calls == 2  # plain for the untouched row, extended for the full-weight row
    assert torch.allclose(merged, want, atol=1e-5)
    assert torch.equal(merged[4], attention.attention(q[4:], k[4:], v[4:], options)[0])

    # With a ComfyUI attention override every row goes through ComfyUI: two calls per blend.
    counter.calls = 0
    overridden = dict(options, optimized_attention_override=lambda func, *args, **kwargs: func(*args, **kwargs))
    two_call = dispatcher(q, k, v, overridden)
    assert counter.calls == 4  # plain (rows 1-4), extended x3
    assert torch.allclose(two_call, want, atol=1e-5)

    # Far-apart logits (the extra keys take almost all the attention) stay finite and exact.
    loud = [attention.Extension(torch.tensor([1]), kx[:1] * 40, vx[:1], 0.5)]
    loud_out = attention.SelfAttentionDispatcher((_Groups(loud),))(q, k, v, options)
    loud_want = plain[1] + 0.5 * (comfy([1], kx[:1] * 40, vx[:1])[0] - plain[1])
    assert torch.isfinite(loud_out).all() and torch.allclose(loud_out[1], loud_want, atol=1e-4)


# --------------------------------------------------------------------------- samplers


def test_attention_patches_together_run_with_every_sampler():
    """Reference attention on top of cross-frame attention, two frames, each core sampler."""
    prompt = graph(batch=2)
    prompt["xf"] = {"class_type": "SCCrossFrameAttention", "inputs": {"model": ["ckpt", 0], "anchor_frames": "0", "strength": 0.8}}
    prompt["ref"] = {"class_type": "SCReferenceAttention", "inputs": {
        "model": ["xf", 0], "reference": ["ref_latent", 0], "strength": 1.0, "style_fidelity": 0.5,
        "start_percent": 0.0, "end_percent": 1.0}}
    prompt["ref_latent"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["hint", 0], "vae": ["ckpt", 2]}}
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3060C0}}
    # each patch alone, and both at strength 0 (stacked, still inactive)
    prompt["ref_alone"] = {**prompt["ref"], "inputs": {**prompt["ref"]["inputs"], "model": ["ckpt", 0]}}
    prompt["xf_off"] = {**prompt["xf"], "inputs": {**prompt["xf"]["inputs"], "strength": 0.0}}
    prompt["both_off"] = {**prompt["ref"], "inputs": {**prompt["ref"]["inputs"], "model": ["xf_off", 0], "strength": 0.0}}
    outputs = []
    for sampler in SAMPLERS:
        prompt[f"plain_{sampler}"] = sampler_node(["ckpt", 0], ["empty", 0], sampler=sampler)
        prompt[f"both_{sampler}"] = sampler_node(["ref", 0], ["empty", 0], sampler=sampler)
        prompt[f"xf_{sampler}"] = sampler_node(["xf", 0], ["empty", 0], sampler=sampler)
        prompt[f"ref_{sampler}"] = sampler_node(["ref_alone", 0], ["empty", 0], sampler=sampler)
        prompt[f"off_{sampler}"] = sampler_node(["both_off", 0], ["empty", 0], sampler=sampler)
        outputs += [f"{kind}_{sampler}" for kind in ("plain", "both", "xf", "ref", "off")]
    result = run_prompt(prompt, outputs=outputs)
    for sampler in SAMPLERS:
        plain, both = latents(result, f"plain_{sampler}"), latents(result, f"both_{sampler}")
        assert both.shape == plain.shape == (2, 4, 8, 8)
        assert torch.isfinite(both).all(), sampler
        assert (both - plain).abs().mean() > 1e-2, sampler
        # both patches act in the stack: it is neither one of them alone
        for alone in ("xf", "ref"):
            assert (both - latents(result, f"{alone}_{sampler}")).abs().mean() > 1e-2, (sampler, alone)
        # the anchor frame attends only to itself under cross-frame attention: frame 0 is the plain frame 0
        xf = latents(result, f"xf_{sampler}")
        assert torch.allclose(xf[0], plain[0], rtol=0, atol=1e-4 * plain.abs().max()), sampler
        assert (xf[1] - plain[1]).abs().mean() > 1e-2, sampler
        # at strength 0 the stacked patches compute exactly what the model alone computes
        assert torch.equal(latents(result, f"off_{sampler}"), plain), sampler


def test_attention_patch_errors_say_what_to_do():
    prompt = graph()
    prompt["xf"] = {"class_type": "SCCrossFrameAttention", "inputs": {"model": ["ckpt", 0], "anchor_frames": "zero", "strength": 1.0}}
    prompt["sample"]["inputs"]["model"] = ["xf", 0]
    assert "like '0' or '0, 8'" in node_error_message(prompt, outputs=["sample"])
    prompt["empty"]["inputs"]["batch_size"] = 2
    prompt["xf"]["inputs"]["anchor_frames"] = "5"
    assert "anchor frame 5 does not exist: the batch has 2 frames" in node_error_message(prompt, outputs=["sample"])


# --------------------------------------------------------------------------- latent blend


def test_latent_blend_node_and_its_shape_error():
    prompt = graph()
    prompt["a"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["blend"] = {"class_type": "SCLatentBlend", "inputs": {
        "samples_a": ["a", 0], "samples_b": ["sample", 0], "mask": box_mask(prompt), "feather": 0.0}}
    out = run_prompt(prompt, outputs=["blend", "sample"])
    blended, b = latents(out, "blend"), latents(out, "sample")
    assert torch.equal(blended[KEPT], b[KEPT])
    assert blended[..., 0, :].abs().max() == 0 and blended[..., :, 7].abs().max() == 0
    prompt["a"]["inputs"]["width"] = 96
    message = node_error_message(prompt, outputs=["blend"])
    assert "(1, 4, 8, 12)" in message and "(1, 4, 8, 8)" in message


def test_token_grid_from_activations_or_the_original_shape():
    from harness import pack_import

    attention = pack_import("nodes.sampling.attention")
    assert attention.token_grid(12, {"activations_shape": [2, 64, 3, 4], "original_shape": [2, 4, 9, 13]}) == (3, 4)
    for tokens, grid in ((117, (9, 13)), (35, (5, 7)), (12, (3, 4))):
        assert attention.token_grid(tokens, {"original_shape": [2, 4, 9, 13]}) == grid  # downsampling rounds up
    with pytest.raises(ValueError, match="do not fit"):
        attention.token_grid(50, {"original_shape": [2, 4, 9, 13]})
    rows = {"cond_or_uncond": [1, 0]}
    assert attention.row_is_uncond(rows, 6).tolist() == [True] * 3 + [False] * 3
    assert attention.row_latent_index(rows, 6).tolist() == [0, 1, 2, 0, 1, 2]
