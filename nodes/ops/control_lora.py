"""Control-LoRA weights: a ControlNet as truncated-SVD differences to the UNet it was copied from
(the file format core ComfyUI loads as ``ControlLora``). Pure torch; no ComfyUI imports."""
from __future__ import annotations

import torch


def control_lora_weights(control: dict[str, torch.Tensor], unet: dict[str, torch.Tensor], rank: int,
                         own_parts: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], float]:
    """A ControlNet as a Control-LoRA (the format core ComfyUI loads as ``ControlLora``): every weight
    copied from the UNet stored as its difference to the UNet's, ``{module}.up`` ``[out, r]`` and
    ``{module}.down`` ``[r, in]`` from a truncated SVD, unchanged ones left out, changed 1-D ones
    (norms, biases) in full; the ControlNet's own parts (``own_parts`` prefixes) in full. Core
    rebuilds the rest from the sampling model's UNet. Returns the weights and the worst relative
    (Frobenius) error the truncation makes in a difference: 0 up to rounding when the
    ControlNet was trained with LoRA of rank <= ``rank``."""
    if rank < 1:
        raise ValueError(f"a Control-LoRA needs a rank of at least 1, got {rank}")
    out: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    worst = 0.0
    for key, value in control.items():
        base = unet.get(key)
        if key.startswith(own_parts) or base is None or base.shape != value.shape:
            out[key] = value
            continue
        diff = value.float() - base.to(value.device).float()
        if not bool(diff.any()):
            continue
        if value.ndim < 2 or not key.endswith(".weight"):
            out[key] = value
            continue
        matrix = diff.reshape(diff.shape[0], -1)
        u, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
        r = min(rank, singular.shape[0])
        dropped = singular[r:].square().sum().sqrt() / singular.square().sum().sqrt()
        worst = max(worst, float(dropped))
        module = key.removesuffix(".weight")
        out[f"{module}.up"] = (u[:, :r] * singular[:r]).to(value.dtype).contiguous()
        out[f"{module}.down"] = vh[:r].to(value.dtype).contiguous()
    return out, worst
