"""DiT models (Flux family, Qwen-Image, Z-Image): latent blending and preservation on their latent
layouts, masked ControlNet on their token residuals, and instances mode, against core.

Latent layouts (ComfyUI 0.33 ``comfy.latent_formats``): Flux.1, Chroma and Z-Image sample
``[B,16,h,w]`` at 8 px per cell; Flux.2 ``[B,128,h,w]`` at 16 px per cell (32 VAE channels
packed 2x2); Qwen-Image ``[B,16,1,h,w]`` (its VAE has a frame axis) at 8 px per cell.
"""
import pytest
import torch

from harness import pack_import

ops = pack_import("nodes.ops.blending")


def left_mask(height, width, cols):
    mask = torch.zeros(1, height, width)
    mask[:, :, :cols] = 1.0
    return mask


# --------------------------------------------------------------------------- latent blend, pure


@pytest.mark.parametrize("shape, cell_px", [
    ((1, 16, 8, 16), 8),  # Flux.1 / Z-Image, a 64x128 image
    ((1, 128, 4, 8), 16),  # Flux.2, the same image
    ((1, 16, 1, 8, 16), 8),  # Qwen-Image
])
def test_latent_blend_on_dit_layouts_is_exact_away_from_the_feathered_edge(shape, cell_px):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    out = ops.blend_latent_dicts({"samples": a}, {"samples": b}, left_mask(64, 128, 64), feather_px=2 * cell_px)["samples"]
    assert out.shape == shape
    cols = shape[-1]
    edge = cols // 2  # the mask's edge lies between cells edge-1 and edge
    # feathered over 2 cells centred on the edge: one cell each side is blended, the rest exact
    assert torch.equal(out[..., :edge - 1], b[..., :edge - 1])
    assert torch.equal(out[..., edge + 1:], a[..., edge + 1:])
    for cell in (edge - 1, edge):
        w = (out[..., cell] - a[..., cell]) / (b[..., cell] - a[..., cell])
        assert 0.0 < float(w.min()) and float(w.max()) < 1.0
        assert float(w.max() - w.min()) < 1e-4  # one weight for every channel (and frame)


def test_flux2_latents_feather_at_16_px_per_cell_unless_the_latent_says_otherwise():
    a, b = torch.zeros(1, 128, 4, 8), torch.ones(1, 128, 4, 8)
    mask = left_mask(64, 128, 64)
    at_16 = ops.blend_latent_dicts({"samples": a}, {"samples": b}, mask, feather_px=32.0)["samples"][0, 0, 0]
    at_8 = ops.blend_latent_dicts({"samples": a, "downscale_ratio_spacial": 8}, {"samples": b}, mask,
                                  feather_px=32.0)["samples"][0, 0, 0]
    assert torch.equal(at_16, ops.latent_weight(mask, 4, 8, 32.0, cell_px=16)[0, 0, 0])
    assert torch.equal(at_16[[0, 1, 2, 5, 6, 7]], torch.tensor([1.0, 1, 1, 0, 0, 0]))  # 2-cell ramp
    assert torch.equal(at_8[[0, 1, 6, 7]], torch.tensor([1.0, 1, 0, 0])) and 0 < at_8[2] < 1  # 4-cell ramp
    assert ops.pixels_per_cell(torch.zeros(1, 16, 4, 4)) == 8 and ops.pixels_per_cell(a) == 16
    assert ops.pixels_per_cell(a, 32) == 32


def test_latent_blend_joins_a_4d_and_a_5d_qwen_latent_and_rejects_other_ranks():
    a, b = torch.zeros(1, 16, 8, 8), torch.ones(1, 16, 1, 8, 8)
    out = ops.blend_latent_dicts({"samples": a}, {"samples": b}, left_mask(64, 64, 32))["samples"]
    assert out.shape == (1, 16, 1, 8, 8)
    assert torch.equal(out[..., :4], torch.ones(1, 16, 1, 8, 4)) and out[..., 4:].abs().max() == 0
    with pytest.raises(ValueError, match=r"\[B,C,h,w\] or \[B,C,T,h,w\]"):
        ops.blend_latent_dicts({"samples": torch.zeros(1, 16, 1, 1, 8, 8)}, {"samples": b}, left_mask(64, 64, 32))


def test_preserve_on_a_qwen_latent_takes_a_source_with_or_without_the_frame_axis():
    gen = torch.Generator().manual_seed(1)
    denoised = torch.randn(2, 16, 1, 8, 8, generator=gen)
    weight = ops.latent_weight(left_mask(64, 64, 32), 8, 8)
    for source in (torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 16, 1, 8, 8, generator=gen)):
        out = ops.preserve(denoised, source, weight)
        assert out.shape == denoised.shape
        assert torch.equal(out[..., :4], source.reshape(1, 16, 1, 8, 8).expand(2, -1, -1, -1, -1)[..., :4])
        assert torch.equal(out[..., 4:], denoised[..., 4:])


# --------------------------------------------------------------------------- DiT models

import comfy.sample  # noqa: E402
import nodes  # noqa: E402
from harness import tiny_dit, tiny_dit_control  # noqa: E402
from harness.core_reference import core_masked_conds, record_model_calls  # noqa: E402

tiny_dit_control.register_test_nodes()

NO_DIT = tiny_dit.unavailable_reason()
needs_dit = pytest.mark.skipif(NO_DIT is not None, reason=str(NO_DIT))
mc = pack_import("nodes.sampling.masked_control")
SIZE = 128  # image px: Flux / Qwen-Image latent 16x16, token grid 8x8


def dit_conds(arch):
    return tiny_dit.conditioning(arch, "a red fox", guidance=3.5), tiny_dit.conditioning(arch, "blurry", guidance=3.5)


def probe(arch, positive, negative, steps=2, sampler="euler", cfg=2.0, batch=1, model=None):
    """Samples ``arch`` and records (control residuals, output) of every model call."""
    model = (model or tiny_dit.model(arch)).clone()
    records = record_model_calls(model)
    latent = tiny_dit.empty_latent(arch, SIZE, SIZE, batch)["samples"]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, negative, latent, seed=5)
    return records, samples


def box_mask(top, left, height, width, size=SIZE):
    mask = torch.zeros(1, size, size)
    mask[:, top:top + height, left:left + width] = 1.0
    return mask


def test_token_weights_follow_the_patch_grid_rows_then_columns_frames_outermost():
    mask = box_mask(0, 0, SIZE, 48)  # 48 px = 6 latent columns = 3 whole tokens of 16 px
    flux = mc.residual_weights(mask, (1, 16, 16, 16), (2, 64, 32))
    assert flux.shape == (1, 64, 1)
    grid = flux[0, :, 0].reshape(8, 8)
    assert torch.equal(grid[:, :3], torch.ones(8, 3)) and grid[:, 3:].abs().max() == 0
    qwen = mc.residual_weights(mask, (1, 16, 2, 16, 16), (2, 128, 32))  # two frames
    assert torch.equal(qwen[0, :64], flux[0]) and torch.equal(qwen[0, 64:], flux[0])
    odd = mc.residual_weights(box_mask(0, 0, 120, 120, 120), (1, 16, 15, 15), (1, 64, 32))  # padded to 16x16
    assert odd.shape == (1, 64, 1) and bool((odd > 0.99).all())
    with pytest.raises(ValueError, match=r"\(1, 50, 32\).*core Apply ControlNet"):
        mc.residual_weights(mask, (1, 16, 16, 16), (1, 50, 32))


@pytest.fixture(scope="module")
def hint():
    return torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(3))


def dit_control(kind):
    cn = tiny_dit_control.controlnet(kind)
    if kind == "flux_union":  # as core SetUnionControlNetType does
        cn = cn.copy()
        cn.set_extra_arg("control_type", [1])
    return cn


def control_pairs(kind, hint, mask):
    arch = tiny_dit_control.KINDS[kind]
    pos, neg = dit_conds(arch)
    cn, vae = dit_control(kind), tiny_dit_control.vae(kind)
    core = nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, hint, 1.0, 0.0, 1.0, vae=vae)
    masked = mc.apply_masked_control(pos, neg, cn, hint, mask, 1.0, 0.0, 1.0, vae=vae)
    return arch, (pos, neg), core, masked


CONTROL_KINDS = list(tiny_dit_control.KINDS)


@needs_dit
@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_masked_dit_controlnet_ones_is_core_and_empty_is_no_control(kind, hint):
    arch, plain, core, full = control_pairs(kind, hint, torch.ones(1, SIZE, SIZE))
    _, plain_samples = probe(arch, *plain)
    core_records, core_samples = probe(arch, *core)
    _, full_samples = probe(arch, *full)
    assert core_records[0][0] is not None and (core_samples - plain_samples).abs().max() > 1e-3  # control acts
    assert torch.equal(full_samples, core_samples)  # bit for bit
    _, _, _, empty = control_pairs(kind, hint, torch.zeros(1, SIZE, SIZE))
    empty_records, empty_samples = probe(arch, *empty)
    assert all(r is None for r, _ in empty_records) and torch.equal(empty_samples, plain_samples)


@needs_dit
@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_masked_dit_controlnet_residuals_are_zero_on_tokens_outside_the_mask(kind, hint):
    mask = box_mask(32, 16, 64, 48)  # token rows 2..5, token columns 1..3 (16 px per token)
    arch, _, core, masked = control_pairs(kind, hint, mask)
    core_records, _ = probe(arch, *core, steps=1)
    masked_records, _ = probe(arch, *masked, steps=1)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 1:4] = True
    inside = inside.flatten()
    checked = 0
    for (core_res, _), (masked_res, _) in zip(core_records, masked_records):  # first call: same inputs
        for key, values in core_res.items():
            for c, m in zip(values, masked_res[key]):
                if c is None:
                    continue
                assert m.shape == c.shape and m.ndim == 3
                assert m[:, ~inside].abs().max() == 0
                assert torch.equal(m[:, inside], c[:, inside])
                assert c[:, inside].abs().max() > 0
                checked += 1
        break
    assert checked > 0


# --------------------------------------------------------------------------- instances mode

regional = pack_import("nodes.sampling.regions")
INSTANCE_CONTROL = {"flux": "flux_xlabs", "flux_vae": "flux_union", "qwen_vae": "qwen_instantx"}
ARCH_OF = {"flux_vae": "flux", "qwen_vae": "qwen_image"}  # cases whose ControlNet reads its image through the VAE


def band(index):
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, index * 36:index * 36 + 44] = 1.0  # 3 overlapping vertical bands; x >= 116 is uncovered
    return mask


def dit_regions(case, controlled):
    arch = ARCH_OF.get(case, case)
    kind = INSTANCE_CONTROL.get(case) if controlled else None
    net = None if kind is None else dit_control(kind)
    vae = None if kind is None else tiny_dit_control.vae(kind)
    regions = []
    for i, weight in enumerate((1.0, 2.0, 0.5)):
        image = None if net is None else torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(20 + i))
        regions.append(regional.Region(conditioning=tiny_dit.conditioning(arch, f"region {i}", guidance=3.5),
                                       mask=band(i), weight=weight, control_net=net, control_image=image,
                                       control_strength=0.5 + 0.25 * i, control_vae=vae))
    return regions


def model_rows(model, run):
    """``(result of run(), rows of every diffusion-model call)``."""
    rows = []
    handle = model.model.diffusion_model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append((args[0] if args else kwargs["x"]).shape[0]), with_kwargs=True)
    try:
        return run(), rows
    finally:
        handle.remove()


def assert_close_to_scale(actual, expected, relative=1e-5):
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert error <= relative * scale, f"max difference {error:.3g} vs scale {scale:.3g}"


@needs_dit
@pytest.mark.parametrize("case, controlled", [
    ("flux", True), ("flux_vae", True), ("qwen_vae", True), ("qwen_image", False), ("z_image", False),
    ("chroma", False), ("flux2", False)])
def test_dit_instances_equal_core_masked_conds_in_one_model_call_per_step(case, controlled):
    """flux_vae / qwen_vae: region ControlNets that encode their image with the Region's control_vae, as core's
    Apply ControlNet does with its vae input."""
    arch = ARCH_OF.get(case, case)
    model = tiny_dit.model(arch)
    pos, neg = dit_conds(arch)
    regions = dit_regions(case, controlled)
    vae = regions[0].control_vae
    core, core_rows = model_rows(model, lambda: probe(arch, core_masked_conds(pos, regions, vae=vae), neg)[1])
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "instances", 0)
    ours, our_rows = model_rows(model, lambda: probe(arch, p, n, model=m)[1])
    assert_close_to_scale(ours, core)
    assert (ours - probe(arch, pos, neg)[1]).abs().max() > 1e-2  # the regions change the image
    assert our_rows == [5] * 2  # background, 3 regions and the negative: one call per step
    # core batches conds without a ControlNet the same way; with one ControlNet per region it cannot
    assert core_rows == ([2, 1, 1, 1] * 2 if controlled else [5] * 2)


@needs_dit
@pytest.mark.parametrize("mode", ["attention", "instances"])
def test_dit_regions_ask_for_the_vae_a_region_controlnet_needs(mode):
    regions = dit_regions("flux", False)
    regions[1] = regional.Region(**{**regions[1].__dict__, "control_net": tiny_dit_control.controlnet("flux_union"),
                                    "control_image": torch.zeros(1, SIZE, SIZE, 3)})
    pos, neg = dit_conds("flux")
    with pytest.raises(ValueError, match="region 2's ControlNet encodes its control image with a VAE.*"
                                         "connect the model's VAE to that Region Prompt's control_vae input"):
        regional.apply_regions(tiny_dit.model("flux"), pos, neg, regions, mode, 0)


# --------------------------------------------------------------------------- preserve region and latent blend, sampled

from harness import run_prompt  # noqa: E402
from harness.fixture_nodes import fixture_node  # noqa: E402

PRESERVE_ARCHS = ["flux", "flux2", "qwen_image", "z_image"]


def dit_sampler(model, latent, seed, positive=("pos", 0), negative=("neg", 0)):
    return {"class_type": "KSampler", "inputs": {
        "model": model, "positive": list(positive), "negative": list(negative), "latent_image": latent, "seed": seed,
        "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}


@pytest.fixture(scope="module", params=PRESERVE_ARCHS)
def sampled(request):
    """One prompt per architecture: a source sample, a sample preserving its centre, two blended samples."""
    if NO_DIT is not None:
        pytest.skip(NO_DIT)
    arch = request.param
    encode = {"class_type": "TinyDiTTextEncode", "inputs": {"architecture": arch, "text": "a red fox", "tokens": 8}}
    prompt = {
        "model": {"class_type": "TinyDiTLoader", "inputs": {"architecture": arch}},
        "pos": encode, "neg": {**encode, "inputs": {**encode["inputs"], "text": "blurry"}},
        "empty": {"class_type": "TinyDiTEmptyLatent", "inputs": {"architecture": arch, "width": SIZE, "height": SIZE,
                                                                   "batch_size": 1}},
        "mask": {"class_type": "SCTestMask", "inputs": {}},
    }
    prompt["source"] = dit_sampler(["model", 0], ["empty", 0], seed=99)
    prompt["plain"] = dit_sampler(["model", 0], ["empty", 0], seed=7)
    prompt["keep"] = {"class_type": "SCPreserveRegion", "inputs": {
        "model": ["model", 0], "source": ["source", 0], "mask": ["mask", 0], "feather": 16.0,
        "start_percent": 0.0, "end_percent": 1.0, "falloff": "none"}}
    prompt["kept"] = dit_sampler(["keep", 0], ["empty", 0], seed=7)
    prompt["blend"] = {"class_type": "SCLatentBlend", "inputs": {
        "samples_a": ["plain", 0], "samples_b": ["source", 0], "mask": ["mask", 0], "feather": 0.0}}
    return arch, run_prompt(prompt, outputs=["source", "plain", "kept", "blend"])


nodes.NODE_CLASS_MAPPINGS["SCTestMask"] = fixture_node(
    "SCTestMask", "Test-only node: a SIZE x SIZE mask, white on the centre square [32:96, 32:96].", ("MASK",),
    lambda: box_mask(32, 32, 64, 64))


def cells(arch):
    """(kept cells, cells beyond the 16 px feather band) of the centre square on the arch's latent grid."""
    _, cell_px, _ = tiny_dit.LATENT[arch]
    lo, hi, band = 32 // cell_px, 96 // cell_px, -(-16 // cell_px)
    grid = SIZE // cell_px
    kept = torch.zeros(grid, grid, dtype=torch.bool)
    kept[lo:hi, lo:hi] = True
    near = torch.zeros(grid, grid, dtype=torch.bool)
    near[max(0, lo - band):hi + band, max(0, lo - band):hi + band] = True
    return kept, ~near


def test_preserve_region_keeps_the_source_latent_on_dit_models(sampled):
    arch, result = sampled
    source, kept, plain = (result.output(n)["samples"] for n in ("source", "kept", "plain"))
    assert kept.shape == source.shape == tiny_dit.empty_latent(arch, SIZE, SIZE)["samples"].shape
    inside, far = cells(arch)
    scale = source.abs().max()
    assert (kept[..., inside] - source[..., inside]).abs().max() <= 1e-4 * scale
    assert (kept[..., far] - source[..., far]).abs().mean() > 0.05 * scale  # generated, not copied
    assert (plain[..., inside] - source[..., inside]).abs().mean() > 0.05 * scale  # without it: not the source


def test_latent_blend_of_dit_samples_is_exact_inside_and_outside_the_mask(sampled):
    arch, result = sampled
    source, plain, blend = (result.output(n)["samples"] for n in ("source", "plain", "blend"))
    inside, _ = cells(arch)
    assert blend.shape == source.shape
    assert torch.equal(blend[..., inside], source[..., inside])
    assert torch.equal(blend[..., ~inside], plain[..., ~inside])
