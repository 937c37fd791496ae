"""The one place the pack touches ComfyUI internals: names that are not ComfyUI's public API.

A flat list of small functions. Each says which ComfyUI versions differ and how (the pack is
tested on 0.3.75 and 0.33.0). Every other pack module calls these instead of the internal names;
``tests/test_layers.py`` fails when one reaches for them directly. To support a new ComfyUI
release, change the function here, not its callers.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def area_and_mult(conditioning: dict, x_in: torch.Tensor, timestep):
    """``comfy.samplers.get_area_and_mult``: one cond entry prepared for the latent batch (its
    processed conditioning, mask multiplier, area, hooks, patches), or None outside its timestep
    range. Same signature and fields in 0.3.75 and 0.33.0."""
    import comfy.samplers

    return comfy.samplers.get_area_and_mult(conditioning, x_in, timestep)


@contextlib.contextmanager
def checkpointed_blocks(modules: list[torch.nn.Module], enabled: bool) -> Iterator[list[torch.nn.Module]]:
    """Gradient checkpointing with core Train LoRA's block patch (``comfy_extras.nodes_train``:
    ``find_all_highest_child_module_with_forward``, ``patch``, ``unpatch``) on the highest blocks
    of every module; yields the patched blocks and unpatches them on exit. 0.33 added
    ``patch(m, offloading=False)`` (a weight-offloading variant for Linear/Conv); the default is
    0.3.75's behaviour, which is the one used here."""
    from comfy_extras.nodes_train import find_all_highest_child_module_with_forward, patch, unpatch

    blocks = [b for m in modules for b in find_all_highest_child_module_with_forward(m)] if enabled else []
    for block in blocks:
        patch(block)
    try:
        yield blocks
    finally:
        for block in blocks:
            unpatch(block)


def png_metadata(node_class):
    """The prompt/workflow PNG text chunks core Save Image writes (``ui.ImageSaveHelper._create_png_metadata``,
    private in both 0.3.75 and 0.33.0, same signature); None when metadata is disabled."""
    from comfy_api.latest import ui

    return ui.ImageSaveHelper._create_png_metadata(node_class)


def executing_node_id() -> str | None:
    """The id of the node the executor is running now (``comfy_execution.utils.get_executing_context``,
    the same in 0.3.75 and 0.33.0), or None outside a prompt."""
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    return context.node_id if context is not None else None


def send_progress_text(text: str, node_id: str | None) -> None:
    """Show ``text`` under the node in the UI (``PromptServer.instance.send_progress_text``, as API
    nodes do; both versions). Does nothing without a server (scripts, tests) or a node id."""
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if server is not None and node_id is not None:
        server.send_progress_text(text, node_id)


def report_every_step(bar, value: int, total: int) -> None:
    """Set a ``comfy.utils.ProgressBar`` to ``value``/``total`` and always call its hook.

    0.3.75's ``update_absolute`` calls the hook on every update; 0.33.0's throttles (at least
    100 ms and 0.5 % between calls, first and last always sent), so a loop of fast steps skips
    updates, and with them the interrupt main.py's hook raises: a cancel arrived one or more
    steps late and the bar missed steps. Training reports every step, so the hook (the bar's
    public ``hook`` attribute in both versions) is called directly, as 0.3.75 does."""
    bar.total = total
    bar.current = min(value, total)
    if bar.hook is not None:
        bar.hook(bar.current, bar.total, None, node_id=bar.node_id)


def device_copy(control, load_device):
    """A deep copy of a ComfyUI control (ControlNet, T2I-Adapter, ...) whose model runs on
    ``load_device``, for ComfyUI's MultiGPU: ``ControlBase.deepclone_multigpu``, new in 0.33
    (0.3.75 has no MultiGPU and never asks for one)."""
    return control.deepclone_multigpu(load_device)


def register_device_copy(control, load_device, clone, autoregister: bool):
    """Record ``clone`` as ``control``'s copy for ``load_device`` when core asks (``autoregister``):
    0.33's ``ControlBase.multigpu_clones``, which core's MultiGPU reads back through
    ``get_instance_for_device``. Returns ``clone``."""
    if autoregister:
        control.multigpu_clones[load_device] = clone
    return clone


def latent_layout(model) -> tuple[int | None, int]:
    """``(pixels per latent cell or None, spatial axes + frame axes)`` of a ModelPatcher's latent
    format. ``spacial_downscale_ratio`` is new in 0.33 (0.3.75's formats do not say: None, and
    the caller falls back on the channel count); ``latent_dimensions`` (3 for Qwen-Image's
    ``[B,C,T,h,w]``) is in both versions."""
    latent_format = model.get_model_object("latent_format")
    return getattr(latent_format, "spacial_downscale_ratio", None), latent_format.latent_dimensions
