"""Folder loading and saving under the source file names (thin V3 wrappers over ops.files)."""
from __future__ import annotations

import json
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from .ops import files as ops
from .ops.shapes import as_image
from .sampling import compat

CATEGORY = "selective_control/files"
NAMES_TOOLTIP = "JSON list of file names without suffix, one per image (from Load Image Folder (SC))."
# The pack's example photos (scripts/make_examples.py). Not "examples": ComfyUI serves a pack's workflow
# templates from the first of example_workflows/example/examples/workflow/workflows that exists.
EXAMPLES = Path(__file__).resolve().parents[1] / "example_inputs"
EXAMPLE_FOLDER_PREFIX = "pack examples/"


def _folder_choices() -> list[str]:
    """The input folder's subfolders, then the pack's example folders (so shipped workflows run as shipped)."""
    return folder_paths.get_input_subfolders() + ops.example_folders(EXAMPLES, EXAMPLE_FOLDER_PREFIX)


def _folder_path(folder: str) -> Path:
    """The folder a Load Image Folder value names, inside the input folder or the pack's examples."""
    if folder.startswith(EXAMPLE_FOLDER_PREFIX):
        return ops.inside_folder(folder.removeprefix(EXAMPLE_FOLDER_PREFIX), [EXAMPLES], "folder",
                                 "the pack's example_inputs folder")
    return ops.inside_folder(folder, [folder_paths.get_input_directory()], "folder", "ComfyUI's input folder")


class SCLoadImageFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCLoadImageFolder",
            display_name="Load Image Folder (SC)",
            category=CATEGORY,
            description="Every photo of a folder inside ComfyUI's input folder, one after another (sorted by file "
                        "name; sizes may differ): the nodes after it run once per photo, and each photo keeps its "
                        "file name so results can be saved under it. 'pack examples/...' are the pack's own photos. "
                        "ComfyUI keeps every photo's results until the run ends, so memory grows with the folder: "
                        "for hundreds of photos run the workflow per photo with `python -m catalog` (docs/catalog.md).",
            inputs=[io.Combo.Input("folder", options=_folder_choices(),
                                   tooltip="A folder inside ComfyUI's input folder (e.g. input/catalog), or one of "
                                           "the pack's example folders.")],
            outputs=[
                io.Image.Output("images", display_name="image", tooltip="One photo at a time, in file-name order.",
                                is_output_list=True),
                io.String.Output("names", display_name="names", is_output_list=True,
                                 tooltip="The photo's file name without suffix, as a JSON list of one name (for "
                                         "Save Images Named (SC))."),
                io.Int.Output("count", display_name="count", tooltip="How many photos the folder has."),
            ],
        )

    @classmethod
    def execute(cls, folder: str) -> io.NodeOutput:
        files = ops.list_images(_folder_path(folder))
        images, names = ops.load_each(files)
        return io.NodeOutput(images, [json.dumps([name]) for name in names], len(names))

    @classmethod
    def fingerprint_inputs(cls, folder: str) -> str:
        """Re-run when the folder's files change (added, removed or rewritten)."""
        try:
            files = ops.list_images(_folder_path(folder))
            return json.dumps([(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files])
        except (OSError, ValueError) as error:  # execute reports it; outside the folders nothing was looked at
            return repr(error)


class SCSelectNames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCSelectNames",
            display_name="Select Names (SC)",
            category=CATEGORY,
            description="Keeps the file names of the images a filter passed on (Filter By Found's indices), so the "
                        "names still match the images after the skip step.",
            inputs=[
                io.String.Input("names", force_input=True, tooltip=NAMES_TOOLTIP),
                io.String.Input("indices", force_input=True,
                                tooltip="JSON list of the kept batch indices (Filter By Found's indices)."),
            ],
            outputs=[io.String.Output("names_out", display_name="names", tooltip="The kept names, in index order.")],
        )

    @classmethod
    def execute(cls, names: str, indices: str) -> io.NodeOutput:
        return io.NodeOutput(json.dumps(ops.select_names(ops.names_from_json(names), indices)))


class SCSaveImagesNamed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCSaveImagesNamed",
            display_name="Save Images Named (SC)",
            category=CATEGORY,
            description="Saves each image as <output>/<subfolder>/<its name>.png, so results keep their source photo's "
                        "name. An existing file of that name is kept by default (the new one gets a counter, as core "
                        "Save Image counts); if_exists can skip or replace instead. The workflow is embedded as in "
                        "core Save Image (unless ComfyUI runs with --disable-metadata).",
            is_output_node=True,
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            inputs=[
                io.Image.Input("images", tooltip="The images to save."),
                io.String.Input("names", force_input=True, tooltip=NAMES_TOOLTIP + " Must match the image batch."),
                io.String.Input("subfolder", default="named", tooltip="Folder inside ComfyUI's output folder."),
                # Last, so UI workflows saved before it keep their widget order; optional, so API prompts saved
                # before it still validate (and get the default, which never destroys a file).
                io.Combo.Input("if_exists", options=list(ops.IF_EXISTS), default=ops.ADD_COUNTER, optional=True,
                               tooltip="When <name>.png is there already: 'add counter' keeps it and writes "
                                       "<name>_00001_.png (never destroys a file); 'skip' keeps it and writes "
                                       "nothing; 'replace' overwrites it (a re-run updates its own results)."),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, images, names: str, subfolder: str, if_exists: str = ops.ADD_COUNTER) -> io.NodeOutput:
        images = as_image(images, "images")
        names = ops.names_from_json(names)
        if len(names) != images.shape[0]:
            raise ValueError(f"{len(names)} names for a batch of {images.shape[0]} images: connect the names of these "
                             "images (after a filter, through Select Names)")
        root = Path(folder_paths.get_output_directory())
        paths = ops.named_paths(root, subfolder, names)
        metadata = compat.png_metadata(cls)  # core's prompt/workflow PNG text chunks
        written = [ops.save_png(image, path, metadata, if_exists) for image, path in zip(images, paths)]
        folder = paths[0].parent.relative_to(root.resolve()).as_posix() if paths else ""
        saved = [{"filename": p.name, "subfolder": "" if folder == "." else folder, "type": "output"}
                 for p in written if p is not None]
        return io.NodeOutput(ui={"images": saved})


class SCLoadExampleImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCLoadExampleImage",
            display_name="Load Example Image (SC)",
            category=CATEGORY,
            description="One of the example photos that ship with the pack (public-domain and CC0 photos from "
                        "scikit-image), so the shipped workflows run on a fresh install. For your own photo use core "
                        "Load Image instead.",
            inputs=[io.Combo.Input("image", options=ops.example_images(EXAMPLES),
                                   tooltip="Which example photo (files in the pack's example_inputs folder).")],
            outputs=[io.Image.Output("image_out", display_name="image", tooltip="The photo, as Load Image gives it.")],
        )

    @classmethod
    def execute(cls, image: str) -> io.NodeOutput:
        path = ops.inside_folder(image, [EXAMPLES], "image", "the pack's example_inputs folder")
        if not ops.is_image_file(path):
            raise ValueError(f"image {image!r} is not one of the pack's example photos: pick one from the list "
                             f"({', '.join(ops.example_images(EXAMPLES))})")
        images, _ = ops.load_batch([path])
        return io.NodeOutput(images)


FILE_NODES: list[type[io.ComfyNode]] = [SCLoadImageFolder, SCSelectNames, SCSaveImagesNamed, SCLoadExampleImage]
