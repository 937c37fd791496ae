"""Run UI-format workflows (as the ComfyUI frontend saves them) through the in-process ComfyUI.

The UI -> API conversion is the catalog runner's (``catalog/convert.py``, one converter for
the tests and the runner); this module adds the node definitions, built in-process the way
``GET /object_info`` builds them, and runs the converted prompt with ComfyUI's executor.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import traceback
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from catalog.convert import (  # noqa: F401  (re-exported for the tests)
    VIRTUAL_NODE_TYPES,
    WorkflowError,
    _ordered_inputs,
    _widget_kind,
    process_dynamic_prompt,
)
from catalog.convert import ui_to_api as _ui_to_api

from . import comfy


# ---------------------------------------------------------------------------------------
# Node definitions, the way GET /object_info builds them
# ---------------------------------------------------------------------------------------

def _server_node_info():
    """ComfyUI's own ``node_info`` (a closure inside ``PromptServer.__init__``, without free
    variables), rebuilt as a function over server.py's globals so no PromptServer is needed."""
    import server

    for const in server.PromptServer.__init__.__code__.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == "node_info" and not const.co_freevars:
            return types.FunctionType(const, vars(server), "node_info")
    raise RuntimeError(
        "server.PromptServer.__init__ no longer defines a plain node_info(): update "
        "tests/harness/workflow.object_info for this ComfyUI version"
    )


def object_info(names: Iterable[str] | None = None) -> dict[str, dict]:
    """Node definitions as ``GET /object_info`` returns them, built in-process (ComfyUI booted)."""
    comfy.boot()
    import folder_paths
    import nodes

    node_info = _server_node_info()
    out = {}
    with folder_paths.cache_helper:
        for name in names if names is not None else list(nodes.NODE_CLASS_MAPPINGS):
            try:
                out[name] = node_info(name)
            except Exception:
                logging.error(f"[ERROR] An error occurred while retrieving information for the '{name}' node.")
                logging.error(traceback.format_exc())
    return out


def installed_frontend_version() -> str | None:
    """The frontend package this ComfyUI serves (it decides the prompt-only widgets)."""
    try:
        return importlib.metadata.version("comfyui-frontend-package")
    except importlib.metadata.PackageNotFoundError:
        return None


def ui_to_api(workflow: dict, object_info: dict, **options) -> dict:
    """catalog.convert.ui_to_api for the frontend installed beside this ComfyUI."""
    options.setdefault("frontend_version", installed_frontend_version())
    return _ui_to_api(workflow, object_info, **options)


def load_workflow(path_or_dict: str | Path | dict) -> tuple[dict, str]:
    if isinstance(path_or_dict, dict):
        return path_or_dict, "<workflow dict>"
    path = Path(path_or_dict)
    return json.loads(path.read_text(encoding="utf-8")), str(path)


def run_workflow(path_or_dict: str | Path | dict, outputs: list[str] | None = None) -> comfy.PromptResult:
    """Convert a UI-format workflow (file or dict) and execute it with ComfyUI's executor."""
    workflow, source = load_workflow(path_or_dict)
    types_used = {n.get("type") for n in workflow.get("nodes", [])} - VIRTUAL_NODE_TYPES
    prompt = ui_to_api(workflow, object_info([t for t in types_used if _registered(t)]), source=source)
    return comfy.run_prompt(prompt, outputs)


def _registered(node_type: Any) -> bool:
    import nodes

    return node_type in nodes.NODE_CLASS_MAPPINGS
