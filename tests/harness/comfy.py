"""Boot a real ComfyUI in this process and run prompts through its own executor.

ComfyUI loads the pack the way it loads any custom node (``nodes.init_extra_nodes``),
from a temporary ``custom_nodes`` folder that holds only a link to this repository, so
the tests see exactly what a user's ComfyUI sees and nothing of other packs.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_PATH") or REPO_ROOT / ".comfyui").resolve()
PACK_FOLDER_NAME = "selective_control"

# Model folders whose files ship with ComfyUI and must keep pointing at it.
_SHIPPED_FOLDERS = {"custom_nodes", "configs"}


@dataclass
class Workspace:
    """The temporary folders a booted ComfyUI reads and writes in tests."""

    root: Path
    models: Path
    input: Path
    output: Path
    temp: Path


_state: dict[str, Any] = {}


def boot(pytorch_attention: bool = False) -> ModuleType:
    """Start ComfyUI (once per process) and return the pack module it loaded.

    ``pytorch_attention``: ComfyUI's ``--use-pytorch-cross-attention``, the attention NVIDIA users
    get by default (on a CPU ComfyUI picks sub-quadratic attention, which sizes its chunks from
    free memory, so timings would move with the machine's load)."""
    if "pack" in _state:
        return _state["pack"]
    if not (COMFYUI_DIR / "main.py").is_file():
        raise RuntimeError(f"No ComfyUI at {COMFYUI_DIR}: run `make test` (it unpacks one) or set COMFYUI_PATH.")
    sys.path.insert(0, str(COMFYUI_DIR))
    # These must be imported before `nodes`: nodes.py puts comfy/ on sys.path, after which a
    # bare `import utils` finds comfy/utils.py instead of ComfyUI's utils package.
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import utils.json_util  # noqa: F401
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    if pytorch_attention:
        args.use_pytorch_cross_attention = True
    import folder_paths

    workspace = _make_workspace(folder_paths)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    pack = _find_pack_module()
    _state.update(pack=pack, workspace=workspace)
    return pack


def _make_workspace(folder_paths: ModuleType) -> Workspace:
    root = Path(tempfile.mkdtemp(prefix="selective-control-tests-"))
    ws = Workspace(root, root / "models", root / "input", root / "output", root / "temp")
    for path in (ws.models, ws.input, ws.output, ws.temp, root / "custom_nodes"):
        path.mkdir(parents=True)
    (root / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    for name, (_, extensions) in list(folder_paths.folder_names_and_paths.items()):
        if name not in _SHIPPED_FOLDERS:
            folder_paths.folder_names_and_paths[name] = ([str(ws.models / name)], extensions)
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(root / "custom_nodes")], set())
    folder_paths.models_dir = str(ws.models)
    folder_paths.set_input_directory(str(ws.input))
    folder_paths.set_output_directory(str(ws.output))
    folder_paths.set_temp_directory(str(ws.temp))
    return ws


def _find_pack_module() -> ModuleType:
    init_file = (REPO_ROOT / "__init__.py").resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == init_file:
            return module
    raise RuntimeError("ComfyUI did not load the pack: look for 'IMPORT FAILED' in the log above.")


def name_pack_functions_by_path() -> int:
    """Give the pack's functions the module names of their files (``nodes.ops.masks``), for mutmut.

    ComfyUI imports the pack under its folder's path, but mutmut's trampolines pick the mutant to run
    by comparing a function's ``__module__`` with the file path's dotted name. Used only by
    ``make mutate`` (``MUTANT_UNDER_TEST`` set); returns how many functions were renamed."""
    prefix = f"{boot().__name__}."
    renamed = 0

    def rename(function, short: str, long: str) -> None:
        nonlocal renamed
        while callable(function) and getattr(function, "__module__", None) == long:
            function.__module__ = short
            renamed += 1
            function = getattr(function, "__wrapped__", None)

    for long, module in list(sys.modules.items()):
        if not long.startswith(prefix) or module is None:
            continue
        short = long[len(prefix):]
        for value in list(vars(module).values()):
            members = vars(value).values() if isinstance(value, type) and value.__module__ in (long, short) else [value]
            for member in members:
                for function in (member, getattr(member, "__func__", None), getattr(member, "fget", None)):
                    if inspect.isfunction(function):
                        rename(function, short, long)
    return renamed


def workspace() -> Workspace:
    boot()
    return _state["workspace"]


def pack_import(submodule: str) -> ModuleType:
    """Import ``<pack>.<submodule>`` from the package ComfyUI loaded (e.g. ``"nodes.ops.masks"``)."""
    return importlib.import_module(f"{boot().__name__}.{submodule}")


def benchmark_import(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a benchmark, or a shared ``_``-module of them), so a test can
    assert on a benchmark's own measurement or reuse its synthetic task."""
    folder = str(REPO_ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name)


def write_model_file(folder: str, name: str, data: bytes = b"") -> Path:
    """Create a file in the test models folder ``folder`` (e.g. ``"checkpoints"``)."""
    path = workspace().models / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class PromptError(AssertionError):
    """A prompt failed validation or execution; the message carries ComfyUI's own report."""


class _ServerStub:
    """The attributes of PromptServer that PromptExecutor reads; events are recorded."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.events.append((event, data))

    def queue_updated(self) -> None:
        pass


@dataclass
class PromptResult:
    """What one executed prompt produced."""

    outputs: dict[str, list]  # node id -> its raw outputs (one entry per output slot)
    ui: dict[str, dict]  # node id -> the UI output ComfyUI would send to the frontend
    events: list[tuple[str, Any]] = field(default_factory=list)

    def output(self, node_id: str, slot: int = 0) -> Any:
        """The value of one output slot (the single value, or the list for list outputs)."""
        value = self.outputs[node_id][slot]
        return value[0] if len(value) == 1 else value


_ids = itertools.count()


def run_prompt(prompt: dict, outputs: list[str] | None = None) -> PromptResult:
    """Validate and execute an API-format prompt with ComfyUI's PromptExecutor.

    ``outputs`` lists node ids to execute and return (any node, not only output nodes);
    by default the prompt's output nodes run, as when it is queued in the UI.
    """
    boot()
    import execution

    prompt_id = f"test-{next(_ids)}-{uuid.uuid4().hex[:6]}"
    valid, error, output_nodes, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid and not (outputs and error.get("type") == "prompt_no_outputs"):
        raise PromptError(f"prompt invalid: {error}\nnode errors: {node_errors}")
    server = _ServerStub()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args=_CACHE_ARGS)
    targets = list(outputs) if outputs else list(output_nodes)
    executor.execute(prompt, prompt_id, {}, targets)
    if not executor.success:
        failures = [data for event, data in executor.status_messages if event == "execution_error"]
        raise PromptError(_format_failure(failures[0]) if failures else "execution failed")
    collected = {}
    for node_id in prompt:
        entry = _cached_output(executor, node_id)
        if entry is not None:
            collected[node_id] = entry.outputs
    return PromptResult(collected, executor.history_result.get("outputs", {}), server.events)


# The executor's cache is ComfyUI internals; the versions differ here and nowhere else:
# 0.33 reads cache_args["ram_inactive"] (GB of headroom; 0.3.75 ignores it) and made
# the output cache's get() a coroutine.
_CACHE_ARGS = {"lru": 0, "ram": 0, "ram_inactive": 0}


def _cached_output(executor, node_id: str):
    entry = executor.caches.outputs.get(node_id)
    return asyncio.run(entry) if inspect.isawaitable(entry) else entry


def _format_failure(data: dict) -> str:
    return (
        f"node {data.get('node_id')} ({data.get('node_type')}) raised "
        f"{data.get('exception_type')}: {data.get('exception_message')}\n"
        + "".join(data.get("traceback", []))
    )


def box_mask_nodes(node: str, width: int, height: int, box: tuple[int, int, int, int]) -> dict:
    """Prompt nodes for a ``width x height`` mask, 1 inside ``box`` = (x, y, box width, box height)
    and 0 elsewhere, from core nodes (SolidMask twice, MaskComposite add); its output is ``[node, 0]``."""
    x, y, box_width, box_height = box
    return {
        f"{node}_canvas": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": width, "height": height}},
        f"{node}_box": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": box_width, "height": box_height}},
        node: {"class_type": "MaskComposite", "inputs": {"destination": [f"{node}_canvas", 0],
                                                         "source": [f"{node}_box", 0], "x": x, "y": y,
                                                         "operation": "add"}},
    }


def node_error_message(prompt: dict, outputs: list[str] | None = None) -> str:
    """Run a prompt that must fail and return ComfyUI's error message for it."""
    try:
        run_prompt(prompt, outputs)
    except PromptError as failure:
        return str(failure)
    raise AssertionError("the prompt was expected to fail but ran")


def cleanup() -> None:
    ws = _state.get("workspace")
    if ws is not None:
        shutil.rmtree(ws.root, ignore_errors=True)


def forget_dead_loaded_models() -> None:
    """Drop ComfyUI's loaded-model entries whose ModelPatcher (and its parent) no longer exists.

    Tests let model clones go between samplings. ComfyUI 0.33 keeps such an entry in
    ``current_loaded_models`` still marked in use, and core ControlNets that encode their hint with a
    VAE then get ``None`` from ``loaded_models(only_currently_used=True)`` and fail. A server keeps
    its clones alive in the output cache; this is the tests' bookkeeping, as ``cleanup_models`` does
    for entries whose model is gone.
    """
    import comfy.model_management as mm

    mm.current_loaded_models[:] = [entry for entry in mm.current_loaded_models if entry.model is not None]
