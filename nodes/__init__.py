"""The pack's V3 extension: the one list of node classes ComfyUI registers, each held to its inputs' ranges."""
import functools

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .blending import BLENDING_NODES
from .control import CONTROL_NODES
from .editing import EDITING_NODES
from .evaluation import EVALUATION_NODES
from .files import FILE_NODES
from .finding import FINDING_NODES
from .masks import MASK_NODES
from .regions import REGION_NODES
from .training import TRAINING_NODES

NODES: list[type[io.ComfyNode]] = [*MASK_NODES, *FINDING_NODES, *CONTROL_NODES, *REGION_NODES, *BLENDING_NODES,
                                   *EVALUATION_NODES, *TRAINING_NODES, *FILE_NODES,
                                   *EDITING_NODES]


def input_ranges(node: type[io.ComfyNode]) -> dict[str, tuple[float | None, float | None]]:
    """``{input: (min, max)}`` of the node's INT and FLOAT inputs."""
    return {i.id: (i.min, i.max) for i in node.define_schema().inputs if isinstance(i, (io.Int.Input, io.Float.Input))}


def check_ranges(node_id: str, ranges: dict, values: dict) -> None:
    """A clear error for a number outside its input's range (or NaN). ComfyUI checks typed-in values, but no
    version checks a value linked from another node: without this a linked radius of 10^6 or a NaN would
    reach the maths (int32 overflow, out-of-memory) instead of an error."""
    for name, (low, high) in ranges.items():
        value = values.get(name)
        for number in value if isinstance(value, list) else [value]:  # is_input_list nodes get lists
            if isinstance(number, (int, float)) and not (
                    (low is None or number >= low) and (high is None or number <= high)):
                raise ValueError(f"{node_id}: {name} is {number}, outside its range {low}..{high}: give a value in "
                                 "that range (a value that comes from another node too)")


def _held_to_ranges(node: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """``node`` whose execute first checks its number inputs' ranges (linked values included)."""
    execute = node.__dict__["execute"].__func__
    if getattr(execute, "checks_ranges", False):
        return node
    node_id, ranges = node.define_schema().node_id, input_ranges(node)

    @functools.wraps(execute)
    def checked(cls, *args, **kwargs):
        check_ranges(node_id, ranges, kwargs)
        return execute(cls, *args, **kwargs)

    checked.checks_ranges = True
    setattr(node, "execute", classmethod(checked))
    return node


class SelectiveControlExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [_held_to_ranges(node) for node in NODES]


async def comfy_entrypoint() -> SelectiveControlExtension:
    return SelectiveControlExtension()
