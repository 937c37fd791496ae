"""The shape rules every op shares (ops/shapes.py), on hand-computed numbers: mask and image forms,
batch broadcasting, bilinear resizing, 8-bit conversion."""
import numpy as np
import pytest
import torch
from harness import pack_import

shapes = pack_import("nodes.ops.shapes")


def test_mask_forms_become_batch_height_width_floats_without_copies():
    flat = torch.rand(5, 6)
    assert shapes.as_mask(flat).shape == (1, 5, 6)
    channel = torch.rand(2, 1, 5, 6)
    assert torch.equal(shapes.as_mask(channel), channel[:, 0])
    batch = torch.rand(2, 5, 6)
    assert shapes.as_mask(batch) is batch  # already right: not copied
    ints = shapes.as_mask(torch.ones(1, 2, 2, dtype=torch.uint8))
    assert ints.dtype == torch.float32 and ints.eq(1).all()
    with pytest.raises(ValueError, match=r"mask must have shape \[B,H,W\] or \[H,W\], got \(2, 3, 5, 6\); convert an "
                       "IMAGE to a MASK"):
        shapes.as_mask(torch.rand(2, 3, 5, 6))
    with pytest.raises(ValueError, match=r"region has an empty size \(1, 0, 6\)"):
        shapes.as_mask(torch.rand(1, 0, 6), "region")
    with pytest.raises(ValueError, match=r"mask has an empty size \(1, 5, 0\)"):
        shapes.as_mask(torch.rand(1, 5, 0))
    with pytest.raises(ValueError, match="mask must be a torch tensor, got list"):
        shapes.as_mask([[0.0]])


def test_image_forms_and_rgb():
    single = torch.rand(4, 5, 3)
    assert torch.equal(shapes.as_image(single)[0], single)
    batch = torch.rand(2, 4, 5, 3)
    assert shapes.as_image(batch) is batch and shapes.as_rgb(batch) is batch
    for bad in (torch.rand(4, 5), torch.rand(1, 0, 5, 3), torch.rand(1, 4, 0, 3)):
        with pytest.raises(ValueError, match=r"photo must have shape \[B,H,W,C\].*Convert Mask to Image"):
            shapes.as_image(bad, "photo")
    with pytest.raises(ValueError, match="image must be a torch tensor, got ndarray"):
        shapes.as_image(np.zeros((1, 2, 2, 3)))
    rgba = torch.rand(1, 4, 5, 4)
    assert torch.equal(shapes.as_rgb(rgba), rgba[..., :3])
    grey = torch.rand(1, 4, 5, 1)
    assert torch.equal(shapes.as_rgb(grey), grey.repeat(1, 1, 1, 3))
    with pytest.raises(ValueError, match=r"image must have 1, 3 or 4 channels, got shape \(1, 4, 5, 2\)"):
        shapes.as_rgb(torch.rand(1, 4, 5, 2))


def test_batches_of_one_broadcast_as_views_and_other_mismatches_are_errors():
    one, three = torch.rand(1, 2, 2), torch.rand(3, 2, 2)
    a, b = shapes.broadcast_batch(one, three)
    assert a.shape == (3, 2, 2) and b is three and a.data_ptr() == one.data_ptr()  # a view, no copy
    b, a = shapes.broadcast_batch(three, one)
    assert a.shape == (3, 2, 2) and b is three
    with pytest.raises(ValueError, match=r"batch sizes differ: image has shape \(2, 2, 2\) and mask has shape "
                       r"\(3, 2, 2\); use the same batch size"):
        shapes.broadcast_batch(torch.rand(2, 2, 2), three, ("image", "mask"))
    assert shapes.match_batch(three, 3) is three
    assert shapes.match_batch(one, 4).shape == (4, 2, 2)
    with pytest.raises(ValueError, match=r"region 2's mask has batch 3 but the latent batch is 2 \(mask shape "
                       r"\(3, 2, 2\)\); use one mask for all latents \(a batch of 1\) or one mask per latent"):
        shapes.match_batch(three, 2, "region 2's mask")
    with pytest.raises(ValueError, match=r"^region mask has batch 3 but the latent batch is 2"):
        shapes.match_batch(three, 2)
    with pytest.raises(ValueError, match=r"the prompt batch is 2 \(prompt shape .*one prompt per prompt"):
        shapes.match_batch(three, 2, "x", "prompt", "prompt")


def test_to_uint8_rounds_to_the_nearest_level_and_clamps():
    values = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.49 / 255, 1.51 / 255, 0.5, 1.0, 2.0])
    out = shapes.to_uint8(values)
    assert out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert out.tolist() == [0, 0, 0, 0, 2, 128, 255, 255]  # round half to even at 0.5 / 255, as torch.round
    assert shapes.to_uint8(torch.rand(2, 3, 4).transpose(0, 2)).flags["C_CONTIGUOUS"]


def bilinear_row(row, width):
    """align_corners=False bilinear samples of a 1-D signal: source x = (i + 0.5) * n / width - 0.5, clamped."""
    n = len(row)
    out = []
    for i in range(width):
        x = min(max((i + 0.5) * n / width - 0.5, 0.0), n - 1)
        left = int(np.floor(x))
        right = min(left + 1, n - 1)
        out.append(row[left] * (1 - (x - left)) + row[right] * (x - left))
    return out


def pil_bilinear(row: torch.Tensor, width: int) -> torch.Tensor:
    """PIL's bilinear resize of a 1-D float signal (a triangle filter widened by the scale when shrinking)."""
    from PIL import Image

    picture = Image.fromarray(row.numpy().astype(np.float32)[None], mode="F")
    return torch.from_numpy(np.asarray(picture.resize((width, 1), Image.BILINEAR))[0].copy())


def test_resize_mask_is_bilinear_clamped_and_a_no_op_at_the_same_size():
    mask = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert shapes.resize_mask(mask, 2, 2) is mask
    up = shapes.resize_mask(mask, 2, 4)  # only the width changes
    assert up.shape == (1, 2, 4)
    assert torch.allclose(up[0, 0], torch.tensor(bilinear_row([0.0, 1.0], 4)))
    tall = shapes.resize_mask(mask, 4, 2)  # only the height changes
    assert torch.allclose(tall[0, :, 0], torch.tensor(bilinear_row([0.0, 1.0], 4)))
    assert shapes.resize_mask(torch.full((1, 3, 3), 1.0), 7, 5).eq(1.0).all()


def test_resize_image_is_bilinear_antialiased_only_when_shrinking():
    image = torch.zeros(1, 2, 2, 3)
    image[:, :, 1] = 1.0  # right column white
    assert shapes.resize_image(image, 2, 2) is image
    wide = shapes.resize_image(image, 2, 4)  # only the width changes: bilinear, no antialias
    assert wide.shape == (1, 2, 4, 3)
    assert torch.allclose(wide[0, 0, :, 1], torch.tensor(bilinear_row([0.0, 1.0], 4)))
    tall = shapes.resize_image(image.transpose(1, 2), 4, 2)  # only the height changes
    assert torch.allclose(tall[0, :, 0, 1], torch.tensor(bilinear_row([0.0, 1.0], 4)))
    row = torch.rand(16, generator=torch.Generator().manual_seed(0))
    narrow = shapes.resize_image(row.view(1, 1, 16, 1).expand(1, 1, 16, 3), 1, 4)  # shrinking 4x: antialiased
    assert torch.allclose(narrow[0, 0, :, 0], pil_bilinear(row, 4), atol=1e-5)
    assert not torch.allclose(narrow[0, 0, :, 0], torch.tensor(bilinear_row(row.tolist(), 4)), atol=1e-2)
    short = shapes.resize_image(row.view(1, 16, 1, 1).expand(1, 16, 2, 3), 4, 2)  # shrinking the height only
    assert torch.allclose(short[0, :, 0, 0], pil_bilinear(row, 4), atol=1e-5)
    assert shapes.resize_image(torch.rand(1, 2, 4, 3), 4, 4).shape == (1, 4, 4, 3)  # height to the old width
    assert shapes.resize_mask(torch.rand(1, 2, 4), 4, 4).shape == (1, 4, 4)
    bright = shapes.resize_image(torch.full((1, 2, 2, 3), 1.0), 3, 3)
    assert bright.max() <= 1.0 and torch.allclose(bright, torch.ones(1, 3, 3, 3))


def test_fit_mask_to_image_resizes_the_mask_and_broadcasts_the_batch():
    image = torch.rand(3, 4, 6, 3)
    mask = torch.tensor([[1.0, 0.0]])  # [H,W] 1x2: left half
    fitted_image, fitted = shapes.fit_mask_to_image(mask, image)
    assert fitted_image is image and fitted.shape == (3, 4, 6)
    expected = torch.tensor(bilinear_row([1.0, 0.0], 6))
    assert torch.allclose(fitted, expected.expand(3, 4, 6))
