"""What tests compare the pack against: recorded model calls and core-only regional conditioning."""
from __future__ import annotations

import torch


def record_model_calls(model) -> list:
    """Make ``model`` (a clone you own) record ``(control residuals, output)`` of every model call."""
    records = []

    def wrapper(apply_model, args):
        control = args["c"].get("control")
        residuals = None if control is None else {
            k: [None if v is None else v.clone() for v in vs] for k, vs in control.items()}
        out = apply_model(args["input"], args["timestep"], **args["c"])
        records.append((residuals, out.clone()))
        return out

    model.set_model_unet_function_wrapper(wrapper)
    return records


def core_masked_conds(positive: list, regions: list, vae=None) -> list:
    """Regions with core nodes only: ConditioningSetMask per prompt (the base prompt where no region
    is), core Apply ControlNet (Advanced) on each region that has a ControlNet."""
    import nodes

    background = uncovered([r.mask for r in regions])
    out = nodes.ConditioningSetMask().append(positive, background, "default", 1.0)[0]
    for r in regions:
        c = nodes.ConditioningSetMask().append(r.conditioning, r.mask, "default", r.weight)[0]
        if r.control_net is not None:
            c = nodes.ControlNetApplyAdvanced().apply_controlnet(c, [], r.control_net, r.control_image,
                                                                 r.control_strength, 0.0, 1.0, vae=vae)[0]
        out = out + c
    return out


def uncovered(masks: list) -> torch.Tensor:
    """``max(0, 1 - sum m_i)`` from first principles (not the pack's ``background``, which it checks):
    the masks must share one size, so no resize rule is assumed."""
    shapes = {tuple(m.shape[-2:]) for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"the core reference needs region masks of one size, got {sorted(shapes)}")
    total = torch.zeros(())
    for m in masks:
        total = total + (m if m.ndim == 3 else m.unsqueeze(0)).float()
    return (1.0 - total).clamp(min=0.0)
