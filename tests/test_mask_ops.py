"""Exact numbers for the mask ops on small hand-made masks (edges, borders, sizes, batches)."""
import math

import pytest
import torch
from harness import pack_import

masks = pack_import("nodes.ops.masks")


def square(size: int = 15, lo: int = 3, hi: int = 12) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[:, lo:hi, lo:hi] = 1.0
    return m


def test_feather_inward_square_rings():
    out = masks.feather(square(), 2, "inward", "linear")[0]
    # ring at distance d (1, 2, 3) from the outside: s = d - 0.5, t = s / 2
    assert out[3, 3:12].tolist() == [0.25] * 9
    assert out[4, 4:11].tolist() == [0.75] * 7
    assert out[5:10, 5:10].eq(1).all()
    assert out[2].eq(0).all() and out[:, 12].eq(0).all()
    # symmetric: bottom and right edge rings get the same values as top and left
    assert torch.equal(out, out.flip(0)) and torch.equal(out, out.flip(1)) and torch.equal(out, out.T)


def test_feather_outward_and_centred_square():
    out = masks.feather(square(), 4, "outward", "linear")[0]
    assert out[3:12, 3:12].eq(1).all()
    assert out[2, 3:12].tolist() == [0.875] * 9  # d=1: 1 - 0.5/4
    assert out[1, 7].item() == 0.625 and out[0, 7].item() == 0.375
    assert out[3:12, 12].tolist() == [0.875] * 9 and out[3:12, 14].tolist() == [0.375] * 9  # right edge
    assert out[2, 2].item() == pytest.approx(1 - (math.sqrt(2) - 0.5) / 4)  # diagonal: Euclidean
    cen = masks.feather(square(), 4, "centred", "linear")[0]
    assert cen[3, 7].item() == 0.625 and cen[2, 7].item() == 0.375  # 0.5 +- 0.5/4
    assert cen[1, 7].item() == 0.125 and cen[4, 7].item() == 0.875
    assert cen[0, 7].item() == 0.0 and cen[5, 7].item() == 1.0


@pytest.mark.parametrize("flip", [False, True])
def test_feather_edge_indices_at_image_border(flip):
    # mask touching the right (or left) border: the border is not an edge, ramp only on the inner side
    m = torch.zeros(5, 10)
    m[:, 7:] = 1
    if flip:
        m = m.flip(1)
    out = masks.feather(m, 4, "outward", "linear")[0]
    row = [0, 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1]
    expected = torch.tensor(row).flip(0) if flip else torch.tensor(row)
    for y in range(5):
        assert torch.equal(out[y], expected), out[y]
    # same for top/bottom: transpose
    out_t = masks.feather(m.T.contiguous(), 4, "outward", "linear")[0]
    assert torch.equal(out_t, out.T)


def test_feather_falloffs_exact():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert masks.feather_profile(t * 4, 4, "inward", "linear").tolist() == t.tolist()
    assert masks.feather_profile(t * 4, 4, "inward", "smoothstep").tolist() == [0.0, 0.15625, 0.5, 1.0]
    g = masks.feather_profile(t * 4, 4, "inward", "gaussian")
    floor = math.exp(-4.5)
    assert g[0].item() == 0 and g[-1].item() == 1
    assert g[2].item() == pytest.approx((math.exp(-4.5 * 0.25) - floor) / (1 - floor), abs=1e-6)


def test_feather_radius_zero_empty_full_and_huge():
    soft = torch.full((2, 6, 7), 0.3)
    soft[:, 2:4, 2:5] = 0.8
    assert torch.equal(masks.feather(soft, 0, "centred", "gaussian"), soft)
    assert masks.feather(torch.zeros(1, 6, 7), 5).eq(0).all()
    assert masks.feather(torch.ones(1, 6, 7), 5).eq(1).all()
    dot = torch.zeros(9, 9)
    dot[4, 4] = 1
    out = masks.feather(dot, 100, "outward", "linear")  # radius far larger than the image
    assert out.shape == (1, 9, 9)
    assert out[0, 4, 8].item() == pytest.approx(1 - 3.5 / 100)
    assert out[0, 0, 0].item() == pytest.approx(1 - (math.sqrt(32) - 0.5) / 100)
    assert masks.feather(dot, 100, "inward", "linear")[0, 4, 4].item() == pytest.approx(0.5 / 100)


def test_feather_hw_input_and_bad_args():
    assert masks.feather(square()[0], 2).shape == (1, 15, 15)
    with pytest.raises(ValueError, match="direction"):
        masks.feather(square(), 2, "sideways")
    with pytest.raises(ValueError, match="falloff"):
        masks.feather(square(), 2, "inward", "cubic")
    with pytest.raises(ValueError, match=r"\[B,H,W\]"):
        masks.feather(torch.zeros(1, 2, 3, 4, 5), 2)


def test_grow_single_pixel_is_digital_disk_and_shrinks_back():
    dot = torch.zeros(1, 9, 9)
    dot[0, 4, 4] = 1
    grown = masks.grow(dot, 2)[0]
    yy, xx = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    disk = ((yy - 4) ** 2 + (xx - 4) ** 2 <= 4).float()
    assert torch.equal(grown, disk) and int(grown.sum()) == 13
    assert torch.equal(masks.grow(grown, -2)[0], dot[0])
    # corner pixel: the disk is cut by the frame, indices exact at both ends
    corner = torch.zeros(1, 5, 6)
    corner[0, 4, 5] = 1
    g = masks.grow(corner, 1)[0]
    assert g.nonzero().tolist() == [[3, 5], [4, 4], [4, 5]]


def test_grow_zero_empty_full_and_shrink_from_border():
    soft = torch.rand(1, 5, 5)
    assert torch.equal(masks.grow(soft, 0), soft)
    assert masks.grow(torch.zeros(2, 5, 5), 3).eq(0).all()
    assert masks.grow(torch.ones(2, 5, 5), -3).eq(1).all()
    m = torch.zeros(1, 6, 6)
    m[0, :, :4] = 1  # touches the left border: shrinking only moves the right edge
    assert torch.equal(masks.grow(m, -1)[0, 0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert masks.grow(m, 50).eq(1).all()


def test_combine_ops_broadcast_and_resize():
    a = torch.tensor([[[0.0, 0.2, 0.7, 1.0]]])
    b = torch.tensor([[[0.5, 0.5, 0.5, 0.5]]])
    assert masks.combine(a, b, "union")[0, 0].tolist() == pytest.approx([0.5, 0.5, 0.7, 1.0])
    assert masks.combine(a, b, "intersection")[0, 0].tolist() == pytest.approx([0.0, 0.2, 0.5, 0.5])
    assert masks.combine(a, b, "difference")[0, 0].tolist() == pytest.approx([0, 0, 0.2, 0.5])
    assert masks.combine(a, b, "xor")[0, 0].tolist() == pytest.approx([0.5, 0.3, 0.2, 0.5])
    assert masks.combine(a.expand(3, 1, 4), b, "union").shape == (3, 1, 4)
    big = masks.combine(torch.zeros(1, 8, 8), torch.ones(1, 4, 4), "union")
    assert big.shape == (1, 8, 8) and big.eq(1).all()
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(3, 4, 4\)"):
        masks.combine(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4), "union")
    with pytest.raises(ValueError, match="union"):
        masks.combine(a, b, "plus")


def test_cleanup_fills_holes_and_drops_islands():
    m = torch.zeros(1, 12, 12)
    m[0, 1:8, 1:8] = 0.9
    m[0, 3:5, 3:5] = 0.0  # hole
    m[0, 10, 10] = 1.0  # 1-px island
    m[0, 9:11, 1:3] = 0.6  # 4-px island
    out = masks.cleanup(m, 0.5, True, 3)
    expected = torch.zeros(1, 12, 12)
    expected[0, 1:8, 1:8] = 1
    expected[0, 9:11, 1:3] = 1
    assert torch.equal(out, expected)
    kept = masks.cleanup(m, 0.5, False, 0)
    assert torch.equal(kept, (m >= 0.5).float())
    assert masks.cleanup(m, 0.95, True, 0).sum() == 1  # only the 1.0 pixel passes


def test_mask_box_and_crop_rules():
    m = torch.zeros(2, 40, 50)
    m[0, 10:12, 20:23] = 1
    m[1, 15, 30] = 0.2  # union over the batch
    assert masks.mask_box(m) == (20, 10, 31, 16)
    assert masks.mask_box(m, padding=2) == (18, 8, 33, 18)
    assert masks.mask_box(m, padding=100) == (0, 0, 50, 40)
    left, top, right, bottom = masks.mask_box(m, 0, 8)
    assert (right - left, bottom - top) == (16, 8) and left <= 20 and right >= 31 and top <= 10 and bottom >= 16
    edge = torch.zeros(1, 40, 50)
    edge[0, 39, 49] = 1  # box pushed inside at the bottom-right corner
    assert masks.mask_box(edge, 0, 8) == (42, 32, 50, 40)
    assert masks.mask_box(torch.zeros(1, 40, 50), 4, 8) == (0, 0, 50, 40)
    image = torch.rand(2, 40, 50, 3)
    crop, cmask, info = masks.crop_to_mask(image, m, 2, False, 0)
    assert crop.shape == (2, 10, 15, 3) and cmask.shape == (2, 10, 15)
    assert torch.equal(crop, image[:, 8:18, 18:33]) and info.box == (18, 8, 33, 18)
    assert info.original_size == (40, 50) and info.crop_size == info.output_size == (10, 15)
    crop, cmask, info = masks.crop_to_mask(image, m, 2, True, 64)
    assert crop.shape[1:3] == info.output_size and max(info.output_size) == 64
    assert all(n % 8 == 0 for n in info.output_size)


def test_crop_mask_resized_to_image_and_batch_error():
    image = torch.rand(1, 40, 40, 3)
    small = torch.zeros(1, 10, 10)
    small[0, 5:, 5:] = 1
    crop, _, info = masks.crop_to_mask(image, small, 0, False, 0)  # bilinear x4
    assert info.box[2:] == (40, 40) and 17 <= info.box[0] <= 19
    with pytest.raises(ValueError, match="batch"):
        masks.crop_to_mask(torch.rand(2, 8, 8, 3), torch.ones(3, 8, 8), 0, False, 0)


def test_uncrop_exact_roundtrip_and_blend():
    image = torch.rand(2, 30, 40, 3)
    m = torch.zeros(1, 30, 40)
    m[0, 5:12, 7:20] = 1
    crop, cmask, info = masks.crop_to_mask(image, m, 3, True, 0)
    assert torch.equal(masks.uncrop(image, crop, info), image)
    assert torch.equal(masks.uncrop(image, crop, info, torch.ones_like(cmask)), image)
    white = torch.ones_like(crop)
    out = masks.uncrop(image, white, info, cmask)
    left, top, right, bottom = info.box
    assert torch.equal(out[:, 5:12, 7:20], torch.ones(2, 7, 13, 3))
    outside = torch.ones(30, 40, dtype=torch.bool)
    outside[5:12, 7:20] = False
    assert torch.equal(out[:, outside], image[:, outside])
    half = masks.uncrop(image, white, info, torch.full_like(cmask, 0.5))
    assert torch.allclose(half[:, top:bottom, left:right], (image[:, top:bottom, left:right] + 1) / 2)
    with pytest.raises(ValueError, match="same image"):
        masks.uncrop(image[:, :20], crop, info)


def test_uncrop_resized_crop_goes_back_to_box():
    image = torch.rand(1, 32, 32, 3)
    m = torch.zeros(1, 32, 32)
    m[0, 8:24, 8:24] = 1
    crop, _, info = masks.crop_to_mask(image, m, 0, True, 64)
    assert crop.shape[1:3] == (64, 64)
    out = masks.uncrop(image, torch.zeros_like(crop), info)
    assert out[0, 8:24, 8:24].eq(0).all() and torch.equal(out[0, :8], image[0, :8])


def test_mask_to_latent_area():
    m = torch.zeros(16, 16)
    m[:, :8] = 1
    m[:4, 8:12] = 1  # a quarter of the top-right 8x8 cell
    out = masks.mask_to_latent(m, 2, 2)
    assert out.tolist() == [[[1.0, 0.25], [1.0, 0.0]]]
    assert masks.mask_to_latent(torch.ones(3, 10, 7), 4, 3).eq(1).all()
    with pytest.raises(ValueError):
        masks.mask_to_latent(m, 0, 2)


# ---- cases mutation testing (make mutate) found unpinned: thresholds, defaults, dtypes, error texts


def test_feather_and_cleanup_count_a_pixel_at_the_threshold_as_inside():
    m = torch.zeros(1, 9, 9)
    m[0, 2:7, 2:7] = 0.5  # exactly the shape threshold
    assert masks.feather(m, 2, "inward", "linear")[0, 4, 4].item() == 1.0
    assert torch.equal(masks.grow(m, 1), masks.grow((m > 0).float(), 1))
    assert torch.equal(masks.cleanup(m, 0.5, False, 0), (m > 0).float())
    assert masks.feather(m.double(), 2).dtype == torch.float64  # the mask's dtype is kept


def test_feather_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="use one of linear, smoothstep, gaussian"):
        masks.feather(square(), 2, "inward", "cubic")
    with pytest.raises(ValueError, match="use one of inward, outward, centred"):
        masks.feather(square(), 2, "sideways")
    with pytest.raises(ValueError, match=r"radius must be >= 0, got -1; use grow with a negative value to shrink"):
        masks.feather(square(), -1)
    t = torch.tensor([1.0])
    with pytest.raises(ValueError, match="unknown falloff 'cubic'; use one of linear, smoothstep, gaussian"):
        masks.feather_profile(t, 4, "inward", "cubic")
    with pytest.raises(ValueError, match="unknown direction 'up'; use one of inward, outward, centred"):
        masks.feather_profile(t, 4, "up", "linear")


def test_combine_clamps_difference_to_one_and_names_its_inputs_in_errors():
    assert masks.combine(torch.full((1, 2, 2), 2.0), torch.zeros(1, 2, 2), "difference").eq(1).all()
    with pytest.raises(ValueError, match=r"mask_a has shape \(2, 4, 4\) and mask_b has shape \(3, 4, 4\)"):
        masks.combine(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4), "union")
    with pytest.raises(ValueError, match=r"^mask_a must have shape \[B,H,W\]"):
        masks.combine(torch.zeros(4), torch.zeros(1, 2, 2), "union")
    with pytest.raises(ValueError, match=r"^mask_b must have shape \[B,H,W\]"):
        masks.combine(torch.zeros(1, 2, 2), torch.zeros(4), "union")
    with pytest.raises(ValueError, match="unknown combine op 'plus'; use one of union, intersection, difference, xor"):
        masks.combine(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), "plus")


def test_cleanup_defaults_fill_holes_only_and_islands_are_eight_connected():
    m = torch.zeros(1, 12, 12)
    m[0, 1:6, 1:6] = 1
    m[0, 3, 3] = 0  # hole
    m[0, 9, 9] = m[0, 10, 10] = 1  # one island of 2 px touching at a corner
    filled = m.clone()
    filled[0, 3, 3] = 1
    assert torch.equal(masks.cleanup(m), filled)  # defaults: threshold 0.5, fill holes, keep every island
    assert torch.equal(masks.cleanup(m, 0.5, True, 0), filled)
    assert torch.equal(masks.cleanup(m, 0.5, True, 2), filled)  # the diagonal pair is one island of exactly 2
    island_gone = filled.clone()
    island_gone[0, 9:11, 9:11] = 0
    assert torch.equal(masks.cleanup(m, 0.5, True, 3), island_gone)
    assert masks.cleanup(m.double()).dtype == torch.float64


def test_mask_box_centres_the_widening():
    m = torch.zeros(1, 40, 50)
    m[0, 10:16, 20:31] = 1  # 11 x 6 px
    assert masks.mask_box(m, 0, 8) == (18, 9, 34, 17)  # 11 -> 16 (2 left, 3 right), 6 -> 8 (1 each side)
    assert masks.mask_box(m, 0, 2) == (20, 10, 32, 16)
    assert masks.mask_box(m, 0, 1) == (20, 10, 31, 16)


def test_crop_to_mask_defaults_rounding_and_tiny_targets():
    image = torch.rand(1, 80, 90, 3)
    m = torch.zeros(1, 80, 90)
    m[0, 40:46, 50:61] = 1
    # defaults: padding 32 (cut by the frame on the right), sides widened to multiples of 8, no resize
    assert masks.crop_to_mask(image, m)[2] == masks.CropInfo((18, 7, 90, 79), (80, 90), (72, 72), (72, 72))
    assert masks.crop_to_mask(image, m, 2, True, 0)[2].box == (48, 35, 64, 51)  # 15 x 10 px -> 16 x 16
    assert masks.crop_to_mask(image, m, 2, False, 0)[2].box == (48, 38, 63, 48)
    assert masks.crop_to_mask(image, m, 2, False, -1)[2].output_size == (10, 15)  # <= 0: no resize
    assert masks.crop_to_mask(image, m, 2, False, 1)[2].output_size == (1, 1)
    assert masks.crop_to_mask(image, m, 2, True, 4)[2].output_size == (8, 8)


def test_uncrop_errors_name_the_input_and_mixed_dtypes_paste_into_a_contiguous_original():
    image = torch.rand(2, 30, 40, 3)
    m = torch.zeros(1, 30, 40)
    m[0, 5:12, 7:20] = 1
    crop, cmask, info = masks.crop_to_mask(image, m, 3, True, 0)
    with pytest.raises(ValueError, match=r"original image has size \(20, 40\) but the crop was taken from a 30x40"):
        masks.uncrop(image[:, :20], crop, info)
    with pytest.raises(ValueError, match=r"crop has 4 channels and the original 3; convert both to .* count \(RGB\)"):
        masks.uncrop(image, torch.rand(*crop.shape[:3], 4), info)
    with pytest.raises(ValueError, match=r"^original must have shape \[B,H,W,C\]"):
        masks.uncrop(torch.zeros(4), crop, info)
    with pytest.raises(ValueError, match=r"^crop must have shape \[B,H,W,C\]"):
        masks.uncrop(image, torch.zeros(4), info)
    with pytest.raises(ValueError, match=r"original has shape \(2, 30, 40, 3\) and crop has shape \(3, "):
        masks.uncrop(image, crop[:1].expand(3, -1, -1, -1), info)
    with pytest.raises(ValueError, match=r"original has shape \(2, 30, 40, 3\) and mask has shape \(3, "):
        masks.uncrop(image, crop, info, cmask[:1].expand(3, -1, -1))
    strided = image.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # same values, not contiguous
    out = masks.uncrop(strided, crop.double(), info, cmask.double())
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, image)


def test_mask_to_latent_of_one_cell_and_zero_sizes():
    m = torch.zeros(1, 4, 6)
    m[0, :, :3] = 1
    assert masks.mask_to_latent(m, 1, 1).tolist() == [[[0.5]]]
    assert masks.mask_to_latent(m, 1, 2).tolist() == [[[1.0, 0.0]]]
    for h, w in ((0, 2), (2, 0)):
        with pytest.raises(ValueError, match=f"latent size must be positive, got {h}x{w}"):
            masks.mask_to_latent(m, h, w)


def test_radius_of_128_needs_wider_integers_and_stays_exact():
    # reach 128: squared distances up to 129^2 + 128^2 = 33025 no longer fit int16, the per-column
    # distances (cap 129) no longer fit int8, and rows go in 256 px segments
    dot = torch.zeros(1, 259, 300)
    dot[0, 129, 140] = 1
    yy, xx = torch.meshgrid(torch.arange(259.0), torch.arange(300.0), indexing="ij")
    distance = ((yy - 129) ** 2 + (xx - 140) ** 2).sqrt()
    assert torch.equal(masks.grow(dot, 128)[0], (distance <= 128).float())
    expected = (1 - (distance - 0.5) / 128).clamp(0, 1)
    expected[129, 140] = 1
    assert torch.allclose(masks.feather(dot, 128, "outward", "linear")[0], expected, atol=1e-6)


def test_feather_of_an_edge_between_the_last_two_rows_of_an_unpadded_height():
    m = torch.zeros(1, 16, 10)  # a height of whole 8 px blocks: no padding rows below
    m[0, 15] = 1
    out = masks.feather(m, 2, "inward", "linear")[0]
    assert out[15].tolist() == [0.25] * 10 and out[:15].eq(0).all()
    assert torch.equal(masks.feather(m.transpose(1, 2).contiguous(), 2, "inward", "linear")[0], out.T)  # last column
