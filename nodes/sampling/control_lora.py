"""Control-LoRA files: a ControlNet stored as low-rank differences to the model's UNet (core's
``ControlLora`` format), made from the loaded model so its LoRAs count."""
from __future__ import annotations

import torch

import comfy.controlnet
import comfy.model_management

from ..ops.control_lora import control_lora_weights
from .adapters import CONTROLNET_OWN_PARTS, adapter_state_dict, check_fits


def control_lora_state_dict(adapter, model_patcher, rank: int) -> tuple[dict[str, torch.Tensor], float]:
    """A ControlNet as Control-LoRA weights against ``model_patcher``'s UNet (loaded, so its LoRAs
    count, as core's ControlLora reads them when sampling); see ``ops.control_lora.control_lora_weights``."""
    if not isinstance(adapter, comfy.controlnet.ControlNet):
        raise ValueError(f"a Control-LoRA file holds a ControlNet as differences to the model's UNet; "
                         f"{type(adapter).__name__} has no UNet copy: save it as 'full weights'")
    check_fits(adapter, model_patcher)
    comfy.model_management.load_models_gpu([model_patcher])
    unet = {k: v.detach().cpu() for k, v in model_patcher.model.diffusion_model.state_dict().items()}
    return control_lora_weights(adapter_state_dict(adapter), unet, rank, CONTROLNET_OWN_PARTS)
