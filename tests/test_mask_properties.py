"""Properties of the mask ops on random shapes (hypothesis), including agreement with scipy."""
import numpy as np
import torch
from harness import pack_import
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

masks = pack_import("nodes.ops.masks")

# derandomize: the same 25 examples on every run (drawn from a seed of each test's name), so the suite
# cannot fail by chance on an example no earlier run drew, and no example database is read or kept.
# To search wider, run with more examples and derandomize=False.
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


@st.composite
def shapes(draw, convex: bool = False):
    """A [B,H,W] mask of ellipses (convex) or ellipses plus rectangles, soft values mixed in."""
    b = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = torch.zeros(b, h, w)
    for i in range(b):
        cy, cx = draw(st.floats(-5, h + 5)), draw(st.floats(-5, w + 5))
        ry, rx = draw(st.floats(0.5, 25)), draw(st.floats(0.5, 25))
        out[i] = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()
        if not convex and draw(st.booleans()):
            y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            out[i, y0 : y0 + draw(st.integers(1, 12)), x0 : x0 + draw(st.integers(1, 12))] = 1
    if not convex and draw(st.booleans()):
        out = out * draw(st.floats(0.3, 1.0))  # soft: values below 0.5 are outside the shape
    return out


GAUSSIAN_K = 4.5  # the gaussian falloff is exp(-k (1 - t)^2), rescaled to run from 0 to 1


def reference_profile(signed: np.ndarray, radius: float, direction: str, falloff: str) -> np.ndarray:
    """The documented ramp, written here (not the pack's feather_profile): position t = s/r (inward),
    1 + s/r (outward) or 0.5 + s/r (centred), clamped to [0, 1], through the falloff."""
    t = np.clip(signed / radius + {"inward": 0.0, "outward": 1.0, "centred": 0.5}[direction], 0.0, 1.0)
    if falloff == "linear":
        return t
    if falloff == "smoothstep":
        return t * t * (3 - 2 * t)
    floor = np.exp(-GAUSSIAN_K)
    return (np.exp(-GAUSSIAN_K * (1 - t) ** 2) - floor) / (1 - floor)


def scipy_feather(m: torch.Tensor, radius: float, direction: str, falloff: str) -> torch.Tensor:
    """Signed distance to the edge from scipy's exact Euclidean distance transform (the edge lies half a
    pixel from each side's pixel centres), through the documented ramp."""
    out = torch.empty_like(m)
    for i, item in enumerate(m.numpy()):
        lab = item >= 0.5
        if lab.all() or not lab.any():  # no edge: the pack keeps the label
            out[i] = torch.from_numpy(lab.astype(np.float32))
            continue
        signed = np.where(lab, ndimage.distance_transform_edt(lab) - 0.5, 0.5 - ndimage.distance_transform_edt(~lab))
        out[i] = torch.from_numpy(reference_profile(signed, radius, direction, falloff).astype(np.float32))
    return out


@SETTINGS
@given(shapes(), st.integers(0, 30), st.sampled_from(masks.DIRECTIONS), st.sampled_from(masks.FALLOFFS))
def test_feather_matches_scipy_and_keeps_input(m, radius, direction, falloff):
    before = m.clone()
    out = masks.feather(m, radius, direction, falloff)
    assert torch.equal(m, before)
    assert out.shape == m.shape and out.min() >= 0 and out.max() <= 1
    if radius == 0:
        assert torch.equal(out, m)
    else:
        assert (out - scipy_feather(m, radius, direction, falloff)).abs().max() <= 0.02


@SETTINGS
@given(shapes(), st.integers(-15, 15))
def test_grow_is_disk_dilation_and_keeps_input(m, pixels):
    before = m.clone()
    out = masks.grow(m, pixels)
    assert torch.equal(m, before)
    if pixels == 0:
        assert torch.equal(out, m)
        return
    n = abs(pixels)
    disk = np.hypot(*np.mgrid[-n : n + 1, -n : n + 1]) <= n
    for i, item in enumerate(m.numpy() >= 0.5):
        ref = ndimage.binary_dilation(item, disk) if pixels > 0 else ~ndimage.binary_dilation(~item, disk)
        assert np.array_equal(out[i].numpy().astype(bool), ref)


@SETTINGS
@given(shapes(convex=True), st.integers(1, 12))
def test_grow_then_shrink_contains_original(m, pixels):
    closed = masks.grow(masks.grow(m, pixels), -pixels)
    assert closed.min() >= 0 and closed.max() <= 1
    assert torch.all(closed >= (m >= 0.5).float())


@SETTINGS
@given(shapes(), shapes(), st.sampled_from(masks.COMBINE_OPS))
def test_combine_in_range_and_keeps_inputs(a, b, op):
    b = b[:1]  # batch 1 broadcasts against any batch
    before_a, before_b = a.clone(), b.clone()
    out = masks.combine(a, b, op)
    assert torch.equal(a, before_a) and torch.equal(b, before_b)
    assert out.shape == a.shape and out.min() >= 0 and out.max() <= 1


@SETTINGS
@given(shapes(), st.integers(0, 20), st.booleans(), st.sampled_from([0, 24, 48]))
def test_crop_uncrop_untouched_is_exact(m, padding, round_to_8, target):
    image = torch.rand(m.shape[0], m.shape[1], m.shape[2], 3)
    before_i, before_m = image.clone(), m.clone()
    crop, cmask, info = masks.crop_to_mask(image, m, padding, round_to_8, target)
    assert torch.equal(image, before_i) and torch.equal(m, before_m)
    left, top, right, bottom = info.box
    assert 0 <= left < right <= image.shape[2] and 0 <= top < bottom <= image.shape[1]
    assert torch.all(m[:, :top] == 0) and torch.all(m[:, bottom:] == 0)
    assert torch.all(m[:, :, :left] == 0) and torch.all(m[:, :, right:] == 0)
    if target == 0:
        assert torch.equal(masks.uncrop(image, crop, info), image)
        assert torch.equal(masks.uncrop(image, crop, info, torch.ones_like(cmask)), image)
    else:
        out = masks.uncrop(image, crop, info)
        assert torch.equal(out[:, :top], image[:, :top]) and torch.equal(out[:, :, right:], image[:, :, right:])


@SETTINGS
@given(shapes(), st.floats(0.05, 0.95), st.booleans(), st.integers(0, 30))
def test_cleanup_binary_and_keeps_input(m, threshold, fill, min_px):
    before = m.clone()
    out = masks.cleanup(m, threshold, fill, min_px)
    assert torch.equal(m, before)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    if fill:
        assert torch.all(out >= (m >= threshold).float()) or min_px > 0
