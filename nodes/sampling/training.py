"""Training loop glue: a T2I-Adapter or a ControlNet (all its weights, or low-rank adapters on
them) trained with the mask in the loop on a ComfyUI model.

Each step: pick a batch, draw sigma from the model's own ``model_sampling`` (percent range),
noise the latents with ``model_sampling.noise_scaling``, run the adapter through
``MaskedControl`` (the same wrapper inference uses, so features are masked by the same
``mask_for_residual`` code; a ControlNet also sees the prompt and sigma as in sampling), run
the frozen UNet through ``BaseModel.apply_model`` (whose output is
``model_sampling.calculate_denoised``, i.e. z0'), then
``loss = MSE(eps', eps) + lambda * masked_sobel_loss(z0', z0, M)``. Only the adapter's weights
change; the input adapter is not modified (a deep copy is trained).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import comfy.controlnet
import comfy.model_management
import comfy.model_sampling

from ..ops import losses
from ..ops.control import mask_for_residual
from ..ops.shapes import as_mask
from . import compat
from .adapters import adapter_network, check_fits, controlnet_own_parts, replace_tensors, trainable_copy
from .masked_control import MaskedControl

_LOG = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 50
    learning_rate: float = 1e-4
    batch_size: int = 1
    sobel_weight: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    seed: int = 0
    gradient_checkpointing: bool = False
    # The mask in the loop (the paper's method). Off = the whole-image baseline the fair
    # comparison trains against: features unmasked and/or the Sobel term over the whole latent.
    mask_features: bool = True
    mask_sobel: bool = True
    # 0 trains every weight of the adapter; > 0 trains low-rank adapters of this rank (core's
    # weight_adapter kind ``lora_algorithm``) on its conv/linear weights, merged in at the end.
    lora_rank: int = 0
    lora_algorithm: str = "LoRA"


@dataclass
class TrainResult:
    adapter: comfy.controlnet.T2IAdapter
    noise_loss: list[float] = field(default_factory=list)
    sobel_loss: list[float] = field(default_factory=list)
    interrupted: bool = False
    diverged_at_step: int | None = None  # the step whose loss was not finite (its update was not applied)

    def history(self) -> dict:
        return {"noise_loss": self.noise_loss, "sobel_loss": self.sobel_loss,
                "steps_done": len(self.noise_loss), "interrupted": self.interrupted,
                "diverged_at_step": self.diverged_at_step}


def is_shared_conditioning(conditioning: list) -> bool:
    """True for one CONDITIONING (``[[tensor, options], ...]``), False for a list of them (one per item)."""
    return bool(conditioning) and isinstance(conditioning[0][0], torch.Tensor)


def _conds(base_model, conditioning: list, device, x: torch.Tensor) -> dict:
    tensor, options = conditioning[0]
    extra = {k: v for k, v in options.items() if k not in ("control", "mask", "area", "strength", "hooks")}
    return base_model.extra_conds(cross_attn=tensor.to(device), device=device, noise=x, **extra)


def _model_kwargs(base_model, conditioning: list, batch: int, device, x: torch.Tensor,
                  index: list[int] | None = None) -> dict:
    """UNet keyword inputs (c_crossattn, y, ...) for ``batch`` items: conditioning entry 0 repeated,
    or with per-item conditionings the items' own (``index``), joined the way ComfyUI batches conds
    (cross-attention of different token lengths is repeated to a common length)."""
    if is_shared_conditioning(conditioning):
        conds = _conds(base_model, conditioning, device, x)
        return {k: c.process_cond(batch_size=batch, device=device, area=None).cond.to(device)
                for k, c in conds.items()}
    if index is None or len(index) != batch:
        raise ValueError(f"per-item conditioning needs the batch's item indices, got {index} for batch {batch}")
    items = [{k: c.process_cond(batch_size=1, device=device, area=None)
              for k, c in _conds(base_model, conditioning[i], device, x[j : j + 1]).items()}
             for j, i in enumerate(index)]
    return {k: items[0][k].concat([item[k] for item in items[1:]]).to(device) for k in items[0]}


class TrainingStep:
    """Forward pass and both losses for one batch (the training loop; the benchmark measures with it too)."""

    def __init__(self, model_patcher, conditioning: list):
        """``conditioning``: one CONDITIONING for every item, or a list with one per dataset item."""
        self.patcher = model_patcher
        self.base = model_patcher.model
        self.sampling = self.base.model_sampling
        if isinstance(self.sampling, comfy.model_sampling.CONST):
            raise ValueError("SCTrainLocalControl supports eps / v-prediction models (SD1.5, SDXL), not flow models")
        self.device = model_patcher.load_device
        self.conditioning = conditioning

    def sigmas(self, batch: int, start: float, end: float, generator: torch.Generator) -> torch.Tensor:
        lo, hi = sorted((min(max(start, 1e-3), 1 - 1e-3), min(max(end, 1e-3), 1 - 1e-3)))
        percents = lo + (hi - lo) * torch.rand(batch, generator=generator)
        return torch.tensor([float(self.sampling.percent_to_sigma(float(p))) for p in percents], device=self.device)

    def losses(self, adapter, z0, hint, mask, noise, sigma, sobel: bool = True, mask_features: bool = True,
               mask_sobel: bool = True, index: list[int] | None = None):
        """(noise loss, sobel loss or None, z0') for latents ``z0``, control image ``hint`` [B,H,W,3], MASK ``mask``.

        ``mask_features`` / ``mask_sobel`` False use an all-ones mask for that part (MaskedControl
        with an all-ones mask is exactly core's unmasked control), for the whole-image baseline.
        """
        x_t = self.sampling.noise_scaling(sigma, noise, z0)
        z0_pred = self.predict(adapter, x_t, sigma, hint, mask if mask_features else torch.ones_like(mask), index)
        noise_loss = F.mse_loss(losses.eps_from_z0(x_t, z0_pred, sigma), noise)
        sobel_loss = None
        if sobel:
            latent_mask = mask_for_residual(mask, tuple(z0.shape[-2:]), tuple(z0.shape[-2:])).to(z0)
            if not mask_sobel:
                latent_mask = torch.ones_like(latent_mask)
            sobel_loss = losses.masked_sobel_loss(z0_pred, z0, latent_mask)
        return noise_loss, sobel_loss, z0_pred

    def predict(self, adapter, x_t, sigma, hint, mask, index: list[int] | None = None):
        """z0' (``model_sampling.calculate_denoised`` of the UNet output) with ``adapter``'s features
        masked by ``mask`` through MaskedControl; ``adapter`` None = the model alone."""
        kwargs = _model_kwargs(self.base, self.conditioning, x_t.shape[0], self.device, x_t, index)
        control = None
        if adapter is not None:
            inner = adapter.copy().set_cond_hint(hint.movedim(-1, 1), 1.0, (0.0, 1.0))
            masked = MaskedControl(inner, mask)
            masked.pre_run(self.base, self.sampling.percent_to_sigma)  # a ControlNet reads the model's sampling
            control = masked.get_control(x_t, sigma, kwargs, 1, {})  # and the prompt (c_crossattn, y)
        return self.base.apply_model(x_t, sigma, control=control, transformer_options={}, **kwargs)


def _without_inference_tensors(module: torch.nn.Module) -> int:
    """Replace parameters and buffers created under ``torch.inference_mode`` (every model a loader
    node loads: ComfyUI runs nodes in inference mode) by equal normal tensors, which autograd may
    save for the backward pass through the frozen UNet. Values are unchanged, so everything else
    that uses the model sees the same weights; each tensor is replaced once. Returns the count."""
    replaced = replace_tensors(module, lambda t: t.clone() if t.is_inference() else None)
    if replaced:
        _LOG.debug("local-control training: %d inference-mode tensors of the model made trainable-safe", replaced)
    return replaced


def _without_inference_mode(value):
    """``value`` (tensors, nested in lists / tuples / dicts as CONDITIONING is) with every tensor
    made under ``torch.inference_mode`` (every node output: a CLIP Text Encode prompt, VAE latents)
    replaced by an equal normal tensor: a ControlNet's trainable cross-attention saves the prompt
    for the backward pass, which autograd refuses for inference tensors."""
    if isinstance(value, torch.Tensor):
        if not value.is_inference():
            return value
        with torch.inference_mode(False):
            return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_without_inference_mode(v) for v in value)
    if isinstance(value, dict):
        return {k: _without_inference_mode(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    """The UNet's parameters without gradients (restored afterwards)."""
    _without_inference_tensors(module)
    saved = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _trainable_weights(network: torch.nn.Module, lora_rank: int, algorithm: str, seed: int):
    """The parameters to optimise: every weight of ``network`` (``lora_rank`` 0), or low-rank
    adapters from ComfyUI's ``comfy.weight_adapter`` (the kind core Train LoRA makes) on each
    conv/linear weight, applied through torch parametrizations and merged into the weights on
    exit, so the result is a plain adapter core loaders read. A ControlNet's own parts (hint
    block, zero convolutions: nothing a UNet has) train fully, as in Control-LoRA. Gradients
    are off again after."""
    if lora_rank <= 0:
        params = list(network.parameters())
        for p in params:
            p.requires_grad_(True)
        try:
            yield params
        finally:
            for p in params:
                p.requires_grad_(False)
        return
    from comfy.weight_adapter import adapter_maps
    from torch.nn.utils import parametrize

    if algorithm not in adapter_maps:
        raise ValueError(f"unknown lora_algorithm {algorithm!r}; ComfyUI offers {', '.join(adapter_maps)}")
    for p in network.parameters():
        p.requires_grad_(False)
    own = controlnet_own_parts(network)
    full = [p for name, p in network.named_parameters() if name.startswith(own)]
    for p in full:
        p.requires_grad_(True)
    patched = [m for name, m in network.named_modules() if not name.startswith(own)
               and m._parameters.get("weight") is not None and m.weight.ndim >= 2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in patched:
            diff = adapter_maps[algorithm].create_train(module.weight, rank=lora_rank, alpha=1.0)
            parametrize.register_parametrization(module, "weight", diff.to(module.weight.device), unsafe=True)
    params = full + [p for module in patched for p in module.parametrizations.weight.parameters() if p.requires_grad]
    try:
        yield params
    finally:
        with torch.no_grad():
            for module in patched:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        for p in network.parameters():
            p.requires_grad_(False)


def check_dataset(latents: torch.Tensor, hints: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Broadcast batches of 1 and check sizes; control images must be 8x the latent size."""
    masks = as_mask(masks)
    n = max(latents.shape[0], hints.shape[0], masks.shape[0])
    for name, t in (("latents", latents), ("control images", hints), ("masks", masks)):
        if t.shape[0] not in (1, n):
            raise ValueError(f"{name} have batch {t.shape[0]} but the dataset has {n} items; use 1 or {n}")
    if tuple(hints.shape[1:3]) != (latents.shape[2] * 8, latents.shape[3] * 8):
        raise ValueError(f"control images are {tuple(hints.shape[1:3])} but the latents need "
                         f"{(latents.shape[2] * 8, latents.shape[3] * 8)} (8x the latent); resize them first")

    def expand(t):
        return t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t

    return expand(latents), expand(hints), expand(masks)


def check_conditioning(conditioning: list, n: int) -> None:
    if not conditioning:
        raise ValueError("the conditioning is empty: connect a prompt")
    if not is_shared_conditioning(conditioning) and len(conditioning) != n:
        raise ValueError(f"{len(conditioning)} per-item conditionings for a dataset of {n} items; give one per item")


def train_local_control(model_patcher, adapter, latents: torch.Tensor, hints: torch.Tensor, masks: torch.Tensor,
                        conditioning: list, config: TrainConfig,
                        on_step: Callable[[int, float, float], None] | None = None) -> TrainResult:
    """Train a copy of ``adapter``; returns it with the loss history. An interrupt (ComfyUI's
    cancel) stops after the last finished step and returns those weights."""
    comfy.model_management.load_models_gpu([model_patcher])
    latents, hints, masks, conditioning = _without_inference_mode((latents, hints, masks, conditioning))
    step = TrainingStep(model_patcher, conditioning)
    device = step.device
    latents, hints, masks = check_dataset(latents, hints, masks)
    check_conditioning(conditioning, latents.shape[0])
    # LATENT samples are in the VAE's space; the sampler hands the model process_latent_in of them
    # (SD1.5: x 0.18215), so the adapter must learn on that scale too.
    latents = step.base.process_latent_in(latents.to(device, torch.float32))
    check_fits(adapter, model_patcher)
    trained = trainable_copy(adapter, device)
    network = adapter_network(trained)
    result = TrainResult(trained)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.inference_mode(False), torch.enable_grad(), _frozen(step.base.diffusion_model), \
            _trainable_weights(network, config.lora_rank, config.lora_algorithm, config.seed) as params, \
            compat.checkpointed_blocks([step.base.diffusion_model, network], config.gradient_checkpointing):
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
        n = latents.shape[0]
        for i in range(config.steps):
            try:
                comfy.model_management.throw_exception_if_processing_interrupted()
            except comfy.model_management.InterruptProcessingException:
                _LOG.info("local-control training interrupted after %d steps; returning those weights", i)
                result.interrupted = True
                break
            index = torch.randperm(n, generator=generator)[: config.batch_size]
            z0 = latents[index].clone()
            noise = torch.randn(z0.shape, generator=generator).to(device)
            sigma = step.sigmas(len(index), config.start_percent, config.end_percent, generator)
            noise_loss, sobel_loss, _ = step.losses(trained, z0, hints[index], masks[index], noise, sigma,
                                                    sobel=config.sobel_weight > 0,
                                                    mask_features=config.mask_features, mask_sobel=config.mask_sobel,
                                                    index=index.tolist())
            loss = noise_loss if sobel_loss is None else noise_loss + config.sobel_weight * sobel_loss
            if not math.isfinite(loss.item()):
                _LOG.warning("local-control training diverged at step %d (loss %s): stopped, returning the weights "
                             "of step %d; lower the learning rate", i + 1, loss.item(), i)
                result.diverged_at_step = i + 1
                break
            optimizer.zero_grad(set_to_none=True)
            network.to(device)  # T2IAdapter.get_control parks the net on the CPU after its forward
            loss.backward()
            optimizer.step()
            result.noise_loss.append(noise_loss.item())
            result.sobel_loss.append(0.0 if sobel_loss is None else sobel_loss.item())
            if on_step is not None:
                try:  # ComfyUI's progress hook raises the interrupt: the step is done, keep its weights
                    on_step(i + 1, result.noise_loss[-1], result.sobel_loss[-1])
                except comfy.model_management.InterruptProcessingException:
                    if i + 1 < config.steps:
                        _LOG.info("local-control training interrupted after %d steps; returning those weights", i + 1)
                        result.interrupted = True
                    break
    network.cpu()
    return result
