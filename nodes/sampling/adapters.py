"""The adapters local-control training makes and trains: fresh T2I-Adapters and ControlNets
sized from the model, the trainable network inside a control, its float32 trainable copy, and
its weights in the layout core ControlNetLoader reads back.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.t2i_adapter.adapter

CONTROLNET_OWN_PARTS = ("input_hint_block.", "zero_convs.", "middle_block_out.")  # weights no UNet has


def fresh_adapter(model_patcher, seed: int = 0) -> comfy.controlnet.T2IAdapter:
    """A randomly initialised standard T2I-Adapter sized from the model's UNet, in the format core
    ControlNetLoader reads back (``conv_in`` / ``body.*``): the SD1.5 kind (4 levels, features at
    1/8) for SD1.5/SD2-layout UNets, the XL kind (pixel-unshuffle 16, features into levels 2-3
    and the middle block) for SDXL-layout UNets (3 levels with a label embedding)."""
    config = model_patcher.model.model_config.unet_config
    channels = config.get("model_channels")
    mult = list(config.get("channel_mult", []))
    if mult == [1, 2, 4, 4] and not config.get("adm_in_channels"):
        xl = False
    elif mult == [1, 2, 4] and config.get("adm_in_channels"):
        xl = True
    else:
        raise ValueError(f"a fresh T2I-Adapter needs an SD1.5- or SDXL-layout UNet (channel_mult 1,2,4,4 or 1,2,4; "
                         f"this one has {mult}); load an existing adapter with Load ControlNet Model instead")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = comfy.t2i_adapter.adapter.Adapter(cin=(256 if xl else 64) * 3,
                                                channels=[channels, channels * 2, channels * 4, channels * 4],
                                                nums_rb=2, ksize=1, sk=True, use_conv=False, xl=xl)
    return comfy.controlnet.T2IAdapter(net, net.input_channels, 8, "nearest-exact")


def fresh_controlnet(model_patcher, seed: int = 0) -> comfy.controlnet.ControlNet:
    """A ControlNet made from the model the way the ControlNet paper starts one: encoder, middle
    block and time/label embeddings copied from the UNet, zero convolutions (and the hint
    block's last conv) zero, so training starts from "no effect"; the rest of the hint block is
    torch's default init (seeded). Any UNet layout ComfyUI's ControlNet class builds works;
    the file it saves loads back through core Load ControlNet Model. The weights are read from
    the loaded model, so LoRAs applied to the MODEL are part of the copy, as they are of the
    model the ControlNet is trained against."""
    comfy.model_management.load_models_gpu([model_patcher])
    base = model_patcher.model
    config = {k: v for k, v in base.model_config.unet_config.items()
              if k not in ("out_channels", "dtype", "device", "operations")}
    try:
        net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init,
                                         dtype=torch.float32, device="cpu", **config)
    except (AssertionError, TypeError) as error:
        raise ValueError(f"a fresh ControlNet cannot be built for this model ({type(base).__name__}): {error}; "
                         "load an existing ControlNet with Load ControlNet Model instead") from error
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():  # disable_weight_init leaves weights unset: give every one torch's default
            reset = next((c.__dict__["reset_parameters"] for c in type(module).__mro__
                          if c.__module__.startswith("torch.nn") and "reset_parameters" in c.__dict__), None)
            if reset is not None:
                reset(module)
    unet = base.diffusion_model.state_dict()
    own = net.state_dict()
    copied = {k: v.to(own[k].dtype) for k, v in unet.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(copied, strict=False)
    zero = [*net.zero_convs, net.middle_block_out, net.input_hint_block[-1]]
    with torch.no_grad():
        for module in zero:
            for p in module.parameters():
                p.zero_()
    not_copied = sorted({k.split(".")[0] for k in own if k not in copied and not k.startswith(CONTROLNET_OWN_PARTS)})
    if not_copied:
        raise ValueError(f"a fresh ControlNet could not copy {', '.join(not_copied)} from the model's UNet; "
                         "load an existing ControlNet with Load ControlNet Model instead")
    return comfy.controlnet.ControlNet(net, load_device=comfy.model_management.get_torch_device())


def adapter_network(adapter) -> torch.nn.Module:
    """The trainable network inside a control: a T2I-Adapter's ``t2i_model`` or a ControlNet's
    ``control_model`` (the SD1.5/SDXL kind core ControlNetLoader builds); a clear error otherwise."""
    if isinstance(adapter, comfy.controlnet.T2IAdapter):
        return adapter.t2i_model
    if isinstance(adapter, comfy.controlnet.ControlLora):
        raise ValueError("Control-LoRA files cannot be trained here; load a full ControlNet or a T2I-Adapter, or "
                         "use init 'fresh ControlNet from the model'")
    if (isinstance(adapter, comfy.controlnet.ControlNet) and adapter.latent_format is None
            and isinstance(adapter.control_model, comfy.cldm.cldm.ControlNet)):
        return adapter.control_model
    raise ValueError(f"SCTrainLocalControl trains T2I-Adapters and SD1.5/SDXL ControlNets; got "
                     f"{type(adapter).__name__}"
                     + (f" ({type(adapter.control_model).__name__})" if hasattr(adapter, "control_model") else "")
                     + ". Load one with Load ControlNet Model or use a fresh option")


def controlnet_own_parts(network: torch.nn.Module) -> tuple[str, ...]:
    """The weight-name prefixes of ``network`` that are not copies of UNet weights (none for a T2I-Adapter)."""
    return CONTROLNET_OWN_PARTS if isinstance(network, comfy.cldm.cldm.ControlNet) else ()


def adapter_state_dict(adapter) -> dict[str, torch.Tensor]:
    """The weights in the layout core ControlNetLoader detects: T2I-Adapter keys as they are,
    ControlNet keys without prefix (``zero_convs.0.0.weight`` ...)."""
    return {k: v.detach().cpu().contiguous() for k, v in adapter_network(adapter).state_dict().items()}


def check_fits(adapter, model_patcher) -> None:
    """A ControlNet made for another model (SD1.5 vs SDXL, other widths) is an error naming the
    first weight that differs, not ComfyUI's per-step "control could not be applied" warning."""
    if not isinstance(adapter, comfy.controlnet.ControlNet):
        return
    unet = model_patcher.model.diffusion_model.state_dict()
    for key, value in adapter_network(adapter).state_dict().items():
        if key.startswith(("input_blocks.", "middle_block.")) and (key not in unet or unet[key].shape != value.shape):
            theirs = f"is {list(unet[key].shape)}" if key in unet else "does not exist"
            raise ValueError(f"this ControlNet does not fit the model: its {key} is {list(value.shape)} but the "
                             f"model's {theirs}; load a ControlNet made for this model (SD1.5 vs SDXL) or use "
                             "init 'fresh ControlNet from the model'")


def trainable_copy(adapter, device) -> comfy.controlnet.ControlBase:
    """The same kind of control with its own float32 copy of the weights on ``device``, every
    layer running plain torch ops (no ComfyUI weight casting, which is not built for autograd);
    the input control is left as it is."""
    with torch.inference_mode(False):  # nodes run in inference mode; trainable weights must be normal tensors
        net = copy.deepcopy(adapter_network(adapter))
    replace_tensors(net, lambda t: t.detach().clone().to(
        device, torch.float32 if isinstance(t, torch.nn.Parameter) else t.dtype))  # buffers keep their dtype
    for module in net.modules():
        if getattr(module, "comfy_cast_weights", False):
            module.comfy_cast_weights = False
    if isinstance(adapter, comfy.controlnet.T2IAdapter):
        return comfy.controlnet.T2IAdapter(net, adapter.channels_in, adapter.compression_ratio,
                                           adapter.upscale_algorithm, device=device)
    net.dtype = torch.float32
    return comfy.controlnet.ControlNet(net, global_average_pooling=adapter.global_average_pooling,
                                       compression_ratio=adapter.compression_ratio, load_device=device,
                                       strength_type=adapter.strength_type, concat_mask=adapter.concat_mask,
                                       preprocess_image=adapter.preprocess_image)


def replace_tensors(module: torch.nn.Module, replace: Callable[[torch.Tensor], torch.Tensor | None]) -> int:
    """Swap every parameter and buffer of ``module`` for ``replace(tensor)`` where that is not None
    (made outside inference mode; parameters stay parameters with their requires_grad); the count."""
    replaced = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for slots in (sub._parameters, sub._buffers):
                for name, tensor in list(slots.items()):
                    new = None if tensor is None else replace(tensor)
                    if new is None:
                        continue
                    if isinstance(tensor, torch.nn.Parameter):
                        new = torch.nn.Parameter(new, requires_grad=tensor.requires_grad)
                    slots[name] = new
                    replaced += 1
    return replaced
