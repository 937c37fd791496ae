"""UNet attention mode runs as groups of queries (ops.region_groups, shared with DiTs): exactly the
former dense-bias attention, in unmasked calls over only the keys each group reads.

The reference (:class:`DenseBias`) is the pack's former attn2 routing, written out here
independently of the groups: one attention call over the base and every region's tokens with the
additive bias ``log(weight * coverage)`` on a region's tokens (``-inf`` where its mask does not
reach) and 0 on the base tokens, on the cond rows only.

Where a dense bias remains on UNets: self-attention locality (a bias between every pair of image
tokens) is passed to ComfyUI's attention as a bias, made a chunk of queries at a time
(``attention.RowBias``) so its memory stays bounded; cross-attention has no dense path left.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
from harness import pack_import, tiny_models
from test_regions import assert_close_to_scale, cond, sample

regional = pack_import("nodes.sampling.regions")
attention = pack_import("nodes.sampling.attention")
region_ops = pack_import("nodes.ops.regions")
region_groups = pack_import("nodes.ops.region_groups")

SIZE = 128  # pixels; latent 16x16: token grids 16x16 (groups of >= SHARED_ROWS tokens) and 8x8 (edge groups)
BASE = 77


def todays_bias(grid, weights, base_len, region_lens, context_len, items):
    """``[items, tokens, context]``: 0 on the base tokens, ``log(weight * coverage)`` on each region's, repeated."""
    tokens = grid[0].shape[-2] * grid[0].shape[-1]
    columns = [torch.zeros(items, tokens, base_len)]
    for m, w, n in zip(grid, weights, region_lens):
        m = m.expand(items, *m.shape[1:]).reshape(items, tokens, 1).float()
        columns.append(torch.log(m * w).expand(items, tokens, n))
    bias = torch.cat(columns, dim=2)
    return bias.repeat(1, 1, context_len // bias.shape[-1])


class DenseBias(regional.RegionalCrossAttention):
    """The former routing: one attention call with the dense bias on the cond rows, zero on the others."""

    def plan(self, extra_options, q, context_len, layout, cond_or_uncond, items):
        grid = self.grids.get(regional.latent_hw(extra_options), attention.token_grid(q.shape[1], extra_options),
                              q.device)
        region = todays_bias(grid, self.weights, *layout, context_len, items)
        bias = region.new_zeros((q.shape[0], *region.shape[1:]))
        for chunk, flag in enumerate(cond_or_uncond):
            if flag == 0:
                bias[chunk * items:(chunk + 1) * items] = region
        return bias

    @staticmethod
    def routed(q, k, v, extra_options, plan):
        return attention.attention(q, k, v, extra_options, mask=plan)


def box(x0, x1, y0=0, y1=SIZE, batch=1):
    mask = torch.zeros(batch, SIZE, SIZE)
    mask[:, y0:y1, x0:x1] = 1.0
    return mask


def blob():
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return torch.exp(-((x - 90.0) ** 2 + (y - 40.0) ** 2) / (2 * 20.0 ** 2)).unsqueeze(0)


CASES = {
    # two hard regions overlapping in x 48..80, weight 1: every group unmasked
    "hard_overlap": (lambda: [box(0, 80), box(48, SIZE)], (1.0, 1.0), 0),
    # feathered edges, weights 2 and 0.5, a soft blob over both (weight 1.5): edge and weighted groups
    "soft_weighted": (lambda: [box(0, 80), box(48, SIZE), blob()], (2.0, 0.5, 1.5), 12),
    # a different mask per latent item (batch 2): a group plan per item
    "per_item_masks": (lambda: [torch.cat([box(0, 64), box(0, SIZE, 0, 64)]), box(64, SIZE, batch=2)], (1.0, 3.0), 6),
}


def regions_for(arch, case):
    masks, weights, feather = CASES[case]
    return [regional.Region(conditioning=cond(arch, 10 + i), mask=m, weight=w)
            for i, (m, w) in enumerate(zip(masks(), weights))], feather


def grouped_and_dense(arch, case, monkeypatch, locality=0.0):
    model = tiny_models.unet(arch)
    regions, feather = regions_for(arch, case)
    grouped = regional.apply_regions(model, cond(arch, 0), cond(arch, 1), regions, "attention", feather, locality)[:3]
    with monkeypatch.context() as patch:
        patch.setattr(regional, "RegionalCrossAttention", DenseBias)
        dense = regional.apply_regions(model, cond(arch, 0), cond(arch, 1), regions, "attention", feather, locality)[:3]
    return grouped, dense


@pytest.mark.parametrize("cfg", [1.0, 5.0])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_grouped_attention_equals_the_dense_bias(arch, case, cfg, monkeypatch):
    grouped, dense = grouped_and_dense(arch, case, monkeypatch)
    assert isinstance(next(iter(attention.replace_patches(dense[0].model_options, "attn2").values())), DenseBias)
    expected = sample(*dense, cfg=cfg, batch=2, size=SIZE)
    assert_close_to_scale(sample(*grouped, cfg=cfg, batch=2, size=SIZE), expected)
    plain = sample(tiny_models.unet(arch), cond(arch, 0), cond(arch, 1), cfg=cfg, batch=2, size=SIZE)
    assert (expected - plain).abs().max() > 1e-2 * plain.abs().max()  # the regions act


def test_grouped_attention_equals_the_dense_bias_with_every_core_sampler(monkeypatch):
    """The model outputs differ by float rounding (~2e-6 of their scale), which some samplers amplify on
    this random model: with 2 steps heun's jump from sigma 14.6 to ~1 (30x, hence 4 steps), and
    dpm_adaptive's step-size control at 64 px (15x, hence 128 px for it)."""
    grouped, dense = grouped_and_dense("sd15", "soft_weighted", monkeypatch)
    for sampler in comfy.samplers.KSampler.SAMPLERS:
        size = SIZE if sampler == "dpm_adaptive" else 64
        expected = sample(*dense, sampler=sampler, size=size, steps=4)
        assert_close_to_scale(sample(*grouped, sampler=sampler, size=size, steps=4), expected)


def test_grouped_attention_equals_the_dense_bias_with_locality(monkeypatch):
    """Locality changes self-attention only; the cross-attention groups stay exact beside it."""
    grouped, dense = grouped_and_dense("sd15", "soft_weighted", monkeypatch, locality=0.5)
    assert_close_to_scale(sample(*grouped, size=SIZE), sample(*dense, size=SIZE))


# --------------------------------------------------------------------------- the groups themselves


def test_groups_cover_every_token_once_and_spell_out_todays_bias():
    """Soft and hard values, weights, overlap, a repeated context: the dense bias from the groups is the former bias."""
    a = torch.tensor([[1.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(1, 3, 4)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(1, 3, 4)
    membership = region_ops.memberships([a, b], 1)[0]
    for shared_rows in (1, 2, 64):
        groups = region_ops.cross_attention_groups(membership, [2.0, 1.0], 3, (2, 4), copies=2,
                                                   shared_rows=shared_rows)
        assert sorted(torch.cat([g.queries for g in groups]).tolist()) == list(range(12))
        dense = region_groups.dense_bias(groups, 12, 18)
        assert torch.equal(dense, todays_bias([a, b], [2.0, 1.0], 3, (2, 4), 18, 1)[0])
    by_token = {int(t): g for g in groups for t in g.queries}
    # token 0: in A only (w 2): base + A's tokens in both copies, one bias row log 2; B's tokens not read
    assert by_token[0].keys.tolist() == [0, 1, 2, 3, 4, 9, 10, 11, 12, 13]
    # tokens 8..11: no region: the base tokens only, no bias at all
    assert by_token[8].keys.tolist() == [0, 1, 2, 9, 10, 11] and by_token[8].bias is None
    assert region_ops.cross_attention_bias([a, b], [2.0, 1.0], 3, (2, 4), 18, 1).shape == (1, 12, 18)


@pytest.mark.parametrize("rows", [
    [[0.5, 1.0]] * 5,  # all rows alike
    [[0.5], [1.0], [0.5], [0.25]],  # one column
    [[True, False, False], [False, False, True], [True, False, True], [False, False, False], [False, False, True]],  # yes/no
    [[0.5, 1.0], [1.0, 0.5], [0.5, 1.0]],  # values of several columns: torch's own way
])
def test_unique_rows_equals_torch_unique_by_rows(rows):
    values = torch.tensor(rows)
    expected = torch.unique(values, dim=0, return_inverse=True, return_counts=True)
    for got, want in zip(region_groups.unique_rows(values), expected):
        assert torch.equal(got, want)


def test_hard_masks_of_weight_one_run_unmasked_over_base_and_own_region_tokens(monkeypatch):
    """Two hard halves, weight 1: every cond call of ComfyUI's attention has no mask and reads 2 x 77 keys,
    every uncond call its own 77."""
    model = tiny_models.unet("sd15")
    regions = [regional.Region(conditioning=cond("sd15", 2), mask=box(0, SIZE // 2), weight=1.0),
               regional.Region(conditioning=cond("sd15", 3), mask=box(SIZE // 2, SIZE), weight=1.0)]
    m, p, n, _ = regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1), regions, "attention", 0)
    calls = []
    original = comfy_attention.optimized_attention

    def probe(q, k, v, heads, mask=None, **kwargs):
        calls.append((q.shape[0], q.shape[1], k.shape[1], mask is not None))
        return original(q, k, v, heads, mask=mask, **kwargs)

    monkeypatch.setattr(comfy_attention, "optimized_attention", probe)
    sample(m, p, n, steps=1, size=SIZE)
    cross = [(rows, tokens, keys, masked) for rows, tokens, keys, masked in calls if keys in (BASE, 2 * BASE)]
    assert cross and not any(masked for *_, masked in cross)
    # cond rows: base + one region's tokens, never the other region's, half of each grid (16x16, 8x8) per group
    assert {(tokens, keys) for _, tokens, keys, _ in cross if tokens in (128, 32)} == {(128, 2 * BASE), (32, 2 * BASE)}
    # the uncond row: its own 77 tokens once (ComfyUI padded them to the cond's 3 x 77 by repeating them),
    # all grid tokens at once; no call reads the padded 3 x 77
    assert {(rows, tokens, keys) for rows, tokens, keys, _ in cross if tokens not in (128, 32)} == {
        (1, 256, BASE), (1, 64, BASE)}
    assert not [call for call in calls if call[2] == 3 * BASE]


def test_from_four_regions_the_uncond_shares_the_conds_unet_pass_with_the_same_result(monkeypatch):
    """5 x 77 joined tokens against a 77-token negative: ComfyUI batches contexts only up to 4 repeats, so the
    uncond would take a UNet pass of its own. The pack repeats the negative to the joined length: one pass of
    cond and uncond (batch 2 at cfg 5), the uncond's attention still over its own 77 keys, and the same
    picture as with the negative left as it was (unbatched)."""
    model = tiny_models.unet("sd15")
    regions = [regional.Region(conditioning=cond("sd15", 2 + i), mask=box(32 * i, 32 * (i + 1)), weight=1.0)
               for i in range(4)]
    m, p, n, _ = regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1), regions, "attention", 0)
    assert p[0][0].shape[1] == n[0][0].shape[1] == 5 * BASE
    assert torch.equal(n[0][0], cond("sd15", 1)[0][0].repeat(1, 5, 1))
    batches, keys = [], []
    original_apply, original_attention = m.model.apply_model, comfy_attention.optimized_attention

    def counting_apply(x, t, **kwargs):
        batches.append(x.shape[0])
        return original_apply(x, t, **kwargs)

    def probe(q, k, v, heads, mask=None, **kwargs):
        keys.append(k.shape[1])
        return original_attention(q, k, v, heads, mask=mask, **kwargs)

    monkeypatch.setattr(m.model, "apply_model", counting_apply)
    monkeypatch.setattr(comfy_attention, "optimized_attention", probe)
    batched = sample(m, p, n, steps=1, size=SIZE)
    assert batches == [2]  # cond and uncond in one pass
    assert 5 * BASE not in keys  # nobody attends to the repeated negative in full
    monkeypatch.setattr(regional, "batched_with_positive", lambda negative, length: negative)
    m2, p2, n2, _ = regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1), regions, "attention", 0)
    batches.clear()
    monkeypatch.setattr(m2.model, "apply_model", counting_apply)
    assert_close_to_scale(batched, sample(m2, p2, n2, steps=1, size=SIZE))
    assert batches == [1, 1]  # without it: a pass each


def test_keys_that_repeat_are_attended_to_once_and_others_in_full():
    """ComfyUI's padding (a context repeated) is found on the keys themselves: one period when keys and values
    repeat with it, all tokens when either does not or the length does not divide."""
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(2, 7, 4, generator=g) for _ in range(2))
    padded_k, padded_v = k.repeat(1, 3, 1), v.repeat(1, 3, 1)
    assert regional.repeating_length(padded_k, padded_v, (5, 7)) == 7
    assert regional.repeating_length(padded_k, padded_v, (21,)) == 21
    changed = padded_v.clone()
    changed[1, 15] += 1e-3  # one value of one row's last copy
    assert regional.repeating_length(padded_k, changed, (7,)) == 21
    assert regional.repeating_length(padded_k[:, :20], padded_v[:, :20], (7,)) == 20


def test_a_token_never_reads_a_region_its_mask_does_not_reach(monkeypatch):
    """At every cross-attention of a real sample, changing region B's keys and values leaves the
    tokens outside B bit-identical (exactly zero attention), and changes the tokens inside."""
    model = tiny_models.unet("sdxl")
    regions = [regional.Region(conditioning=cond("sdxl", 2), mask=box(0, SIZE // 2), weight=1.0),
               regional.Region(conditioning=cond("sdxl", 3), mask=box(SIZE // 2, SIZE), weight=2.0)]
    m, p, n, _ = regional.apply_regions(model, cond("sdxl", 0), cond("sdxl", 1), regions, "attention", 0)
    recorded = []
    routed = regional.RegionalCrossAttention.routed

    def record(q, k, v, extra_options, plan):
        recorded.append((q, k, v, extra_options, plan))
        return routed(q, k, v, extra_options, plan)

    monkeypatch.setattr(regional.RegionalCrossAttention, "routed", staticmethod(record))
    sample(m, p, n, steps=1, size=SIZE)
    assert {q.shape[1] for q, *_ in recorded} == {256, 64}
    for q, k, v, options, plan in recorded:
        other_k, other_v = k.clone(), v.clone()
        other_k[:, 2 * BASE:3 * BASE] += 1.0  # region B's tokens
        other_v[:, 2 * BASE:3 * BASE] += 1.0
        out, changed = routed(q, k, v, options, plan), routed(q, other_k, other_v, options, plan)
        side = int(q.shape[1] ** 0.5)
        cond_rows = [r for r, flag in enumerate(options["cond_or_uncond"]) if flag == 0]
        grid = (changed - out)[cond_rows].reshape(len(cond_rows), side, side, -1)
        assert torch.count_nonzero(grid[:, :, : side // 2]) == 0
        assert bool((grid[:, :, side // 2:].abs().amax(-1) > 1e-3).all())


# --------------------------------------------------------------------------- self-attention locality


def locality_options(side: int, cond_or_uncond=(1, 0)):
    return {"cond_or_uncond": list(cond_or_uncond), "original_shape": [len(cond_or_uncond), 4, side, side],
            "n_heads": 2, "dim_head": 4}


def soft_masks(side: int):
    left = torch.zeros(1, side, side)
    left[..., : side // 2] = 1.0
    left[..., side // 2] = 0.5
    return [left, torch.flip(left, dims=(-1,)) * 0.75]


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_locality_in_chunks_equals_the_whole_bias(strength, monkeypatch):
    """Rows ``(uncond, cond)``: the cond row equals softmax(q k^T / sqrt(d) + log(1 - s (1 - same))) v with the
    whole matrix, computed a few queries at a time; the uncond row is plain attention."""
    side = 8
    masks = soft_masks(side)
    dispatcher = attention.SelfAttentionDispatcher((regional.RegionLocality(masks, strength),))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, side * side, 8, generator=g) for _ in range(3))
    options = locality_options(side)
    whole = dispatcher(q, k, v, options)
    monkeypatch.setattr(attention, "BIAS_ELEMENTS", 3 * side * side)  # chunks of 3 queries
    chunked = dispatcher(q, k, v, options)
    # the reference, from the definition: a = soft membership (regions and background, summing to 1)
    m = torch.stack([mask.flatten() for mask in masks])
    a = torch.cat([m, (1 - m.sum(0)).clamp(min=0).unsqueeze(0)])
    a = a / a.sum(0, keepdim=True)
    bias = torch.log((1 - strength * (1 - a.T @ a)).clamp(min=0))
    qh, kh, vh = (t[1].view(-1, 2, 4).transpose(0, 1) for t in (q, k, v))
    expected = ((qh @ kh.transpose(-1, -2)) * 4 ** -0.5 + bias).softmax(-1) @ vh
    expected = expected.transpose(0, 1).reshape(side * side, 8)
    plain = attention.attention(q, k, v, options)
    for out in (whole, chunked):
        assert (out[1] - expected).abs().max() < 1e-5
        assert torch.equal(out[0], plain[0])
    assert (expected - plain[1]).abs().max() > 0.05
    # strength 0.5 halves the attention between the hard parts of the two regions: check one weight
    p_left, p_right = 0, side - 1  # first row: column 0 is in region 1 only, the last column in region 2 only
    scale = 1 - strength * (1 - float(a[:, p_left] @ a[:, p_right]))
    assert scale == pytest.approx(1 - strength * (1 - 0.0)) and bias[p_left, p_right].exp() == pytest.approx(scale)


def test_locality_at_half_strength_in_a_sample_does_not_depend_on_the_chunks(monkeypatch):
    model = tiny_models.unet("sd15")
    regions, feather = regions_for("sd15", "soft_weighted")
    m, p, n, _ = regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1), regions, "attention", feather, 0.5)
    whole = sample(m, p, n, size=SIZE)
    monkeypatch.setattr(attention, "BIAS_ELEMENTS", 4096)
    assert_close_to_scale(sample(m, p, n, size=SIZE), whole)
    without = regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1), regions, "attention", feather, 0.0)
    assert (sample(*without[:3], size=SIZE) - whole).abs().max() > 1e-3 * whole.abs().max()


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns (deterministic: no allocator, no RSS)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_locality_never_builds_the_tokens_by_tokens_matrix(monkeypatch):
    """64x64 tokens (a 512 px SD1.5 top block), cond and uncond rows: with a budget of 2**14 bias values the
    largest tensor the routing builds is the size of its input q (32768 values), 512x smaller than the
    tokens x tokens matrix it built before. ComfyUI's attention is stubbed: its own memory is its
    backend's business (sub-quadratic, split)."""
    side = 64
    tokens = side * side
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, tokens, 4, generator=g) for _ in range(3))
    dispatcher = attention.SelfAttentionDispatcher((regional.RegionLocality(soft_masks(side), 0.5),))
    monkeypatch.setattr(attention, "BIAS_ELEMENTS", 1 << 14)
    monkeypatch.setattr(attention, "attention", lambda q, k, v, extra_options, mask=None: q.new_zeros(q.shape))
    dispatcher(q, k, v, locality_options(side))  # warms the grid-mask cache outside the measure
    with LargestTensor() as measure:
        dispatcher(q, k, v, locality_options(side))
    assert measure.largest <= max(1 << 14, q.numel())
    assert tokens * tokens >= 512 * measure.largest


def test_key_windows_take_a_window_up_to_a_quarter_wider_than_the_keys_and_gather_beyond():
    inf = float("-inf")
    groups = [region_groups.AttentionGroup(torch.tensor([0]), torch.tensor([2, 3, 4, 6]), None),  # 5 wide, 4 keys
              region_groups.AttentionGroup(torch.tensor([1]), torch.tensor([1, 9]), torch.tensor([[0.5, 0.25]]))]
    narrow, wide = region_groups.key_windows(groups, torch.arange(10))
    assert (narrow.start, narrow.stop, narrow.gather) == (2, 7, None)
    assert narrow.bias.tolist() == [[0.0, 0.0, 0.0, inf, 0.0]]
    assert (wide.start, wide.stop, wide.gather.tolist(), wide.bias.tolist()) == (1, 10, [1, 9], [[0.5, 0.25]])
    exact = region_groups.key_windows(groups[:1], torch.tensor([2, 3, 4, 6, 0, 1, 5, 7, 8, 9]))[0]
    assert (exact.start, exact.stop, exact.gather, exact.bias) == (0, 4, None, None)  # no key it would not read
    with pytest.raises(ValueError, match="2 region masks and 1 weights must match"):
        region_groups.query_groups(torch.ones(2, 4), [1.0])
    spans = [torch.tensor([1]), torch.tensor([2]), torch.tensor([3])]
    assert region_groups.key_order(torch.tensor([0]), spans).tolist() == [1, 2, 0, 3]  # two regions, base, the third
