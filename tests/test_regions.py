"""Regional conditioning (attention mode): masked cross-attention probed on the tiny UNets' own calls."""
import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.sample
from harness import box_mask_nodes, node_error_message, pack_import, run_prompt, tiny_models
from harness.core_reference import core_masked_conds

regional = pack_import("nodes.sampling.regions")
region_ops = pack_import("nodes.ops.regions")

SIZE = 64  # mask / image pixels; latent 8x8
POOLED = {"sd15": None, "sdxl": tiny_models.SDXL_POOLED_DIM}


def cond(arch="sd15", seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    options = {}
    if POOLED[arch]:
        options["pooled_output"] = torch.randn(batch, POOLED[arch], generator=g)
    return [[torch.randn(batch, 77, tiny_models.CONTEXT_DIM[arch], generator=g), options]]


def half(side="left", size=SIZE):
    mask = torch.zeros(1, size, size)
    if side == "left":
        mask[:, :, : size // 2] = 1.0
    else:
        mask[:, :, size // 2:] = 1.0
    return mask


def sample(model, positive, negative, steps=2, sampler="euler", cfg=5.0, batch=1, size=SIZE, seed=5, callback=None):
    """A core sample in inference mode, as ComfyUI's executor runs it (with autograd on, a weight an earlier
    prompt made in inference mode cannot meet one that records gradients)."""
    latent = torch.zeros(batch, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, "normal", positive, negative, latent,
                                   seed=seed, callback=callback)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, relative: float = 1e-5) -> None:
    """Float-rounding equality: the random tiny UNets give latents in the hundreds, so compare to their scale."""
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= relative * scale, f"max difference {error:.3g} vs scale {scale:.3g}"


def regions_of(*specs):
    return [regional.Region(conditioning=c, mask=m, weight=w) for c, m, w in specs]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_one_region_covering_everything_equals_the_plain_prompt(arch):
    model = tiny_models.unet(arch)
    pos, neg = cond(arch, 0), cond(arch, 1)
    plain = sample(model, pos, neg)
    regions = regions_of((pos, torch.ones(1, SIZE, SIZE), 1.0))
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "attention", 0)
    assert p[0][0].shape[1] == 154
    assert_close_to_scale(sample(m, p, n), plain)


def test_zero_and_empty_regions_are_the_plain_prompt():
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    m, p, n, masks = regional.apply_regions(model, pos, neg, [], "attention", 16)
    assert m is model and p is pos and masks == []
    empty = regions_of((cond("sd15", 3), torch.zeros(1, SIZE, SIZE), 1.0))
    m, p, n, masks = regional.apply_regions(model, pos, neg, empty, "attention", 16)
    assert m is model and p is pos


class AttentionProbe:
    """Replaces optimized_attention: records the cond rows' softmax weights of every masked attention call."""

    def __init__(self, original):
        self.original = original
        self.calls = []
        self.unbiased = []  # the same rows' weights without the mask

    def __call__(self, q, k, v, heads, mask=None, **kwargs):
        if mask is not None and kwargs.get("transformer_options", {}).get("sc_probe_skip") is None:
            b, tq, inner = q.shape
            d = inner // heads
            qh = q.reshape(b, tq, heads, d).transpose(1, 2)
            kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
            sim = qh @ kh.transpose(-1, -2) * d ** -0.5 + mask.unsqueeze(1)
            flags = kwargs["transformer_options"].get("cond_or_uncond", [0])
            items = b // len(flags)
            cond = [c * items + i for c, flag in enumerate(flags) if flag == 0 for i in range(items)]
            if b % len(flags):  # a self-attention extension's call on its rows only (locality: the cond rows)
                cond = list(range(b))
            self.calls.append((tq, sim.softmax(-1)[cond]))  # the cond rows: the ones regions act on
            self.unbiased.append((sim - mask.unsqueeze(1)).softmax(-1)[cond])
        return self.original(q, k, v, heads, mask=mask, **kwargs)


def test_attention_caches_hold_one_run_only():
    """Biases and grid masks are cached within a run (the same every step) and emptied after it, so a
    patched model sampled at many sizes holds nothing between runs; results are bit-identical."""
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    regions = regions_of((cond("sd15", 2), half("left"), 1.0), (cond("sd15", 3), half("right"), 2.0))
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "attention", 8, locality=0.5)
    cross = next(iter(m.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    locality = next(iter(m.model_options["transformer_options"]["patches_replace"]["attn1"].values())).extensions[0]
    outputs = {}
    for size in (64, 96, 128, 64):
        entries = []

        def count(step, x0, x, total):
            entries.append((len(cross.plans), len(cross.grids.cache), len(locality.grids.cache)))

        outputs.setdefault(size, []).append(sample(m, p, n, steps=3, size=size, callback=count))
        assert entries == [(2, 2, 2)] * 3, (size, entries)  # 2 token grids, one cond/uncond layout, every step
        assert (len(cross.plans), len(cross.grids.cache), len(locality.grids.cache)) == (0, 0, 0)
    assert torch.equal(outputs[64][0], outputs[64][1])  # after runs at other sizes, as on the first run


def test_uncond_rows_and_soft_masks():
    """Uncond rows are untouched; a soft mask scales the region's share of attention."""
    bias = region_ops.cross_attention_bias([torch.full((1, 2, 2), 0.5)], [2.0], 3, [2], 10, 1)
    assert bias.shape == (1, 4, 10)
    assert torch.equal(bias[0, 0, :5], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]))  # log(0.5 * 2) = 0
    assert torch.equal(bias[..., 5:], bias[..., :5])  # repeated like ComfyUI pads contexts
    # a soft mask of four levels: each token's bias on the region's tokens is log(mask * weight)
    soft = torch.tensor([[[0.5, 0.25], [1.0, 0.0]]])
    bias = region_ops.cross_attention_bias([soft], [2.0], 3, [2], 10, 1)
    assert torch.equal(bias[0, :, :3], torch.zeros(4, 3))  # the base prompt: no bias
    expected = torch.log(torch.tensor([1.0, 0.5, 2.0, 0.0])).view(4, 1).expand(4, 2)
    assert torch.equal(bias[0, :, 3:5], expected) and torch.equal(bias[..., 5:], bias[..., :5])
    # through the attention patch, batch (uncond, cond): the uncond row gets plain attention,
    # the cond row softmax(q k^T / sqrt(d) + bias) v with that bias
    attention = pack_import("nodes.sampling.attention").attention
    patch = regional.RegionalCrossAttention([soft], [2.0], {5: (3, (2,))})
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 8, generator=g), torch.randn(2, 10, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    options = {"cond_or_uncond": [1, 0], "original_shape": [2, 4, 2, 2], "n_heads": 1, "dim_head": 8}
    out = patch(q, k, v, options)
    plain = attention(q, k, v, options)
    assert torch.allclose(out[0], plain[0], rtol=0, atol=1e-6)
    manual = ((q[1] @ k[1].T) * 8 ** -0.5 + bias[0]).softmax(-1) @ v[1]
    assert torch.allclose(out[1], manual, rtol=0, atol=1e-5)
    assert (out[1] - plain[1]).abs().max() > 0.1


def test_region_ops_numbers_for_non_square_masks_batches_and_the_preview():
    """Pure ops on numbers worked by hand: background, partition/locality over a batch, blend dtype, overlay."""
    a = torch.full((2, 2, 4), 0.3)  # batch 2, 2 x 4, upsampled to 4 x 8 (constant: exact)
    b = torch.zeros(1, 4, 8)
    b[0, :, :4] = 0.5
    expected = torch.tensor([0.2] * 4 + [0.7] * 4).expand(2, 4, 8)
    assert torch.allclose(region_ops.background([a, b]), expected, atol=1e-6)
    # partition: two items of three tokens; parts (the region, then the uncovered part) sum to one per token
    grid = [torch.tensor([[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]])]
    parts = region_ops.partition(grid, 2)
    assert parts.shape == (2, 2, 3)
    assert torch.allclose(parts, torch.tensor([[[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]], [[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]]]))
    # locality at 0.5: scale 1 - 0.5 * (1 - sum_r a_r(p) a_r(q)), every row of both items
    same = torch.einsum("rbp,rbq->bpq", parts, parts)
    assert torch.allclose(region_ops.locality_bias(grid, 0.5, 2), torch.log(1 - 0.5 * (1 - same)))
    first_item = torch.log(torch.tensor([[1.0, 0.75, 0.5], [0.75, 0.75, 0.75], [0.5, 0.75, 1.0]]))
    assert torch.allclose(region_ops.locality_bias(grid, 0.5, 2)[0], first_item)
    weights = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    blended = region_ops.blend_paths(torch.tensor([[2.0], [6.0]]), weights)
    assert blended.dtype == torch.float32 and blended.tolist() == [5.0]
    with pytest.raises(ValueError, match="context of 10 tokens is not a repeat of the 4 region tokens"):
        region_ops.cross_attention_bias(grid, [1.0], 2, [2], 10, 2)
    # one copy of the context unless told: keys and key order of base 0-2, region 3-4
    assert region_ops.cross_key_order(3, [2]).tolist() == [3, 4, 0, 1, 2]
    assert region_ops.cross_key_order(3, [2], 2).tolist() == [3, 4, 0, 1, 2, 8, 9, 5, 6, 7]
    soft = torch.tensor([[1.0, 0.5, 0.5, 0.25]])
    edge = region_ops.cross_attention_groups(soft, [1.0], 3, [2])  # fewer than SHARED_ROWS alike: one edge group
    assert [g.keys.tolist() for g in edge] == [[0, 1, 2, 3, 4]] and edge[0].bias.shape == (4, 5)
    alike = region_ops.cross_attention_groups(soft, [1.0], 3, [2], shared_rows=1)  # every distinct row its group
    assert sorted(len(g.queries) for g in alike) == [1, 1, 2] and all(g.bias is None or len(g.bias) == 1 for g in alike)


def test_feather_masks_softens_each_edge_centred_and_zero_leaves_masks_as_they_are():
    m = torch.zeros(2, 1, 8)
    m[:, :, 4:] = 1  # an edge between columns 3 and 4
    m[1, 0, 0] = 0.3  # soft values stay as they are at 0 px
    # centred over 2 px: t = 0.5 + (d - 0.5) / 2 inside, 0.5 - (d - 0.5) / 2 outside, then smoothstep
    row = [0.0, 0.0, 0.0, 0.15625, 0.84375, 1.0, 1.0, 1.0]
    feathered = region_ops.feather_masks([m], 2)[0]
    assert torch.allclose(feathered[0, 0], torch.tensor(row)) and torch.allclose(feathered[1, 0], torch.tensor(row))
    assert torch.equal(region_ops.feather_masks([m], 0)[0], m)


def test_mask_overlay_numbers():
    m = torch.zeros(2, 2, 3)
    m[0, 0, 0] = 1.0
    m[1, 1, 2] = 0.5
    red = torch.tensor(region_ops.PALETTE[0])
    grey = region_ops.mask_overlay([m], None, 4, 6)  # grey canvas 0.5, default alpha 0.55, mask upsampled x2
    assert grey.shape == (2, 4, 6, 3)
    assert torch.allclose(grey[0, 0, 0], 0.5 * 0.45 + red * 0.55) and torch.equal(grey[0, 3, 5], torch.full((3,), 0.5))
    assert torch.allclose(grey[1, 3, 5], 0.5 * (1 - 0.275) + red * 0.275)
    assert region_ops.mask_overlay([], None, 4, 4).shape == (1, 4, 4, 3)
    # an RGBA image of another batch: its RGB is the canvas, the first mask shows on every image; out of range clamps
    image = torch.full((3, 2, 3, 4), 0.2)
    image[2] = 1.5
    image[1, 1, 0, :3] = -1.0
    out = region_ops.mask_overlay([m, torch.ones(1, 2, 3)], image, alpha=0.5)
    blue = torch.tensor(region_ops.PALETTE[1])
    assert out.shape == (3, 2, 3, 3)
    for item in range(3):  # mask 0 of the first layer on every image: red at the top-left pixel only
        red_then_blue = (image[item, 0, 0, :3] * 0.5 + red * 0.5) * 0.5 + blue * 0.5
        assert torch.allclose(out[item, 0, 0], red_then_blue.clamp(0, 1))
    assert torch.allclose(out[1, 1, 1], 0.2 * 0.5 + blue * 0.5)
    assert torch.allclose(out[2, 1, 1], torch.tensor([0.85, 1.0, 1.0]))  # 1.5 * 0.5 + blue * 0.5, clamped
    assert torch.equal(out[1, 1, 0], torch.zeros(3))  # -1 * 0.5 + blue * 0.5 < 0, clamped


def test_masks_of_other_size_and_batch():
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    def sampled(mask, batch=2):
        m, p, n, _ = regional.apply_regions(model, pos, neg, regions_of((cond("sd15", 2), mask, 1.0)), "attention", 0)
        return sample(m, p, n, batch=batch)

    # a mask of another size is resized to the latent: the left half at 96x160 acts as the left half at 64x64
    big = torch.nn.functional.interpolate(half("left").unsqueeze(1), size=(96, 160)).squeeze(1)
    left, right = sampled(half("left")), sampled(half("right"))
    assert_close_to_scale(sampled(big), left)
    assert (left - right).abs().max() > 1e-2 * left.abs().max()  # the mask's side matters
    # one mask per latent: latent 0 as with the left mask for all, latent 1 as with the right mask for all
    per_latent = torch.cat([half("left"), half("right")])
    each = sampled(per_latent)
    assert_close_to_scale(each[0], left[0])
    assert_close_to_scale(each[1], right[1])
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions_of((cond("sd15", 2), per_latent[:1].repeat(3, 1, 1), 1.0)),
                                        "attention", 0)
    with pytest.raises(ValueError, match=r"region 1's mask has batch 3 but the latent batch is 2 .*; "
                       r"use one mask for all latents \(a batch of 1\) or one mask per latent"):
        sample(m, p, n, batch=2)
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions_of((cond("sd15", 2), per_latent[:1].repeat(3, 1, 1), 1.0),
                                                                   (cond("sd15", 3), half("right"), 1.0)), "instances", 0)
    with pytest.raises(ValueError, match="region 1's mask has batch 3 but the latent batch is 2"):
        sample(m, p, n, batch=2)


# --------------------------------------------------------------------------- instances mode


class CallCounter:
    """Counts forward calls (and rows) of a module, e.g. the UNet or a ControlNet."""

    def __init__(self, module):
        self.rows = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.rows.append((args[0] if args else kwargs["x"]).shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def counted_sample(model, positive, negative, controlnets=(), **kwargs):
    """``(latent, UNet call rows, ControlNet call rows)`` of one sampling run."""
    unet = CallCounter(model.model.diffusion_model)
    nets = [CallCounter(c.control_model) for c in controlnets]
    try:
        out = sample(model, positive, negative, **kwargs)
    finally:
        unet.__exit__()
        for n in nets:
            n.__exit__()
    return out, unet.rows, [r for n in nets for r in n.rows]


def hint(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(seed))


def third(index: int) -> torch.Tensor:
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, index * 18:index * 18 + 22] = 1.0  # 3 overlapping vertical bands; x >= 58 is uncovered
    return mask


def instance_regions(arch: str, controlled: bool = True, weights=(1.0, 2.0, 0.5)):
    net = tiny_models.controlnet(arch)
    return [regional.Region(conditioning=cond(arch, 10 + i), mask=third(i), weight=w,
                            control_net=net if controlled else None, control_image=hint(20 + i) if controlled else None,
                            control_strength=0.5 + 0.25 * i) for i, w in enumerate(weights)]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_instances_equal_core_masked_conds_with_a_controlnet_per_cond_in_fewer_calls(arch):
    model = tiny_models.unet(arch)
    pos, neg = cond(arch, 0), cond(arch, 1)
    regions = instance_regions(arch)
    net = [tiny_models.controlnet(arch)]
    core, core_unet, core_net = counted_sample(model, core_masked_conds(pos, regions), neg, net, steps=3)
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "instances", 0)
    ours, our_unet, our_net = counted_sample(m, p, n, net, steps=3)
    assert_close_to_scale(ours, core, 1e-5)
    # core: background + negative batched, then one call per region cond (each has its own ControlNet)
    assert core_unet == [2, 1, 1, 1] * 3 and core_net == [1, 1, 1] * 3
    # instances: background, 3 regions and the negative in one UNet call, the 3 ControlNets in one call
    assert our_unet == [5] * 3 and our_net == [3] * 3


def test_instances_without_the_wrappers_are_core_masked_conds():
    """The conditioning alone (e.g. into a model that was not patched) still gives the same result."""
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    regions = instance_regions("sd15")
    core = sample(model, core_masked_conds(pos, regions), neg)
    _, p, n, _ = regional.apply_regions(model, pos, neg, regions, "instances", 0)
    assert_close_to_scale(sample(model, p, n), core)


def test_instances_with_a_control_mask_and_a_controlnet_on_the_base_prompt():
    import nodes

    model = tiny_models.unet("sd15")
    net = tiny_models.controlnet("sd15")
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(cond("sd15", 0), cond("sd15", 1), net, hint(30),
                                                                0.7, 0.0, 1.0)
    regions = instance_regions("sd15")
    regions[1] = regional.Region(**{**regions[1].__dict__, "control_mask": half("left")})
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "instances", 0)
    batched, unet_rows, _ = counted_sample(m, p, n)
    unbatched = sample(model, p, n)  # ComfyUI alone on the same conditioning: the reference maths
    assert_close_to_scale(batched, unbatched, 1e-5)
    assert unet_rows == [5, 5]  # the negative shares the call: it carries the same base ControlNet


def test_instances_make_one_expansion_per_model_call(monkeypatch):
    """The batched ControlNet and the UNet wrapper of a call share its expansion; the result is unchanged."""
    instances = pack_import("nodes.sampling.instances")
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    m, p, n, _ = regional.apply_regions(model, pos, neg, instance_regions("sd15"), "instances", 0)
    made = []
    make = instances._expansion
    monkeypatch.setattr(instances, "_expansion", lambda *args: made.append(args[2]) or make(*args))
    batched, unet_rows, net_rows = counted_sample(m, p, n, [tiny_models.controlnet("sd15")], steps=3)
    assert unet_rows == [5] * 3 and net_rows == [3] * 3
    assert made == [2] * 3  # one expansion of the 2 sampler rows (cond, uncond) per call, not one per user
    assert_close_to_scale(batched, sample(model, p, n, steps=3), 1e-5)  # ComfyUI alone on the same conds


def test_instances_control_image_and_control_mask_batches_must_match_the_latents():
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    images = instance_regions("sd15")
    images[1] = regional.Region(**{**images[1].__dict__, "control_image": hint(31, batch=3)})
    m, p, n, _ = regional.apply_regions(model, pos, neg, images, "instances", 0)
    with pytest.raises(ValueError, match=r"region 2's control image has batch 3 but the latent batch is 2 "
                       r"\(image shape \(3, 3, 64, 64\)\); use one image for all latents \(a batch of 1\) "
                       r"or one image per latent"):
        sample(m, p, n, batch=2)
    masks = instance_regions("sd15")
    masks[0] = regional.Region(**{**masks[0].__dict__, "control_mask": half("left").repeat(3, 1, 1)})
    m, p, n, _ = regional.apply_regions(model, pos, neg, masks, "instances", 0)
    with pytest.raises(ValueError, match=r"region 1's control mask has batch 3 but the latent batch is 2 "
                       r"\(mask shape \(3, 1, .*\)\); use one mask for all latents"):
        sample(m, p, n, batch=2)


def test_instances_split_the_batch_when_memory_is_short(monkeypatch):
    import comfy.model_management

    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    m, p, n, _ = regional.apply_regions(model, pos, neg, instance_regions("sd15", controlled=False), "instances", 0)
    whole, whole_rows, _ = counted_sample(m, p, n)
    one_row = model.model.memory_required([1, 4, SIZE // 8, SIZE // 8])
    free = one_row * 2.5  # room for one row only, with ComfyUI's 1.5x margin

    def short_memory(device=None, torch_free_too=False):
        return (free, free) if torch_free_too else free

    monkeypatch.setattr(comfy.model_management, "get_free_memory", short_memory)
    split, split_rows, _ = counted_sample(m, p, n)
    assert whole_rows == [5, 5] and split_rows == [1] * 10
    assert_close_to_scale(split, whole)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_one_instance_covering_everything_equals_the_plain_prompt(arch):
    model = tiny_models.unet(arch)
    pos, neg = cond(arch, 0), cond(arch, 1)
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions_of((pos, torch.ones(1, SIZE, SIZE), 1.0)),
                                        "instances", 0)
    assert_close_to_scale(sample(m, p, n), sample(model, pos, neg))


def test_instances_with_cfg_one_and_a_latent_batch():
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    regions = instance_regions("sd15")
    core = sample(model, core_masked_conds(pos, regions), neg, cfg=1.0, batch=2)
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "instances", 0)
    ours, rows, _ = counted_sample(m, p, n, cfg=1.0, batch=2)
    assert_close_to_scale(ours, core, 1e-5)
    assert rows == [8, 8]  # (background + 3 regions) x 2 latents, no negative at cfg 1


def test_region_prompt_batch_must_match_the_base_prompt():
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0, batch=2), cond("sd15", 1)
    with pytest.raises(ValueError, match=r"region 1's conditioning has batch 3 but the base prompt batch is 2 "
                       r"\(prompt shape \(3, 77, 64\)\); use one prompt for all base prompts \(a batch of 1\) "
                       r"or one prompt per base prompt"):
        regional.apply_regions(model, pos, neg, regions_of((cond("sd15", 2, batch=3), half("left"), 1.0)),
                               "attention", 0)
    _, joined, _, _ = regional.apply_regions(model, pos, neg, regions_of((cond("sd15", 2), half("left"), 1.0)),
                                             "attention", 0)
    assert joined[0][0].shape == (2, 154, 64)
    assert torch.equal(joined[0][0][1, 77:], cond("sd15", 2)[0][0][0])  # one region prompt for both base prompts


def test_sdxl_conditioning_into_sd15_is_a_clear_error():
    model = tiny_models.unet("sd15")
    with pytest.raises(ValueError, match="SDXL prompt into an SD1.5 model"):
        regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1),
                               regions_of((cond("sdxl", 2), half("left"), 1.0)), "attention", 0)


def probed_locality(monkeypatch, locality: float) -> tuple[torch.Tensor, AttentionProbe]:
    """One step with left / right half regions and self-attention ``locality``, attention probed."""
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    regions = regions_of((cond("sd15", 2), half("left"), 1.0), (cond("sd15", 3), half("right"), 1.0))
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "attention", 0, locality=locality)
    probe = AttentionProbe(comfy_attention.optimized_attention)
    monkeypatch.setattr(comfy_attention, "optimized_attention", probe)
    return sample(m, p, n, steps=1), probe


def test_self_attention_locality_cuts_attention_between_regions(monkeypatch):
    out, probe = probed_locality(monkeypatch, 1.0)
    assert torch.isfinite(out).all()
    self_calls = [w for tokens, w in probe.calls if w.shape[-1] == tokens]
    assert self_calls
    for w in self_calls:
        assert w.numel() > 0  # the cond rows were found
        side = int(w.shape[-1] ** 0.5)
        g = w.reshape(*w.shape[:2], side, side, side, side)
        assert torch.count_nonzero(g[:, :, :, : side // 2, :, side // 2:]) == 0


def test_self_attention_locality_at_half_strength_halves_attention_between_regions(monkeypatch):
    """First principles: with locality s, the weight from token p to a token q of another region is
    ``(1 - s)`` times what it was, renormalised; tokens of its own region keep theirs. Left and right
    halves (hard, no feather) cover every token, so at s = 0.5 that is the unbiased softmax with the
    other half's weights halved."""
    _, probe = probed_locality(monkeypatch, 0.5)
    checked = set()
    for (tokens, biased), unbiased in zip(probe.calls, probe.unbiased):
        if biased.shape[-1] != tokens:
            continue  # cross-attention
        side = int(tokens ** 0.5)
        left = (torch.arange(tokens) % side) < side // 2
        scale = torch.where(left[:, None] == left[None, :], 1.0, 0.5)
        expected = unbiased * scale
        expected = expected / expected.sum(-1, keepdim=True)
        assert torch.allclose(biased, expected, rtol=0, atol=1e-6), side
        assert (biased - unbiased).abs().max() > 1e-3  # the halving is visible
        checked.add(side)
    assert checked == {8, 4}


# --------------------------------------------------------------------------- through the executor


def region_graph(mode="attention", sampler="euler", steps=2, feather=8):
    prompt = {
        "ckpt": {"class_type": "TinyCheckpointLoader", "inputs": {"architecture": "sd15"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a garden"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
        "cat": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
        "dog": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a dog"}},
        **box_mask_nodes("left", 64, 64, (0, 0, 32, 64)), **box_mask_nodes("right", 64, 64, (32, 0, 32, 64)),
        "r1": {"class_type": "SCRegion", "inputs": {"conditioning": ["cat", 0], "mask": ["left", 0], "weight": 1.0,
                                                    "control_strength": 1.0}},
        "r2": {"class_type": "SCRegion", "inputs": {"conditioning": ["dog", 0], "mask": ["right", 0], "weight": 1.0,
                                                    "control_strength": 1.0}},
        "both": {"class_type": "SCCombineRegions", "inputs": {"regions_1": ["r1", 0], "regions_3": ["r2", 0]}},
        "apply": {"class_type": "SCApplyRegions", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "regions": ["both", 0],
            "mode": mode, "feather": feather, "self_attention_locality": 0.0}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["apply", 1], "negative": ["apply", 2], "latent_image": ["empty", 0],
            "seed": 3, "steps": steps, "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal", "denoise": 1.0}},
        "plain": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
            "seed": 3, "steps": steps, "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal", "denoise": 1.0}},
    }
    return prompt


def test_nodes_through_the_executor():
    result = run_prompt(region_graph(), outputs=["sample", "plain", "apply", "both"])
    regions = result.output("both")
    assert len(regions) == 2 and len(result.output("r1")) == 1  # r1's list was not changed by the append
    samples, plain = result.output("sample")["samples"], result.output("plain")["samples"]
    assert samples.shape == plain.shape and not torch.allclose(samples, plain, atol=1e-3)
    preview = result.output("apply", 3)
    assert preview.shape == (1, 512, 512, 3)
    red, blue = preview[0, 256, 64], preview[0, 256, 448]
    assert red[0] > red[2] and blue[2] > blue[0]  # region 1 red on the left, region 2 blue on the right


def test_region_control_needs_both_inputs():
    prompt = region_graph()
    prompt["img"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}
    prompt["r1"]["inputs"]["control_image"] = ["img", 0]
    assert "control_net and control_image" in node_error_message(prompt, outputs=["r1"])


def test_every_core_sampler_runs_with_regions_and_uncovered_pixels_follow_the_base_prompt():
    """Both modes, every core sampler. Regions cover latent columns 0-5; columns 6-7 are uncovered
    and must come out like the base prompt's picture, not empty (as core masked conds without a base do)."""
    import comfy.samplers

    prompt = region_graph(feather=0)
    prompt["narrow"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 64}}
    prompt["right"]["inputs"]["source"] = ["narrow", 0]  # region 2: x 32..48 px only
    prompt["apply_instances"] = {**prompt["apply"], "inputs": {**prompt["apply"]["inputs"], "mode": "instances"}}
    samplers = comfy.samplers.KSampler.SAMPLERS
    outputs = []
    for sampler in samplers:
        for name, model in (("attention", "apply"), ("instances", "apply_instances"), ("plain", None)):
            node = prompt["plain" if model is None else "sample"]
            inputs = {**node["inputs"], "sampler_name": sampler}
            if model is not None:
                inputs.update(model=[model, 0], positive=[model, 1], negative=[model, 2])
            prompt[f"{name}_{sampler}"] = {**node, "inputs": inputs}
            outputs.append(f"{name}_{sampler}")
    result = run_prompt(prompt, outputs=outputs)
    for sampler in samplers:
        plain = result.output(f"plain_{sampler}")["samples"]
        for mode in ("attention", "instances"):
            ours = result.output(f"{mode}_{sampler}")["samples"]
            assert torch.isfinite(ours).all(), (mode, sampler)
            uncovered, reference = ours[..., 6:].abs().mean(), plain[..., 6:].abs().mean()
            assert uncovered > 0.5 * reference, (mode, sampler, float(uncovered), float(reference))
            assert (ours[..., :4] - plain[..., :4]).abs().mean() > 1e-3 * plain.abs().mean(), (mode, sampler)


@pytest.mark.parametrize("backend", ["attention_basic", "attention_split", "attention_sub_quad", "attention_pytorch"])
def test_attention_mode_gives_the_same_result_with_every_cpu_attention_backend(backend, monkeypatch):
    model = tiny_models.unet("sd15")
    pos, neg = cond("sd15", 0), cond("sd15", 1)
    regions = regions_of((cond("sd15", 2), half("left"), 1.0), (cond("sd15", 3), half("right"), 2.0))
    m, p, n, _ = regional.apply_regions(model, pos, neg, regions, "attention", 8, locality=0.5)
    reference = sample(m, p, n)  # the backend ComfyUI picked on this machine
    monkeypatch.setattr(comfy_attention, "optimized_attention", getattr(comfy_attention, backend))
    assert_close_to_scale(sample(m, p, n), reference)
