"""Editing nodes (thin V3 wrappers over ops.editing): crop for an edit model, stitch its edit back exactly."""
from __future__ import annotations

import json

import comfy.model_management
from comfy_api.latest import io

from .ops import editing as edit_ops
from .types import EditStitch

CATEGORY = "selective_control/editing"


class SCCropForEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCCropForEdit",
            display_name="Crop For Edit (SC)",
            category=CATEGORY,
            description=(
                "Cuts the masked part of a picture out with context, at the size the edit model prefers "
                "(Qwen-Image-Edit: about 1024x1024 in multiples of 32; Flux Kontext: its resolution list; Flux.2: "
                "multiples of 16), so the edit model changes only that part at full detail. Several masks (a mask "
                "batch) give several crops of one size, edited together in one batch and stitched back into one "
                "picture by Stitch Edit Back. At the border the window shifts inward; only a window larger than "
                "the picture is padded (the edge pixel repeats, never a mirror image)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The picture to edit (a batch of pictures takes one mask each)."),
                io.Mask.Input("mask", tooltip="What to change (pixels >= 0.5). A batch of masks on one picture gives "
                                              "one crop per mask. Resized to the picture (bilinear) if its size differs."),
                io.Combo.Input("model_family", options=list(edit_ops.FAMILIES), default="qwen_image_edit",
                               tooltip="The edit model the crops go to; it sets their size. 'any' uses multiple_of "
                                       "and megapixels below."),
                io.Int.Input("margin", default=96, min=0, max=4096, step=8,
                             tooltip="Context around the mask's box, in picture pixels: the model sees it, and Stitch "
                                     "Edit Back measures the model's drift on it. More margin = a surer match."),
                io.Int.Input("multiple_of", default=16, min=1, max=256, step=1,
                             tooltip="With model_family 'any': both sides of the crop are multiples of this."),
                io.Float.Input("megapixels", default=0.0, min=0.0, max=16.0, step=0.05,
                               tooltip="Pixel budget of a crop in megapixels (1.0 = 1024x1024). 0 = the family's "
                                       "own (1.0); Kontext always uses its resolution list."),
            ],
            outputs=[
                io.Image.Output(display_name="crops", tooltip="The crops, one per mask, all one size: the edit model's input."),
                io.Mask.Output(display_name="crop_masks", tooltip="Each mask cut and scaled like its crop."),
                EditStitch.Output(display_name="stitch", tooltip="Where each crop came from; connect it to Stitch Edit Back."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, model_family: str, margin: int, multiple_of: int, megapixels: float) -> io.NodeOutput:
        stitch = edit_ops.crop_for_edit(image, mask, model_family, margin, multiple_of, megapixels)
        return io.NodeOutput(stitch.crops, stitch.crop_masks, stitch)


class SCStitchEditBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCStitchEditBack",
            display_name="Stitch Edit Back (SC)",
            category=CATEGORY,
            description=(
                "Puts the edited crops back into the picture. Edit models shift, zoom and turn their output a little: "
                "this node measures that drift on the part of the crop outside the mask and warps the edit back "
                "before stitching; when nothing outside the mask matches (the edit replaced everything, or noise) "
                "it does not warp and says so. Changes the model made outside the mask are reported (and, if you "
                "allow it, the mask grows to cover those nearby). Pixels outside the grown, feathered mask are the "
                "source picture's, bit for bit, at full resolution."
            ),
            inputs=[
                EditStitch.Input("stitch", tooltip="stitch from Crop For Edit (SC)."),
                io.Image.Input("edited", tooltip="The edit model's decoded output: one image per crop, in order. "
                                                 "Another size is resized to the crops' size first."),
                io.Boolean.Input("register", default=True,
                                 tooltip="Measure the edit's shift / zoom / rotation and undo it. Off = a plain stitch."),
                io.Int.Input("feather", default=16, min=0, max=512, step=1,
                             tooltip="Soft edge in picture pixels, outward from the (grown) mask: the stitch weight "
                                     "falls from 1 on the mask to 0 this far outside it."),
                io.Int.Input("grow_limit", default=0, min=0, max=1024, step=1,
                             tooltip="Grow the stitch mask over changes the edit made outside the mask, up to this "
                                     "many picture pixels from it. 0 = keep the mask as it is."),
                io.Float.Input("change_threshold", default=0.12, min=0.01, max=1.0, step=0.01,
                               tooltip="A pixel outside the mask counts as changed when the aligned edit differs from "
                                       "the source by more than this (mean over the colour channels, 0..1)."),
                io.Boolean.Input("colour_match", default=False,
                                 tooltip="Match the edit's colour mean / spread to the source in a ring just outside "
                                         "the stitch, so a tone shift of the model does not show as a patch."),
                io.Float.Input("max_zoom", default=0.1, min=0.0, max=0.5, step=0.01,
                               tooltip="Largest zoom to look for (0.1 = 10 % bigger or smaller)."),
                io.Float.Input("max_shift", default=0.25, min=0.0, max=0.5, step=0.01,
                               tooltip="Largest shift to look for, as a share of the crop's longest side."),
                io.Float.Input("min_confidence", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Warp only when the match outside the mask correlates at least this well "
                                       "(0 = unrelated picture or noise, 1 = the same picture)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The source picture with the edits stitched in."),
                io.Mask.Output(display_name="stitch_mask", tooltip="The stitch weight (grown and feathered mask); "
                                                                   "where it is 0 the picture is the source's exactly."),
                io.Mask.Output(display_name="change_mask",
                               tooltip="Where the edit also changed the picture outside the mask (1 = changed)."),
                io.Float.Output(display_name="change_score",
                                tooltip="Largest share of a crop's area outside its mask that the edit changed (0..1)."),
                io.Float.Output(display_name="confidence",
                                tooltip="Lowest registration confidence over the crops (0..1); 0 when not registered."),
                io.String.Output(display_name="report", tooltip="Per crop: the drift found, whether it was undone and "
                                                                "why, the change score and the pixels grown, as JSON."),
            ],
        )

    @classmethod
    def execute(cls, stitch, edited, register: bool, feather: int, grow_limit: int, change_threshold: float,
                colour_match: bool, max_zoom: float, max_shift: float, min_confidence: float) -> io.NodeOutput:
        if not isinstance(stitch, edit_ops.EditStitch):
            raise ValueError("stitch must come from a Crop For Edit (SC) node")
        result = edit_ops.stitch_edit(
            stitch, edited.to(stitch.source.device), register, feather, grow_limit, change_threshold, colour_match,
            max_shift=max_shift, max_zoom=max_zoom, min_confidence=min_confidence)
        report = [{"crop": i, "window": list(region.window), "registration": reg.describe(), "warped": reg.applied,
                   "confidence": round(reg.confidence, 4), "shift_px": [round(v, 3) for v in reg.shift],
                   "zoom": round(reg.zoom, 5), "rotation_deg": round(reg.rotation_degrees, 4),
                   "change_score": round(score, 5), "grown_px": grown}
                  for i, (region, reg, score, grown) in enumerate(zip(stitch.regions, result.registrations,
                                                                      result.change_scores, result.grown_px))]
        device = comfy.model_management.intermediate_device()
        return io.NodeOutput(result.image.to(device), result.weight.to(device), result.changes.to(device),
                             max(result.change_scores), min(r.confidence if r.applied else 0.0 for r in result.registrations),
                             json.dumps(report, indent=1))


EDITING_NODES: list[type[io.ComfyNode]] = [SCCropForEdit, SCStitchEditBack]
