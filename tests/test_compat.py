"""nodes/sampling/compat.py on the ComfyUI it runs on, and ComfyUI behaviour that changed between
0.3.75 and 0.33 that the pack depends on."""
import comfy.model_management
import comfy.utils
import pytest

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
