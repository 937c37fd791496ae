"""The pack's V3 extension: the one list of node classes ComfyUI registers."""
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


class SelectiveControlExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*MASK_NODES, *FINDING_NODES, *CONTROL_NODES, *REGION_NODES, *BLENDING_NODES, *EVALUATION_NODES,
                *TRAINING_NODES, *FILE_NODES, *EDITING_NODES]


async def comfy_entrypoint() -> SelectiveControlExtension:
    return SelectiveControlExtension()
