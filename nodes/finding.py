"""Finding nodes (thin V3 wrappers): load SAM / CLIP, find objects, remove backgrounds, skip images without the object."""
from __future__ import annotations

import json
import logging

import torch

import comfy.model_management
import comfy.utils
from comfy_api.latest import io, ui
from comfy_execution.graph import ExecutionBlocker

from .models import list_models
from .models import clip_matcher as clip_models
from .models import rembg_models, sam as sam_models
from .ops import finding as finding_ops
from .ops.regions import mask_overlay
from .ops.shapes import as_rgb
from .ops.shapes import as_image, fit_mask_to_image
from .types import ClipMatcher, Found, SamModel

CATEGORY = "selective_control/finding"


def _intermediate(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(comfy.model_management.intermediate_device())


class SCLoadSAM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCLoadSAM",
            display_name="Load SAM (SC)",
            category=CATEGORY,
            description="Loads Meta's Segment Anything (SAM) from models/sams: the model that outlines objects. "
            "Any size (vit_b, vit_l, vit_h) works; it is told from the weights, not the file name.",
            inputs=[
                io.Combo.Input("model_name", options=list_models("sams"),
                               tooltip="Checkpoint in models/sams, e.g. sam_vit_b_01ec64.pth (official SAM v1 files)."),
            ],
            outputs=[SamModel.Output(display_name="sam", tooltip="The SAM model; connect it to Find Objects by Name (SC).")],
        )

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(sam_models.load_sam(model_name))


class SCLoadCLIPMatcher(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCLoadCLIPMatcher",
            display_name="Load CLIP Matcher (SC)",
            category=CATEGORY,
            description="Loads a CLIP model from models/clip_matcher: it tells which outline shows which named "
            "object (it needs both the image and the text part of CLIP).",
            inputs=[
                io.Combo.Input("model_name", options=clip_models.list_choices(),
                               tooltip="A folder with config.json + model.safetensors, or a single .safetensors "
                               "file, under models/clip_matcher (e.g. openai/clip-vit-base-patch32)."),
            ],
            outputs=[ClipMatcher.Output(display_name="clip_matcher", tooltip="The CLIP model; connect it to Find Objects by Name (SC) or Region Prompt Score (SC).")],
        )

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(clip_models.load_clip_matcher(model_name))


class SCFindObjects(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCFindObjects",
            display_name="Find Objects by Name (SC)",
            category=CATEGORY,
            description="Finds the named objects in every photo and gives their masks: CLIP points at likely places, "
            "SAM outlines what is there, and CLIP picks the outline that best matches a name (and not a negative "
            "name). 'automatic' lets SAM outline everything first (slow), with the same choice by CLIP.",
            inputs=[
                io.Image.Input("image", tooltip="Photos to search (a batch is searched image by image)."),
                SamModel.Input("sam", tooltip="SAM from 'Load SAM (SC)'."),
                ClipMatcher.Input("clip_matcher", tooltip="CLIP from 'Load CLIP Matcher (SC)'."),
                io.String.Input("class_names", multiline=True, default="",
                                tooltip="Objects to find, one per line or comma-separated (e.g. 'shoe', 'handbag')."),
                io.String.Input("negative_names", multiline=True, default="background",
                                tooltip="Things that are not the object (e.g. 'background, table, hand'); a mask "
                                "more like these than like a class name never matches. Empty uses 'background'."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Minimum CLIP probability of a class name for a mask to count as found."),
                io.Combo.Input("merge", options=list(finding_ops.MERGE_MODES), default="best",
                               tooltip="'best': the single best matching mask; 'all': union of every matching mask."),
                io.Combo.Input("mode", options=list(finding_ops.FIND_MODES), default="guided",
                               tooltip="'guided': few prompts chosen by CLIP (fast); 'automatic': SAM's automatic "
                               "mask generator on a full point grid (slow, for comparison)."),
                io.String.Input("prompt_template", default="a photo of a {}",
                                tooltip="Text given to CLIP for each name; {} is replaced by the name."),
                io.Int.Input("max_prompts", default=16, min=1, max=256,
                             tooltip="Point prompts taken from CLIP's relevance map (guided mode)."),
                io.Float.Input("pred_iou_thresh", default=0.88, min=0.0, max=1.0, step=0.01,
                               tooltip="Drop outlines SAM itself rates below this quality, 0..1 (SAM's default 0.88; SAM calls it pred_iou_thresh)."),
                io.Float.Input("stability_thresh", default=0.95, min=0.0, max=1.0, step=0.01,
                               tooltip="Drop unsteady outlines: ones whose shape changes a lot when SAM's cut-off moves (default 0.95)."),
                io.Float.Input("dedupe_iou", default=0.85, min=0.0, max=1.0, step=0.01,
                               tooltip="Masks overlapping more than this (IoU) are duplicates; the better one stays."),
                io.Int.Input("amg_points_per_side", default=32, min=1, max=128,
                             tooltip="Point grid of the automatic mode (SAM's default 32 = 1024 prompts)."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="Found object per image (all zeros where not found)."),
                Found.Output(display_name="found", tooltip="Per image: was the object found (for 'Filter By Found (SC)')."),
                io.String.Output(display_name="scores", tooltip="JSON: per image, every candidate mask with its "
                                 "label, score and box, best first."),
                io.Image.Output(display_name="preview", tooltip="The photos with the chosen masks and labels drawn."),
            ],
        )

    @classmethod
    def execute(cls, image, sam, clip_matcher, class_names, negative_names, threshold, merge, mode, prompt_template,
                max_prompts=16, pred_iou_thresh=0.88, stability_thresh=0.95, dedupe_iou=0.85,
                amg_points_per_side=32) -> io.NodeOutput:
        names = finding_ops.require_class_names(class_names)
        known = set(names)
        negatives = [n for n in finding_ops.names_from_lines(negative_names, "negative_names") if n not in known] \
            or list(finding_ops.DEFAULT_NEGATIVES)
        texts = finding_ops.prompt_texts(names + negatives, prompt_template)
        images = as_rgb(image)
        settings = finding_ops.FinderSettings(max_points=max_prompts, pred_iou_thresh=pred_iou_thresh,
                                      stability_thresh=stability_thresh, dedupe_iou=dedupe_iou)
        comfy.model_management.load_models_gpu([sam, clip_matcher])
        segmenter = sam_models.SAMSegmenter(sam.model, amg_points_per_side, pred_iou_thresh, stability_thresh)
        matcher = clip_matcher.model
        text_embeds = matcher.encode_text(texts)
        progress = comfy.utils.ProgressBar(images.shape[0])
        results, masks, previews = [], [], []
        for item in images:
            comfy.model_management.throw_exception_if_processing_interrupted()
            result = finding_ops.find_in_image(item.to(segmenter.device), segmenter, matcher, text_embeds, names, threshold,
                                       settings, mode)
            results.append(result)
            masks.append(finding_ops.merged_mask(result, merge, item.shape[0], item.shape[1]))
            previews.append(finding_ops.found_preview(item, result, merge))
            progress.update(1)
        found = [r.found for r in results]
        logging.info("selective_control: found the object in %d of %d images", sum(found), len(found))
        previews = torch.stack(previews)
        return io.NodeOutput(_intermediate(torch.stack(masks)), found, finding_ops.report(results), _intermediate(previews),
                             ui=ui.PreviewImage(previews, cls=cls))


class SCRemoveBackground(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCRemoveBackground",
            display_name="Remove Background (SC)",
            category=CATEGORY,
            description="Masks the main subject of every image with a rembg model from models/rembg (nothing is "
            "downloaded) and returns the mask and the subject on black.",
            inputs=[
                io.Image.Input("image", tooltip="Photos whose subject to cut out (RGBA and greyscale are converted)."),
                io.Combo.Input("model", options=rembg_models.list_choices(),
                               tooltip="rembg model file in models/rembg, named as rembg names it (u2net.onnx, "
                               "u2netp.onnx, isnet-general-use.onnx, ...)."),
                io.Boolean.Input("alpha_matting", default=False,
                                 tooltip="Refine the edge with alpha matting (slower; helps hair and fur)."),
                io.Int.Input("foreground_threshold", default=240, min=0, max=255,
                             tooltip="Alpha matting: mask values above this are surely subject."),
                io.Int.Input("background_threshold", default=10, min=0, max=255,
                             tooltip="Alpha matting: mask values below this are surely background."),
                io.Int.Input("erode_size", default=10, min=0, max=255,
                             tooltip="Alpha matting: width of the unsure band around the edge, in pixels."),
                io.Boolean.Input("post_process", default=False,
                                 tooltip="Smooth the mask with rembg's morphological post-processing."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="Subject alpha per image, 0..1."),
                io.Image.Output(display_name="cutout", tooltip="The image times the mask (subject on black)."),
            ],
        )

    @classmethod
    def execute(cls, image, model, alpha_matting, foreground_threshold=240, background_threshold=10, erode_size=10,
                post_process=False) -> io.NodeOutput:
        images = as_rgb(image)
        session = rembg_models.new_session(model)
        progress = comfy.utils.ProgressBar(images.shape[0])
        masks = []
        for item in images:
            comfy.model_management.throw_exception_if_processing_interrupted()
            alpha = rembg_models.remove_background(session, finding_ops.to_uint8(item), alpha_matting, foreground_threshold,
                                                   background_threshold, erode_size, post_process)
            masks.append(torch.from_numpy(alpha))
            progress.update(1)
        mask = torch.stack(masks).to(images.device, images.dtype)
        return io.NodeOutput(_intermediate(mask), _intermediate(images * mask[..., None]),
                             ui=ui.PreviewImage(mask_overlay([mask], images), cls=cls))


class SCFilterByFound(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCFilterByFound",
            display_name="Filter By Found (SC)",
            category=CATEGORY,
            description="Passes on only the images in which the object was found, with their masks and original batch "
            "indices; when none was found it stops this branch (the rest of the queue still runs).",
            inputs=[
                io.Image.Input("images", tooltip="The image batch that was searched."),
                io.Mask.Input("masks", tooltip="Masks for the images (batch of 1 or the same batch size; resized "
                              "to the images bilinearly)."),
                Found.Input("found", tooltip="The 'found' output of 'Find Objects by Name (SC)'."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Images that contain the object."),
                io.Mask.Output(display_name="masks", tooltip="Their masks."),
                io.String.Output(display_name="indices", tooltip="JSON list of their indices in the input batch."),
                io.Int.Output(display_name="count", tooltip="How many images passed (0 when the branch is stopped)."),
            ],
        )

    @classmethod
    def execute(cls, images, masks, found) -> io.NodeOutput:
        images = as_image(images, "images")
        flags = [bool(f) for f in found]
        if len(flags) != images.shape[0]:
            raise ValueError(
                f"'found' has {len(flags)} entries but the image batch has shape {tuple(images.shape)}; connect the "
                "images that went into 'Find Objects by Name (SC)' (the same batch)"
            )
        images, masks = fit_mask_to_image(masks, images)
        keep = [i for i, flag in enumerate(flags) if flag]
        if not keep:
            logging.warning("selective_control: no image in the batch of %d contains the object; branch stopped",
                            len(flags))
            blocked = ExecutionBlocker(None)
            return io.NodeOutput(blocked, blocked, blocked, 0)
        index = torch.tensor(keep, device=images.device)
        return io.NodeOutput(images.index_select(0, index), masks.index_select(0, index.to(masks.device)),
                             json.dumps(keep), len(keep))


FINDING_NODES: list[type[io.ComfyNode]] = [SCLoadSAM, SCLoadCLIPMatcher, SCFindObjects, SCRemoveBackground,
                                           SCFilterByFound]
