"""The one place that reads ComfyUI internals that are not an extension point, per version."""
from __future__ import annotations


def sampling_model_options(outer_sample_executor) -> dict:
    """The ``model_options`` one sampling run uses, from inside an OUTER_SAMPLE wrapper.

    ``CFGGuider.sample`` copies the model's options (nested dicts) into ``guider.model_options``
    before calling the OUTER_SAMPLE wrappers, in 0.3.75 and 0.33 alike: changes there last one run.
    """
    guider = outer_sample_executor.class_obj
    return guider.model_options
