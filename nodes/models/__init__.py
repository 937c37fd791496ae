"""Model folders, file lookup, safe loading and a small cache that defers to ComfyUI's memory management.

Models live in ComfyUI's model folders (registered through ``folder_paths`` so
extra_model_paths.yaml works), in the folder names other packs already use. Nothing is
downloaded: a missing or broken file raises ModelFileError naming the folder, the file and
where to get it.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..ops.files import inside_folder

# folder name under models/ -> file extensions its loaders accept
MODEL_FOLDERS: dict[str, set[str]] = {
    "sams": {".pth", ".pt", ".safetensors"},
    "rembg": {".onnx"},
    "clip_matcher": {".safetensors", ".bin", ".json"},
    "annotators": {".pth", ".pt", ".safetensors", ".bin", ".onnx"},
    "mediapipe": {".task"},
}


class ModelFileError(RuntimeError):
    """A model file is missing, truncated or not the model the node expects."""


def register_model_folders() -> None:
    """Add the pack's folders under ComfyUI's models dir, keeping any paths users configured."""
    for name, extensions in MODEL_FOLDERS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        paths, known = folder_paths.folder_names_and_paths[name]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def list_models(folder: str) -> list[str]:
    """File names in a model folder, for a loader node's combo (empty list when none)."""
    return folder_paths.get_filename_list(folder)


def model_path(folder: str, filename: str, where_to_get: str) -> str:
    """Full path of ``filename`` in ``folder``, or an error that says where to put which file.

    The file must stay inside the folders ComfyUI lists for ``folder`` (models/<folder> and the ones
    extra_model_paths.yaml adds), links resolved (``ops.files.inside_folder``), whatever ComfyUI version."""
    roots = folder_paths.get_folder_paths(folder)
    searched = ", ".join(roots) or f"models/{folder}"
    if not filename:  # an empty folder leaves the loader's list empty
        raise ModelFileError(
            f"No model file chosen: models/{folder} has none (searched: {searched}). Put one there and refresh "
            f"the node list (press R in ComfyUI). Where to get it: {where_to_get}"
        )
    path = str(inside_folder(filename, roots, "model file", f"models/{folder} (or a {folder} folder of "
                                                            "extra_model_paths.yaml)"))
    if not os.path.isfile(path):
        raise ModelFileError(
            f"Model file '{filename}' was not found in models/{folder} (searched: {searched}). "
            f"Put it there and refresh the node list (press R in ComfyUI). Where to get it: {where_to_get}"
        )
    return path


def load_state_dict(path: str, where_to_get: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch file, loaded with ``weights_only=True``."""
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as error:  # every loader failure means the same thing to the user
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ModelFileError(
            f"Could not read model file {path} ({size} bytes): {error}. The file is truncated, corrupt "
            f"or not a weights file; download it again. Where to get it: {where_to_get}"
        ) from error


class ModelCache:
    """Keeps the last few loaded models (as ModelPatchers) keyed by file and settings.

    Weights stay on ComfyUI's offload device between uses; ``use`` hands the patcher to
    ``comfy.model_management.load_models_gpu`` so ComfyUI decides when to move it to the GPU
    and when to evict it. The small LRU bounds the RAM this cache can hold.
    """

    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, comfy.model_patcher.ModelPatcher] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], torch.nn.Module]) -> comfy.model_patcher.ModelPatcher:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        module = load().eval()
        patcher = comfy.model_patcher.ModelPatcher(
            module,
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        self._entries[key] = patcher
        while len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            logging.debug("selective_control: released cached model %s", evicted)
        return patcher

    @staticmethod
    def use(patcher: comfy.model_patcher.ModelPatcher) -> torch.nn.Module:
        """Load the model onto ComfyUI's compute device (through its manager) and return it."""
        comfy.model_management.load_models_gpu([patcher])
        return patcher.model


def file_key(path: str, *settings: Hashable) -> tuple:
    """Cache key that changes when the file on disk is replaced."""
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, *settings)


register_model_folders()
