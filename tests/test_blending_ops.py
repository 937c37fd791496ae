"""ops.blending on hand-made tensors: latent blend numbers, shape errors, paste-back, schedules."""
import math

import pytest
import torch

from harness import pack_import

ops = pack_import("nodes.ops.blending")


def half_mask(h=64, w=64, cols=32):
    mask = torch.zeros(1, h, w)
    mask[:, :, :cols] = 1.0
    return mask


def test_latent_blend_numbers_on_hand_made_latents():
    a, b = torch.zeros(1, 4, 8, 8), torch.full((1, 4, 8, 8), 2.0)
    mask = half_mask(cols=20)  # cells 0,1 fully covered, cell 2 half (16..23 -> 4 of 8 px), rest empty
    out = ops.blend_latent_dicts({"samples": a}, {"samples": b}, mask)["samples"]
    assert torch.equal(out[..., :2], b[..., :2])
    assert torch.allclose(out[..., 2], torch.full_like(out[..., 2], 1.0))  # half covered: half way
    assert torch.equal(out[..., 3:], a[..., 3:])
    assert a.abs().max() == 0 and b.min() == 2.0  # inputs untouched


def test_latent_blend_feathers_in_latent_space_and_keeps_far_cells_exact():
    a, b = torch.zeros(1, 4, 8, 16), torch.ones(1, 4, 8, 16)
    out = ops.blend_latent_dicts({"samples": a}, {"samples": b}, half_mask(64, 128, 64), feather_px=32.0)["samples"][0, 0, 0]
    # centred 4-cell ramp around the edge between cells 7 and 8: far cells exact, ramp monotonic
    assert torch.equal(out[:5], torch.ones(5)) and torch.equal(out[11:], torch.zeros(5))
    assert bool((out[:-1] >= out[1:]).all()) and 0 < out[8] < out[7] < 1
    assert math.isclose(float(out[7] + out[8]), 1.0, abs_tol=1e-6)  # symmetric about the edge


def test_latent_blend_batches_noise_mask_and_batch_index():
    a = {"samples": torch.zeros(1, 4, 8, 8), "noise_mask": torch.ones(1, 1, 64, 64), "batch_index": [5]}
    b = {"samples": torch.ones(3, 4, 8, 8), "batch_index": [0, 1, 2]}
    out = ops.blend_latent_dicts(a, b, half_mask())
    assert out["samples"].shape == (3, 4, 8, 8)
    assert out["batch_index"] == [0, 1, 2]  # a's index has the wrong length for 3 items
    assert out["noise_mask"] is a["noise_mask"]
    assert a["batch_index"] == [5] and "noise_mask" not in b


@pytest.mark.parametrize("a_shape, b_shape, mask_shape", [
    ((1, 4, 8, 8), (1, 4, 8, 12), (1, 64, 64)),
    ((2, 4, 8, 8), (3, 4, 8, 8), (1, 64, 64)),
    ((1, 4, 8, 8), (1, 16, 8, 8), (1, 64, 64)),
    ((2, 4, 8, 8), (2, 4, 8, 8), (3, 64, 64)),
])
def test_latent_blend_mismatched_shapes_name_both(a_shape, b_shape, mask_shape):
    with pytest.raises(ValueError) as error:
        ops.blend_latent_dicts({"samples": torch.zeros(a_shape)}, {"samples": torch.zeros(b_shape)}, torch.ones(mask_shape))
    message = str(error.value)
    assert "shape" in message
    named = [s for s in (a_shape, b_shape, (mask_shape[0], 1, 8, 8)) if str(tuple(s)) in message]
    assert len(named) >= 2, message


def test_latent_blend_rejects_a_non_latent():
    with pytest.raises(ValueError, match=r"\[B,C,h,w\]"):
        ops.blend_latent_dicts({"samples": torch.zeros(4, 8, 8)}, {"samples": torch.zeros(1, 4, 8, 8)}, half_mask())


def test_preserve_is_exact_where_the_weight_is_one_or_zero():
    denoised, source = torch.randn(2, 4, 8, 8) * 100, torch.randn(1, 4, 8, 8) * 100
    weight = ops.latent_weight(half_mask(), 8, 8, feather_px=16.0, direction="outward")
    out = ops.preserve(denoised, source, weight)
    assert torch.equal(out[..., :4], source.expand(2, -1, -1, -1)[..., :4])
    assert torch.equal(out[..., 6:], denoised[..., 6:])
    assert 0 < weight[0, 0, 0, 4] < 1 and weight[0, 0, 0, 6] == 0
    with pytest.raises(ValueError, match=r"\(1, 4, 4, 4\).*\(2, 4, 8, 8\)"):
        ops.preserve(denoised, torch.zeros(1, 4, 4, 4), weight)


@pytest.mark.parametrize("falloff, expected", [
    ("none", [0.0, 1.0, 1.0, 1.0, 0.0]),
    ("linear", [0.0, 1.0, 0.5, 0.0, 0.0]),
    ("cosine", [0.0, 1.0, 0.5, 0.0, 0.0]),
])
def test_schedule_weight(falloff, expected):
    got = [ops.schedule_weight(p, 0.2, 0.6, falloff) for p in (0.1, 0.2, 0.4, 0.6, 0.7)]
    assert got == pytest.approx(expected, abs=1e-9)
    assert ops.schedule_weight(0.3, 0.2, 0.6, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="start <= end"):
        ops.schedule_weight(0.5, 0.8, 0.2, falloff)


def test_paste_back_is_exact_inside_untouched_outside_and_blends_the_band():
    gen = torch.Generator().manual_seed(0)
    result, source = torch.rand(2, 40, 50, 3, generator=gen), torch.rand(1, 40, 50, 3, generator=gen)
    mask = torch.zeros(40, 50)
    mask[10:30, 10:25] = 1.0
    for colour_match in (False, True):
        out = ops.paste_back(result, source, mask, feather_px=5.0, colour_match=colour_match)
        assert out.shape == (2, 40, 50, 3)
        assert (out[:, 10:30, 10:25] - source[:, 10:30, 10:25]).abs().max() == 0
        assert (out[:, :, 30:] - result[:, :, 30:]).abs().max() == 0  # x >= 25 + 5: beyond the band
        assert (out[:, :5] - result[:, :5]).abs().max() == 0
        assert (out[:, 4, 12] - result[:, 4, 12]).abs().max() == 0  # 6 px from the mask: weight 0
        assert (out[:, 5, 12] - result[:, 5, 12]).abs().max() > 0  # 5 px: last pixel of the band
        band = out[:, 20, 26]
        assert (band - result[:, 20, 26]).abs().max() > 0 and (band - source[0, 20, 26]).abs().max() > 0


def test_paste_back_colour_match_moves_the_band_towards_the_source():
    result, source = torch.full((1, 32, 32, 3), 0.2), torch.full((1, 32, 32, 3), 0.8)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    plain = ops.paste_back(result, source, mask, feather_px=6.0)
    matched = ops.paste_back(result, source, mask, feather_px=6.0, colour_match=True)
    band = (slice(None), 5, slice(8, 24))
    assert bool((matched[band] > plain[band]).all())  # closer to the brighter source
    assert torch.equal(matched[:, 0], result[:, 0]) and torch.equal(matched[:, 8:24, 8:24], source[:, 8:24, 8:24])


def test_paste_back_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 32, 32, 4\).*\(1, 32, 32, 3\)"):
        ops.paste_back(torch.zeros(1, 32, 32, 4), torch.zeros(1, 32, 32, 3), torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match=r"batch sizes differ"):
        ops.paste_back(torch.zeros(2, 32, 32, 3), torch.zeros(3, 32, 32, 3), torch.ones(1, 32, 32))


def test_paste_back_scales_a_vae_rounded_result_to_the_source_size():
    """An 83x61 photo comes back from the VAE as 80x56: the output has the photo's size, its kept pixels exact."""
    source = torch.rand(1, 83, 61, 3)
    mask = torch.zeros(1, 83, 61)
    mask[:, 20:60, 15:45] = 1.0
    result = torch.full((1, 80, 56, 3), 0.25)
    out = ops.paste_back(result, source, mask)
    assert out.shape == source.shape
    inside = mask[0] >= 1
    assert torch.equal(out[0][inside], source[0][inside])
    assert torch.allclose(out[0][~inside], torch.tensor(0.25))  # a flat result stays flat when scaled


def test_preserve_at_an_interior_strength_and_its_errors_name_the_shapes_and_the_fix():
    denoised, source = torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 8.0)
    weight = torch.tensor([[[[1.0, 0.5], [0.25, 0.0]]]])
    expected = torch.tensor([[4.0, 2.0], [1.0, 0.0]]).expand(1, 4, 2, 2)  # 8 * weight * 0.5
    assert torch.equal(ops.preserve(denoised, source, weight, 0.5), expected)
    assert torch.equal(ops.preserve(denoised, source, weight), 8 * weight.expand(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"the preserve mask is \(3, 2\) on the latent grid but the sampled latent "
                                         r"is \(2, 2\); connect the same latent to SCPreserveRegion and the sampler"):
        ops.preserve(denoised, source, torch.ones(1, 1, 3, 2))
    with pytest.raises(ValueError, match=r"the source latent has shape \(1, 4, 2, 3\) but the sampled latent has "
                                         r"shape \(1, 4, 2, 2\); give SCPreserveRegion the latent of the image being "
                                         r"sampled \(same size, e.g. VAE Encode of the same image\)"):
        ops.preserve(denoised, torch.zeros(1, 4, 2, 3), weight)
    frames = denoised.unsqueeze(2)  # Qwen-Image [B,C,T,h,w]: a mask and source without the frame axis
    assert torch.equal(ops.preserve(frames, source, weight, 0.5), expected.unsqueeze(2))
    with pytest.raises(ValueError, match=r"the preserve mask is \(3, 2\) on the latent grid but the sampled latent "
                                         r"is \(2, 2\);"):
        ops.preserve(frames, source, torch.ones(1, 1, 3, 2))
    with pytest.raises(ValueError, match=r"sampled latent has shape \(2, 4, 2, 2\) and source latent has shape \(3, "):
        ops.preserve(torch.zeros(2, 4, 2, 2), torch.zeros(3, 4, 2, 2), weight)
    with pytest.raises(ValueError, match=r"sampled latent has shape \(2, 4, 2, 2\) and mask has shape \(3, "):
        ops.preserve(torch.zeros(2, 4, 2, 2), source, torch.ones(3, 1, 2, 2))
