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


# --------------------------------------------------------------------------- DiT attention hooks

# ``unet_config["image_model"]`` of the DiT families whose joint attention the pack can route. All
# of them take the routing through ComfyUI's attention override; the value says where a region
# prompt's rotary positions are set: Flux-style and Qwen-Image blocks call an ``attn1_patch`` that
# may return new ``pe``; Lumina 2 / Z-Image has no attention patch, so its region prompts keep the
# positions they have in the joined prompt.
DIT_FAMILIES = {"flux": "attn1_patch", "flux2": "attn1_patch", "chroma": "attn1_patch",
                "qwen_image": "attn1_patch", "lumina2": "attention_override"}
ATTENTION_OVERRIDE = "optimized_attention_override"  # transformer_options key read by ComfyUI's wrap_attn


def dit_family(model_patcher) -> str | None:
    """The connected model's ``image_model`` (e.g. ``flux``, ``qwen_image``, ``lumina2``), None for UNets.

    Set by ComfyUI's model detection in ``unet_config`` for every DiT in 0.3.75 and 0.33.0."""
    config = getattr(getattr(model_patcher, "model", None), "model_config", None)
    return None if config is None else config.unet_config.get("image_model")


def dit_context_dim(model_patcher) -> int | None:
    """Width of the text hidden states the DiT reads: Flux ``context_in_dim``, Qwen-Image
    ``joint_attention_dim`` (default 3584), Lumina 2 / Z-Image ``cap_feat_dim``."""
    config = model_patcher.model.model_config.unet_config
    family = dit_family(model_patcher)
    if family == "qwen_image":
        return config.get("joint_attention_dim", 3584)
    return config.get("context_in_dim", config.get("cap_feat_dim"))


def dit_hook_missing(family: str) -> str | None:
    """Why this ComfyUI cannot route ``family``'s joint attention, or None when it can.

    The Flux and Qwen-Image ``attn1_patch`` calls came after 0.3.75; the attention override
    (``wrap_attn``) exists in both versions but Lumina 2's joint attention passes it only in 0.33."""
    import comfy.ldm.modules.attention as attention

    if family not in DIT_FAMILIES:
        return (f"the connected model is a {family} DiT, whose joint attention has no patch point the pack uses; "
                f"regional attention supports {', '.join(sorted(DIT_FAMILIES))}")
    if not hasattr(attention, "wrap_attn"):
        return "this ComfyUI has no attention override (optimized_attention_override); update ComfyUI to 0.33 or later"
    if family in ("flux", "flux2", "chroma"):
        import comfy.ldm.flux.layers as layers

        blocks = (layers.DoubleStreamBlock.forward, layers.SingleStreamBlock.forward)
    elif family == "qwen_image":
        import comfy.ldm.qwen_image.model as qwen

        blocks = (qwen.Attention.forward,)
    else:
        import comfy.ldm.lumina.model as lumina

        if "transformer_options" not in lumina.JointAttention.forward.__code__.co_varnames:
            return f"this ComfyUI's {family} attention takes no transformer options; update ComfyUI to 0.33 or later"
        return None
    if not all("attn1_patch" in block.__code__.co_consts for block in blocks):
        return f"this ComfyUI's {family} blocks have no attn1_patch hook; update ComfyUI to 0.33 or later"
    return None


def dit_text_pad_multiple(model_patcher) -> int:
    """Lumina 2 / Z-Image pad the caption to a multiple of ``pad_tokens_multiple`` inside the model
    (1: no padding; Flux.2's padding to 512 happens in ``extra_conds``, before the context reaches it)."""
    if dit_family(model_patcher) != "lumina2":
        return 1
    return int(getattr(model_patcher.get_model_object("diffusion_model"), "pad_tokens_multiple", None) or 1)


def dit_pads_text_left(family: str) -> bool:
    """Flux.2 pads a short prompt on the left (``model_base.Flux2.extra_conds``), so the prompt ends the text."""
    return family == "flux2"


def dit_patch_size(model_patcher) -> int:
    return int(model_patcher.get_model_object("diffusion_model").patch_size)


def add_attention_override(model_patcher, override) -> None:
    """Install ``override(func, q, k, v, heads, mask=..., **kwargs)`` as ComfyUI's attention override
    on ``model_patcher`` (a clone you own). The slot holds one function: an override already there
    (another pack's) is kept and called as the ``func`` this one passes on, so both act."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    previous = options.get(ATTENTION_OVERRIDE)
    if previous is None:
        options[ATTENTION_OVERRIDE] = override
        return

    def chained(func, *args, **kwargs):
        return override(lambda *a, **k: previous(func, *a, **k), *args, **kwargs)

    options[ATTENTION_OVERRIDE] = chained


def latent_layout(model) -> tuple[int | None, int]:
    """``(pixels per latent cell or None, spatial axes + frame axes)`` of a ModelPatcher's latent
    format. ``spacial_downscale_ratio`` is new in 0.33 (0.3.75's formats do not say: None, and
    the caller falls back on the channel count); ``latent_dimensions`` (3 for Qwen-Image's
    ``[B,C,T,h,w]``) is in both versions."""
    latent_format = model.get_model_object("latent_format")
    return getattr(latent_format, "spacial_downscale_ratio", None), latent_format.latent_dimensions


def sampling_model_options(outer_sample_executor) -> dict:
    """The ``model_options`` one sampling run uses, from inside an OUTER_SAMPLE wrapper.

    ``CFGGuider.sample`` copies the model's options (nested dicts) into ``guider.model_options``
    before calling the OUTER_SAMPLE wrappers, in 0.3.75 and 0.33 alike: changes there last one run.
    """
    guider = outer_sample_executor.class_obj
    return guider.model_options


# --------------------------------------------------------------------------- model-patch ControlNets

# The transformer-patch lists core's model-patch ControlNets install into (ModelPatcher
# ``set_model_noise_refiner_patch`` / ``set_model_double_block_patch``), in the order the model calls them.
MODEL_PATCH_CONTROL_SLOTS = ("noise_refiner", "double_block")
# Core's model-patch ControlNets (``comfy_extras/nodes_model_patch.py``): ``DiffSynthCnetPatch`` (Apply Qwen
# Image DiffSynth ControlNet, 0.3.75 and 0.33) and ``ZImageControlPatch`` (Apply Z-Image Fun ControlNet, 0.33).
# Each adds its control residual to the first image tokens, in place, from a block patch. Known by class
# name: ComfyUI loads that file as the module ``nodes_model_patch``, so importing ``comfy_extras.`` gives
# other class objects.
MODEL_PATCH_CONTROLS = ("DiffSynthCnetPatch", "ZImageControlPatch")


def replace_model_patch_controls(model_patcher, replace) -> int:
    """In ``model_patcher`` (a clone you own), put ``replace(patch)`` in place of every core model-patch
    ControlNet in its transformer patches (None removes it). One patch object installed in several lists
    (Z-Image Fun's noise-refiner and double-block patch) gets one replacement. Every other patch keeps its
    place. Returns how many core ControlNet patches were found.

    The model the user connected keeps its own lists: ``ModelPatcher.clone`` copies them in 0.33
    (``copy_nested_dicts``) and deep-copies the whole ``model_options``, patches included, in 0.3.75."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    replaced: dict[int, object] = {}
    for slot in MODEL_PATCH_CONTROL_SLOTS:
        if slot not in patches:
            continue
        kept = []
        for patch in patches[slot]:
            if type(patch).__name__ in MODEL_PATCH_CONTROLS:
                if id(patch) not in replaced:
                    replaced[id(patch)] = replace(patch)
                patch = replaced[id(patch)]
            if patch is not None:
                kept.append(patch)
        patches[slot] = kept
    return len(replaced)
