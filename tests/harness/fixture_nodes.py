"""One shape for the test-only nodes that put a harness value into a prompt (loaders, fixed masks).

ComfyUI's legacy node form: ``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``; the executor runs
these exactly like a core node. Register the class in ``nodes.NODE_CLASS_MAPPINGS`` under ``name``.
"""
from __future__ import annotations

from typing import Callable


def choice(options) -> tuple[list]:
    """A combo input over ``options`` (e.g. the tiny models' architectures)."""
    return (list(options),)


def fixture_node(name: str, description: str, outputs: tuple[str, ...], make: Callable,
                 inputs: dict | None = None) -> type:
    """A test-only node class named ``name`` whose one function returns ``make(*input values)``.

    ``inputs``: the required inputs as ``INPUT_TYPES`` spells them (none by default), passed to
    ``make`` in that order; ``make`` returns the value of a single output, or a tuple with one
    value per output.
    """
    required = dict(inputs or {})

    def run(self, **values):  # the executor passes inputs by name
        result = make(*(values[key] for key in required))
        return result if len(outputs) > 1 else (result,)

    return type(name, (), {
        "__doc__": description,
        "__module__": getattr(make, "__module__", __name__),
        "INPUT_TYPES": classmethod(lambda cls: {"required": dict(required)}),
        "RETURN_TYPES": tuple(outputs),
        "FUNCTION": "run",
        "CATEGORY": "testing",
        "run": run,
    })
