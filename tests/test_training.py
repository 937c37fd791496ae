"""Mask-in-the-loop adapter training: Sobel loss maths, z0' against model_sampling, a short real
training run through ComfyUI's executor, and the saved file loaded back by core ControlNetLoader.

The harness's tiny UNet has two levels, which no T2I-Adapter file layout fits; training runs on a
micro UNet of the real SD1.5 layout (4 levels, 2 res blocks, widths 32..128, cross-attention only
in the middle block) so the standard adapter core loads back is the one trained.
"""
import functools
import json

import pytest
import torch

import comfy.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import nodes
from harness import pack_import, run_prompt, tiny_models

ops = pack_import("nodes.ops.training")
loop = pack_import("nodes.sampling.training")

LATENT, N = 8, 4
MICRO_UNET = {
    **tiny_models._UNET_BASE, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [0] * 8, "transformer_depth_output": [0] * 12, "transformer_depth_middle": 1,
    "context_dim": 64, "use_linear_in_transformer": False, "adm_in_channels": None, "num_head_channels": 32,
    "num_heads": -1,
}


@functools.cache
def micro_sd15():
    config = comfy.supported_models.SD15(dict(MICRO_UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    tiny_models._randomize(model.diffusion_model, 0)
    tiny_models._normalise_output(model.diffusion_model, "sd15", 0)
    mm = comfy.model_management
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@functools.cache
def task():
    """Vertical stripes that must appear only inside a per-image rectangle; flat latent elsewhere."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(N, LATENT * 8, LATENT * 8)
    for i in range(N):
        top, left = int(torch.randint(0, 24, (1,), generator=g)), int(torch.randint(0, 24, (1,), generator=g))
        masks[i, top : top + 40, left : left + 40] = 1.0
    stripes = (torch.arange(LATENT * 8) // 16 % 2).float().expand(LATENT * 8, -1)
    hints = (stripes * masks).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    latent_stripes = (torch.arange(LATENT) // 2 % 2).float().expand(LATENT, -1) * 2.0 - 1.0
    latent_mask = torch.nn.functional.adaptive_avg_pool2d(masks.unsqueeze(1), LATENT)
    base = 0.2 * torch.randn(N, 4, 1, 1, generator=g)
    latents = base + latent_mask * latent_stripes
    cond = [[torch.randn(1, 77, 64, generator=g), {}]]
    return latents, hints, masks, cond


class MicroSD15Task:
    """Test-only node: the micro SD1.5 model and the stripes task as graph values."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL", "LATENT", "IMAGE", "MASK", "CONDITIONING")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        latents, hints, masks, cond = task()
        return micro_sd15(), {"samples": latents}, hints, masks, cond


nodes.NODE_CLASS_MAPPINGS["MicroSD15Task"] = MicroSD15Task

# ------------------------------------------------------------------------------------------ maths


def _edges_pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(2, 4, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0
    return z0, mask


def test_sobel_loss_is_zero_for_equal_latents_and_grows_with_edge_differences_inside():
    z0, mask = _edges_pair()
    assert ops.masked_sobel_loss(z0.clone(), z0, mask).item() == 0.0
    bump = torch.zeros_like(z0)
    bump[..., 7:9, 7:9] = 1.0  # an edge change in the middle of the mask
    small = ops.masked_sobel_loss(z0 + 0.1 * bump, z0, mask).item()
    large = ops.masked_sobel_loss(z0 + 0.5 * bump, z0, mask).item()
    assert 0 < small < large
    assert large == pytest.approx(25 * small, rel=1e-4)  # quadratic in the edge difference
    flat = ops.masked_sobel_loss(z0 + 3.0, z0, mask).item()  # a constant shift has no edges
    assert flat == pytest.approx(0.0, abs=1e-10)
    outside = torch.zeros_like(z0)
    outside[..., 0:2, 0:2] = 5.0
    assert ops.masked_sobel_loss(z0 + outside, z0, mask).item() == 0.0
    assert ops.masked_sobel_loss(z0 + bump, z0, torch.zeros_like(mask)).item() == 0.0


def test_outside_mask_pixels_get_zero_gradient():
    z0, mask = _edges_pair(1)
    pred = (z0 + torch.randn_like(z0)).requires_grad_(True)
    ops.masked_sobel_loss(pred, z0, mask).backward()
    grad = pred.grad.abs()
    inside = mask.expand_as(grad) > 0
    assert torch.count_nonzero(grad[~inside]) == 0
    assert grad[inside].mean() > 0


def test_sobel_matches_the_textbook_kernel():
    x = torch.zeros(1, 1, 5, 5)
    x[..., 3:] = 1.0  # a vertical step between columns 2 and 3
    gx, gy = ops.sobel(x)[0, 0]
    assert torch.allclose(gx[1:4, 2], torch.full((3,), 0.5)) and torch.allclose(gx[1:4, 0], torch.zeros(3))
    assert torch.count_nonzero(gy) == 0


def test_z0_estimate_matches_model_sampling():
    sampling = micro_sd15().model.model_sampling
    g = torch.Generator().manual_seed(2)
    index = torch.tensor([10, 300, 700, 990])
    sigma = sampling.sigmas[index]
    x_t, eps = torch.randn(4, 4, 8, 8, generator=g) * 3, torch.randn(4, 4, 8, 8, generator=g)
    denoised = sampling.calculate_denoised(sigma, eps, x_t)
    assert torch.allclose(ops.z0_from_eps(x_t, eps, sigma), denoised, atol=1e-5)
    # the paper's form on the UNet's own (variance preserving) input
    z_t = sampling.calculate_input(sigma, x_t)
    alpha_bar = 1.0 / (1.0 + sigma.double() ** 2)  # ModelSamplingDiscrete keeps sigma = sqrt((1 - a) / a)
    assert torch.allclose(ops.z0_from_eps_vp(z_t, eps, alpha_bar), denoised, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ops.eps_from_z0(x_t, denoised, sigma), eps, atol=1e-4)
    # and the training step's z0' is the model's own calculate_denoised of its output
    z0 = torch.randn(1, 4, 8, 8, generator=g)
    hint, mask = torch.zeros(1, 64, 64, 3), torch.ones(1, 64, 64)
    step = loop._Step(micro_sd15(), task()[3])
    with torch.no_grad():
        _, _, z0_pred = step.losses(None, z0, hint, mask, eps[:1], sigma[1:2])
        x = sampling.noise_scaling(sigma[1:2], eps[:1], z0)
        unet = micro_sd15().model.diffusion_model(sampling.calculate_input(sigma[1:2], x),
                                                  sampling.timestep(sigma[1:2]).float(), context=task()[3][0][0])
    assert torch.allclose(z0_pred, sampling.calculate_denoised(sigma[1:2], unet, x), atol=1e-5)


# ------------------------------------------------------------------------------------------ training

EVAL_SIGMAS = torch.tensor([0.3, 1.0, 2.5])


TRAIN_STEPS = 20


def _train_prompt():
    return {
        "task": {"class_type": "MicroSD15Task", "inputs": {}},
        "train": {"class_type": "SCTrainLocalControl", "inputs": {
            "model": ["task", 0], "latents": ["task", 1], "control_images": ["task", 2], "masks": ["task", 3],
            "positive": ["task", 4], "init": "fresh standard T2I-Adapter", "steps": TRAIN_STEPS,
            "learning_rate": 1e-3, "batch_size": 2, "sobel_weight": 1.0, "start_percent": 0.2, "end_percent": 0.9,
            "seed": 7, "gradient_checkpointing": False}},
        "save": {"class_type": "SCSaveAdapter", "inputs": {"control_net": ["train", 0],
                                                          "filename_prefix": "test_local/adapter"}},
    }


@pytest.fixture(scope="module")
def trained():
    return run_prompt(_train_prompt(), outputs=["train", "save"])


def test_training_lowers_both_losses(trained):
    latents, hints, masks, cond = task()
    initial = loop.fresh_adapter(micro_sd15(), 7)
    adapter = trained.output("train", 0)
    history = json.loads(trained.output("train", 1))
    assert history["steps_done"] == TRAIN_STEPS and not history["interrupted"]
    assert len(history["noise_loss"]) == len(history["sobel_loss"]) == TRAIN_STEPS
    before = loop.evaluate(micro_sd15(), initial, latents, hints, masks, cond, EVAL_SIGMAS)
    after = loop.evaluate(micro_sd15(), adapter, latents, hints, masks, cond, EVAL_SIGMAS)
    print("losses before", before, "after", after)
    assert after[0] < before[0] and after[1] < before[1]
    plot = trained.output("train", 2)
    assert plot.ndim == 4 and plot.shape[-1] == 3 and plot.std() > 0.01


def test_saved_adapter_loads_through_core_loader_with_identical_outputs(trained):
    filename = trained.output("save", 0)
    assert filename.startswith("test_local/") and filename.endswith(".safetensors")
    loaded = run_prompt({"load": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": filename}}},
                        outputs=["load"]).output("load", 0)
    assert isinstance(loaded, comfy.controlnet.T2IAdapter)
    ours = trained.output("train", 0)
    latents, hints, masks, cond = task()
    step = loop._Step(micro_sd15(), cond)
    noise, sigma = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3)), torch.full((N,), 1.5)
    with torch.no_grad():
        a = step.losses(ours, latents, hints, masks, noise, sigma)[2]
        b = step.losses(loaded, latents, hints, masks, noise, sigma)[2]
    assert torch.equal(a, b)


def test_interrupt_returns_the_weights_of_the_last_finished_step():
    latents, hints, masks, cond = task()
    initial = loop.fresh_adapter(micro_sd15(), 1)
    snapshots = []

    def on_step(step, noise_loss, sobel_loss):
        snapshots.append(None)
        if step == 3:
            comfy.model_management.interrupt_current_processing(True)

    config = loop.TrainConfig(steps=10, learning_rate=1e-3, batch_size=1, seed=1)
    result = loop.train_local_control(micro_sd15(), initial, latents, hints, masks, cond, config, on_step)
    assert result.interrupted and len(result.noise_loss) == 3
    assert not comfy.model_management.processing_interrupted()
    changed = [not torch.equal(p, q) for p, q in zip(result.adapter.t2i_model.parameters(),
                                                      initial.t2i_model.parameters())]
    assert any(changed)
    assert all(torch.isfinite(p).all() for p in result.adapter.t2i_model.parameters())


def test_non_adapter_control_is_a_clear_error():
    latents, hints, masks, cond = task()
    with pytest.raises(ValueError, match="trains T2I-Adapters"):
        loop.train_local_control(micro_sd15(), tiny_models.controlnet("sd15"), latents, hints, masks, cond,
                                 loop.TrainConfig(steps=1))
