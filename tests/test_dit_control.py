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
