"""nodes/sampling/compat.py on the ComfyUI it runs on, and ComfyUI behaviour that changed between
0.3.75 and 0.33 that the pack depends on."""
import comfy.controlnet
import comfy.model_management
import comfy.utils
import pytest
import torch

from harness import pack_import

compat = pack_import("nodes.sampling.compat")


def test_every_step_reaches_the_progress_hook_even_when_core_throttles():
    """0.33's ProgressBar.update_absolute drops updates less than 100 ms apart; training's hook
    call (where main.py raises a cancel) must still run at every step, on both versions."""
    calls = []
    bar = comfy.utils.ProgressBar(5, node_id="train")
    bar.hook = lambda value, total, preview, prompt_id=None, node_id=None: calls.append((value, total, node_id))
    for step in range(1, 6):
        compat.report_every_step(bar, step, 5)
    assert calls == [(i, 5, "train") for i in range(1, 6)]
    assert bar.current == 5


def test_a_cancel_raised_by_the_hook_reaches_the_caller_at_that_step():
    def hook(value, total, preview, prompt_id=None, node_id=None):
        if value == 2:
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()

    bar = comfy.utils.ProgressBar(4)
    bar.hook = hook
    compat.report_every_step(bar, 1, 4)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        compat.report_every_step(bar, 2, 4)
    assert not comfy.model_management.processing_interrupted()


def test_outside_a_prompt_there_is_no_executing_node_and_progress_text_is_a_no_op():
    assert compat.executing_node_id() is None
    compat.send_progress_text("step 1/1", None)  # no server, no node: nothing to send, no error


# ------------------------------------------------------------ BaseModel._apply_model copies transformer_options


def test_instances_build_one_expansion_per_call_and_share_it_between_controlnet_and_unet_wrapper(monkeypatch):
    """ComfyUI 0.33's ``BaseModel._apply_model`` shallow-copies ``transformer_options`` before the
    UNet (0.3.75 passes the caller's dict on). Instances mode keeps its expansion in the options
    that core's cond batching hands to both the ControlNet and the APPLY_MODEL wrapper, outside
    that copy: per model call both must see the same dict and the same expansion, built once."""
    from test_regions import assert_close_to_scale, cond, counted_sample, instance_regions, sample, tiny_models

    regional = pack_import("nodes.sampling.regions")
    instances = pack_import("nodes.sampling.instances")
    model = tiny_models.unet("sd15")
    m, p, n, _ = regional.apply_regions(model, cond("sd15", 0), cond("sd15", 1), instance_regions("sd15"),
                                        "instances", 0)
    seen, built = [], []
    share, build = instances.expansion, instances._expansion
    monkeypatch.setattr(instances, "expansion", lambda options, rows: seen.append((options, share(options, rows)))
                        or seen[-1][1])
    monkeypatch.setattr(instances, "_expansion", lambda *args: built.append(args[2]) or build(*args))
    unet_options = []
    hook = m.model.diffusion_model.register_forward_pre_hook(
        lambda module, args, kwargs: unet_options.append(kwargs["transformer_options"]), with_kwargs=True)
    try:
        batched, unet_rows, net_rows = counted_sample(m, p, n, [tiny_models.controlnet("sd15")], steps=3)
    finally:
        hook.remove()
    assert built == [2] * 3 and unet_rows == [5] * 3 and net_rows == [3] * 3
    assert len(seen) == 6  # per call: the ControlNet, then the UNet wrapper
    for (control_options, control_plan), (wrapper_options, wrapper_plan) in zip(seen[::2], seen[1::2]):
        assert wrapper_options is control_options and wrapper_plan is control_plan is not None
    assert len(unet_options) == 3 and all(o is not s[0] for o, s in zip(unet_options, seen[::2]))
    assert_close_to_scale(batched, sample(model, p, n, steps=3), 1e-5)  # ComfyUI alone on the same conds


# ------------------------------------------------------------ every loaded UNet has requires_grad off (0.33)


def test_the_adapter_trains_through_a_unet_whose_weights_have_gradients_off():
    """0.33 calls ``diffusion_model.requires_grad_(False)`` on every model it builds (0.3.75 leaves
    them on). Training must still train its adapter through the frozen UNet, and leave the UNet's
    weights and flags as they were. On 0.3.75 the flags are switched off by hand, so both legs
    run the same case.

    Dynamic VRAM (0.33's ``ModelPatcherDynamic``, NVIDIA with torch >= 2.8) cannot be forced
    here: on a CPU load device core builds a plain ModelPatcher. What it changes needs a GPU to
    test: the UNet's weights are streamed per layer instead of resident, so the training loop's
    swap of inference-mode weights (``_without_inference_tensors``) and the backward pass through
    streamed weights are untested on it."""
    import comfy.model_patcher
    from test_training import _benchmark, adapters, loop, task

    patcher = _benchmark().micro_model(7)
    unet = patcher.model.diffusion_model
    if hasattr(comfy.model_patcher, "ModelPatcherDynamic"):  # 0.33: core already did it
        assert not any(p.requires_grad for p in unet.parameters())
    unet.requires_grad_(False)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    latents, hints, masks, cond = task()
    initial = adapters.fresh_adapter(patcher, 3)
    result = loop.train_local_control(patcher, initial, latents, hints, masks, cond,
                                      loop.TrainConfig(steps=2, learning_rate=1e-3, batch_size=2))
    trained = dict(result.adapter.t2i_model.named_parameters())
    changed = [name for name, p in initial.t2i_model.named_parameters() if not torch.equal(p, trained[name])]
    assert len(changed) == len(trained)  # every adapter weight got a gradient through the frozen UNet
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert not any(p.requires_grad for p in unet.parameters())


# ------------------------------------------------------------ ControlBase.multigpu_clones (0.33)

multigpu = pytest.mark.skipif(not hasattr(comfy.controlnet.ControlBase(), "multigpu_clones"),
                              reason="ComfyUI 0.3.75 has no MultiGPU (ControlBase.multigpu_clones is new in 0.33)")


def _prepare_for_two_devices(positive, negative, model):
    """Core's MultiGPU preparation of the conds' controls (``preprocess_multigpu_conds``), with one
    extra device: the CPU again, the only one here."""
    import types

    import comfy.sampler_helpers

    extra = types.SimpleNamespace(load_device=torch.device("cpu"))
    stub = types.SimpleNamespace(get_additional_models_with_key=lambda key: [extra] if key == "multigpu" else [])
    conds = {"positive": [{"control": options["control"]} for _, options in positive if "control" in options],
             "negative": [{"control": options["control"]} for _, options in negative if "control" in options]}
    comfy.sampler_helpers.preprocess_multigpu_conds(conds, stub, {})
    return extra.load_device


@multigpu
def test_masked_controlnet_gives_multigpu_a_device_copy_that_samples_identically():
    from test_masked_controlnet import NEG, POS, _hint, probe, tiny_models

    masked_control = pack_import("nodes.sampling.masked_control")
    net = tiny_models.controlnet("sd15")
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :40] = 1.0
    pos, neg = masked_control.apply_masked_control(POS, NEG, net, _hint(3), mask, 0.8, 0.0, 1.0)
    original = pos[0][1]["control"]
    device = _prepare_for_two_devices(pos, neg, None)
    clone = original.get_instance_for_device(device)
    assert isinstance(clone, masked_control.MaskedControl) and clone is not original
    assert torch.equal(clone.mask, original.mask) and clone.strength == original.strength
    assert clone.inner.control_model is not original.inner.control_model  # its own copy of the weights
    on_device = [[t, {**o, "control": clone}] for t, o in pos], [[t, {**o, "control": clone}] for t, o in neg]
    _, expected = probe(pos, neg, steps=2)
    _, actual = probe(*on_device, steps=2)
    assert torch.equal(actual, expected)


@multigpu
def test_instances_mode_refuses_multigpu_with_what_to_do():
    from test_regions import cond, instance_regions, tiny_models

    regional = pack_import("nodes.sampling.regions")
    _, p, n, _ = regional.apply_regions(tiny_models.unet("sd15"), cond("sd15", 0), cond("sd15", 1),
                                        instance_regions("sd15"), "instances", 0)
    with pytest.raises(ValueError, match=r"instances mode does not run under ComfyUI's MultiGPU.*Set Apply "
                                         r"Regions' mode to attention, or sample this model on one GPU"):
        _prepare_for_two_devices(p, n, None)
