"""ops.losses and ops.control_lora on hand-made tensors, against loops written from the textbook.

Fast (no model): the Sobel maps, the masked Sobel loss and its weights, the z0 / eps forms, and the
Control-LoRA split of weight differences with known singular values.
"""
import math

import pytest
import torch

from harness import pack_import

losses = pack_import("nodes.ops.losses")
control_lora = pack_import("nodes.ops.control_lora")

SOBEL_X = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]  # the textbook kernel; ops.losses scales it by 1/8


def reference_sobel(x):
    """``[B,C,2,H,W]`` by loops: (Gx, Gy) / 8 with Gy = Gx transposed, the edge cells repeated."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, 2, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for di in range(3):
                for dj in range(3):
                    cell = x[:, :, min(max(i + di - 1, 0), h - 1), min(max(j + dj - 1, 0), w - 1)].double()
                    out[:, :, 0, i, j] += SOBEL_X[di][dj] / 8 * cell
                    out[:, :, 1, i, j] += SOBEL_X[dj][di] / 8 * cell
    return out


def reference_loss(pred, z0, mask):
    """Weighted mean over cells whose whole 3x3 window (clipped at the image edge) has mask > 0."""
    diff = reference_sobel(pred) - reference_sobel(z0)
    b, c, h, w = z0.shape
    total = count = 0.0
    for n in range(b):
        m = mask[n if mask.shape[0] > 1 else 0, 0].double()
        for i in range(h):
            for j in range(w):
                window = m[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
                if bool((window > 0).all()):
                    total += float(m[i, j] * diff[n, :, :, i, j].square().sum())
                    count += float(m[i, j]) * c * 2
    return total / count if count else 0.0


def test_sobel_equals_the_textbook_loops_on_a_random_batch():
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    out = losses.sobel(x)
    assert out.shape == (2, 3, 2, 5, 7) and out.dtype == x.dtype
    assert torch.allclose(out.double(), reference_sobel(x), atol=1e-6)


def test_sobel_and_the_loss_keep_float64_and_a_float64_mask_does_not_promote_the_loss():
    x = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = losses.sobel(x)
    assert out.dtype == torch.float64 and torch.allclose(out, reference_sobel(x), atol=1e-12)
    mask = torch.ones(1, 1, 4, 5, dtype=torch.float64)
    loss = losses.masked_sobel_loss(x.float(), torch.zeros(1, 2, 4, 5), mask)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_loss(x.float(), torch.zeros(1, 2, 4, 5), mask), rel=1e-5)


def test_the_loss_is_a_weighted_mean_so_a_faint_mask_gives_the_same_value():
    g = torch.Generator().manual_seed(8)
    z0, pred = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
    full = losses.masked_sobel_loss(pred, z0, torch.ones(1, 1, 4, 4)).item()
    assert full > 0  # the faint mask's weights sum to 0.001 * 16 cells * 2 maps = 0.032
    assert losses.masked_sobel_loss(pred, z0, torch.full((1, 1, 4, 4), 0.001)).item() == pytest.approx(full, rel=1e-5)


def test_sobel_needs_a_4d_latent():
    with pytest.raises(ValueError, match=r"sobel needs a \[B,C,H,W\] latent, got shape \(3, 5, 7\)"):
        losses.sobel(torch.zeros(3, 5, 7))


@pytest.mark.parametrize("shared_mask", [False, True])
def test_masked_sobel_loss_equals_the_weighted_loop_with_a_soft_mask(shared_mask):
    g = torch.Generator().manual_seed(1)
    z0, pred = torch.randn(2, 2, 7, 9, generator=g), torch.randn(2, 2, 7, 9, generator=g)
    mask = torch.zeros(1 if shared_mask else 2, 1, 7, 9)
    mask[..., 1:6, 2:8] = 0.5
    mask[..., 2:5, 3:6] = 1.0
    mask[..., 0:3, 0:3] = 0.25  # touches the image edge, which counts as inside
    if not shared_mask:
        mask[1, :, 3:, :] = 0.0
        mask[1, :, 4, 7] = 0.75
    expected = reference_loss(pred, z0, mask)
    assert expected > 0
    assert losses.masked_sobel_loss(pred, z0, mask).item() == pytest.approx(expected, rel=1e-5)


def test_masked_sobel_loss_of_a_known_edge_and_its_gradient_stays_in_the_eroded_mask():
    # a unit step between columns 3 and 4 of one channel: Gx = (1 + 2 + 1) / 8 = 0.5 on columns 3
    # and 4, Gy = 0; the mask's interior is rows 1..4, columns 2..5 (mask rows 0..5, cols 1..6)
    z0 = torch.zeros(1, 2, 6, 8)
    pred = z0.clone()
    pred[:, 0, :, 4:] = 1.0
    mask = torch.zeros(1, 1, 6, 8)
    mask[..., 0:6, 1:7] = 1.0
    interior_cells = 6 * 4  # rows 0..5 (image edge counts as inside) x columns 2..5
    expected = (2 * 6 * 0.5**2) / (interior_cells * 2 * 2)  # 2 columns of 6 cells with 0.25, over C * 2 maps
    assert losses.masked_sobel_loss(pred, z0, mask).item() == pytest.approx(expected, rel=1e-6)
    pred.requires_grad_(True)
    losses.masked_sobel_loss(pred, z0, mask).backward()
    touched = pred.grad[0].abs().sum(0) > 0
    assert touched[:, 1:7].any() and not touched[:, 0].any() and not touched[:, 7].any()


def test_a_mask_thinner_than_the_window_measures_nothing():
    g = torch.Generator().manual_seed(2)
    z0, pred = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:7] = 1.0  # two rows: no cell has its whole window inside
    assert losses.masked_sobel_loss(pred, z0, mask).item() == 0.0
    mask[..., 2:5, 2:7] = 1.0  # three rows: the middle row's inner cells do
    assert losses.masked_sobel_loss(pred, z0, mask).item() == pytest.approx(reference_loss(pred, z0, mask), rel=1e-5)


@pytest.mark.parametrize("pred_shape, mask_shape, message", [
    ((1, 4, 8, 9), (1, 1, 8, 8), r"z0_pred \(1, 4, 8, 9\) and z0 \(1, 4, 8, 8\) must have the same shape"),
    ((1, 4, 8, 8), (1, 8, 8), r"mask must be \[B,1,H,W\] at the latent size \(8, 8\), got \(1, 8, 8\)"),
    ((1, 4, 8, 8), (1, 2, 8, 8), r"mask must be \[B,1,H,W\] at the latent size \(8, 8\), got \(1, 2, 8, 8\)"),
    ((1, 4, 8, 8), (1, 1, 8, 4), r"mask must be \[B,1,H,W\] at the latent size \(8, 8\), got \(1, 1, 8, 4\)"),
    ((1, 4, 8, 8), (1, 1, 4, 8), r"mask must be \[B,1,H,W\] at the latent size \(8, 8\), got \(1, 1, 4, 8\)"),
])
def test_masked_sobel_loss_shape_errors_name_both_shapes(pred_shape, mask_shape, message):
    with pytest.raises(ValueError, match=message):
        losses.masked_sobel_loss(torch.zeros(pred_shape), torch.zeros(1, 4, 8, 8), torch.ones(mask_shape))


def test_a_latent_without_batch_gets_the_latent_error_and_its_size_in_the_mask_error():
    with pytest.raises(ValueError, match=r"sobel needs a \[B,C,H,W\] latent, got shape \(4, 8, 8\)"):
        losses.masked_sobel_loss(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"at the latent size \(8, 8\), got \(1, 1, 4, 4\)"):
        losses.masked_sobel_loss(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8), torch.ones(1, 1, 4, 4))


def test_z0_and_eps_forms_per_sample_by_hand():
    x_t = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2)
    eps = torch.tensor([0.5, -1.0, 2.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2)
    sigma = torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)  # another dtype: the result keeps the latent's
    z0 = losses.z0_from_eps(x_t, eps, sigma)
    assert z0.dtype == torch.float32 and z0.shape == (3, 2, 2, 2)
    assert z0[:, 0, 0, 0].tolist() == [1 - 2 * 0.5, 2 + 0.5 * 1, 3 - 4 * 2]
    back = losses.eps_from_z0(x_t, z0, sigma)
    assert back.dtype == torch.float32 and back.shape == (3, 2, 2, 2)
    assert back[:, 1, 1, 1].tolist() == [0.5, -1.0, 2.0]
    assert losses.eps_from_z0(x_t, torch.zeros_like(x_t), 2.0)[:, 0, 0, 0].tolist() == [0.5, 1.0, 1.5]
    alpha_bar = torch.tensor([0.64, 0.36, 0.25], dtype=torch.float64)  # sqrt: 0.8, 0.6, 0.5
    vp = losses.z0_from_eps_vp(x_t, eps, alpha_bar)
    assert vp.dtype == torch.float32 and vp.shape == (3, 2, 2, 2)
    expected = [(1 - 0.6 * 0.5) / 0.8, (2 + 0.8 * 1) / 0.6, (3 - math.sqrt(0.75) * 2) / 0.5]
    assert vp[:, 0, 1, 0].tolist() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------ Control-LoRA


def orthonormal(n, k, seed):
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def known_difference(out, inp, singular, seed):
    """``U diag(s) V^T`` with orthonormal U, V: its singular values are exactly ``singular``."""
    k = len(singular)
    return orthonormal(out, k, seed) @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ orthonormal(inp, k, seed + 1).T


def best_rank(matrix, r):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :r] @ torch.diag(s[:r]) @ vh[:r]


def test_control_lora_keeps_the_best_low_rank_difference_and_reports_the_dropped_share():
    base_linear = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    linear_diff = known_difference(6, 5, [3.0, 2.0, 1.0, 0.5], seed=10)  # rank 2 drops sqrt(1.25 / 14.25)
    base_conv = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(4))
    conv_diff = known_difference(4, 18, [4.0, 1.0], seed=20)  # rank 2 keeps everything
    unet = {"in.0.weight": base_linear, "in.1.weight": base_conv, "in.1.bias": torch.zeros(4),
            "same.weight": base_linear.clone(), "norm.scale": torch.ones(3, 3)}
    control = {"in.0.weight": base_linear + linear_diff.float(), "in.1.weight": base_conv + conv_diff.float().view(4, 2, 3, 3),
               "in.1.bias": torch.tensor([0.0, 1.0, 0.0, 0.0]), "same.weight": base_linear.clone(),
               "norm.scale": torch.full((3, 3), 2.0)}
    weights, worst = control_lora.control_lora_weights(control, unet, 2, ("hint",))
    assert worst == pytest.approx(math.sqrt(1.25 / 14.25), rel=1e-5)
    assert set(weights) == {"lora_controlnet", "in.0.up", "in.0.down", "in.1.up", "in.1.down", "in.1.bias", "norm.scale"}
    assert weights["lora_controlnet"].numel() == 0
    up, down = weights["in.0.up"], weights["in.0.down"]
    assert up.shape == (6, 2) and down.shape == (2, 5) and up.dtype == down.dtype == torch.float32
    assert up.is_contiguous() and down.is_contiguous()
    assert torch.allclose((up @ down).double(), best_rank(linear_diff, 2), atol=1e-5)
    assert up.norm(dim=0).tolist() == pytest.approx([3.0, 2.0], rel=1e-5)  # up carries the singular values
    assert torch.allclose(down @ down.T, torch.eye(2), atol=1e-5)  # down is orthonormal
    conv_up, conv_down = weights["in.1.up"], weights["in.1.down"]
    assert conv_up.shape == (4, 2) and conv_down.shape == (2, 18)
    assert torch.allclose((conv_up @ conv_down).double(), conv_diff, atol=1e-5)
    assert weights["in.1.bias"] is control["in.1.bias"] and weights["norm.scale"] is control["norm.scale"]


def test_control_lora_stores_its_own_parts_new_and_reshaped_weights_in_full():
    base = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
    unet = {"hint.0.weight": base, "mid.weight": base, "in.0.weight": base}
    control = {"hint.0.weight": base.clone(), "mid.weight": torch.randn(4, 3), "in.0.weight": base + 1.0,
               "extra.weight": torch.ones(2, 2)}
    weights, worst = control_lora.control_lora_weights(control, unet, 8, ("hint.", "extra"))
    assert weights["hint.0.weight"] is control["hint.0.weight"]  # own part, even when equal to the UNet's
    assert weights["mid.weight"] is control["mid.weight"] and weights["extra.weight"] is control["extra.weight"]
    assert weights["in.0.up"].shape == (4, 4) and worst == pytest.approx(0.0, abs=1e-6)  # rank capped at 4
    assert torch.allclose(weights["in.0.up"] @ weights["in.0.down"], torch.ones(4, 4), atol=1e-5)
    ones = torch.ones(4, 4)
    only_same, none_worst = control_lora.control_lora_weights({"in.0.weight": ones}, {"in.0.weight": ones.clone()}, 1, ())
    assert list(only_same) == ["lora_controlnet"] and none_worst == 0.0


def test_control_lora_keeps_the_weights_dtype_and_measures_in_float32():
    base = torch.randn(5, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    diff = known_difference(5, 4, [2.0, 0.5], seed=30)
    control = {"a.weight": (base + diff).half()}
    weights, worst = control_lora.control_lora_weights(control, {"a.weight": base}, 1, ())
    assert weights["a.up"].dtype == weights["a.down"].dtype == torch.float16
    true_diff = control["a.weight"].float() - base.float()
    s = torch.linalg.svdvals(true_diff)
    assert worst == pytest.approx(float(s[1:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-4)
    assert worst == pytest.approx(0.5 / math.sqrt(4.25), rel=1e-2)


def test_control_lora_needs_a_rank_of_at_least_one():
    with pytest.raises(ValueError, match="a Control-LoRA needs a rank of at least 1, got 0"):
        control_lora.control_lora_weights({}, {}, 0, ())
    assert control_lora.control_lora_weights({}, {}, 1, ())[1] == 0.0
