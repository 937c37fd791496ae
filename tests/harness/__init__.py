"""Test harness: a real in-process ComfyUI, tiny real-architecture models, a workflow runner."""
from .comfy import (
    COMFYUI_DIR,
    REPO_ROOT,
    PromptError,
    PromptResult,
    benchmark_import,
    boot,
    box_mask_nodes,
    node_error_message,
    pack_import,
    run_prompt,
    workspace,
    write_model_file,
)

__all__ = [
    "COMFYUI_DIR",
    "REPO_ROOT",
    "PromptError",
    "PromptResult",
    "benchmark_import",
    "boot",
    "box_mask_nodes",
    "node_error_message",
    "pack_import",
    "run_prompt",
    "workspace",
    "write_model_file",
]
