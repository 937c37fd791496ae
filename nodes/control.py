"""Control nodes (thin V3 wrappers): masked control images, pose from an image, masked ControlNet and
masked model-patch ControlNet."""
from __future__ import annotations

import numpy as np
import torch

from comfy_api.latest import io, ui

from .models import annotators
from .models import pose as pose_models
from .ops import control as control_ops
from .ops.regions import mask_overlay
from .ops.shapes import as_mask, as_rgb, broadcast_batch, resize_mask
from .sampling.masked_control import apply_masked_control
from .sampling.model_patch_control import mask_model_patch_controls
from .types import PoseKeypoint

CATEGORY = "selective_control/control"


class SCMaskedControlImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCMaskedControlImage",
            display_name="Masked Control Image (SC)",
            category=CATEGORY,
            description=(
                "Make a control image (edges, line art, depth, normals, pose) only for the masked subject, at the "
                "input's exact size. mask_then_annotate puts the subject on a flat fill so the annotator sees only it; "
                "annotate_then_mask annotates the whole image and keeps the mask's part. Annotator weights are read "
                "from models/annotators (controlnet_aux layout), loaded once and cached; nothing is downloaded."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The picture to annotate."),
                io.Mask.Input("mask", tooltip="Where the control applies (resized to the image, bilinear; a batch of 1 "
                                              "applies to every image)."),
                io.Combo.Input("annotator", options=list(annotators.ANNOTATOR_NAMES), default="canny",
                               tooltip="Which control image to make. canny (edges) and openpose (body pose found by MediaPipe, drawn as an "
                                       "OpenPose skeleton) need no files; the others need their file in "
                                       "models/annotators/lllyasviel/Annotators/ (see the README's model table)."),
                io.Combo.Input("mode", options=list(control_ops.MODES), default="mask_then_annotate",
                               tooltip="mask_then_annotate: annotate only the subject on a flat fill. "
                                       "annotate_then_mask: annotate the whole image, then keep the mask's part."),
                io.Int.Input("feather", default=0, min=0, max=512, step=1,
                             tooltip="Soften the mask edge inwards over this many pixels (nothing outside the mask "
                                     "gets control)."),
                io.Combo.Input("fill", options=list(control_ops.NEUTRAL_FILLS), default="grey",
                               tooltip="Colour that replaces everything outside the mask in mask_then_annotate mode."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=64,
                             tooltip="Shorter side the neural annotators run at; the result is resized back to the "
                                     "input's size. canny and openpose run at the input's own size."),
                io.Int.Input("canny_low", default=100, min=0, max=255, tooltip="Canny: lower hysteresis threshold."),
                io.Int.Input("canny_high", default=200, min=0, max=255, tooltip="Canny: upper hysteresis threshold."),
            ],
            outputs=[
                io.Image.Output("control_image", display_name="control_image", tooltip="The control image, input size, black outside the mask."),
                io.Mask.Output("control_mask", display_name="control_mask", tooltip="The (feathered) mask the control image was limited to; "
                                                       "connect it to Apply ControlNet With Mask (SC)."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, annotator, mode, feather, fill, resolution, canny_low, canny_high) -> io.NodeOutput:
        def annotate(batch: torch.Tensor) -> torch.Tensor:
            return annotators.annotate(annotator, batch, resolution, canny_low, canny_high)

        control, control_mask = control_ops.masked_control_image(image, mask, annotate, mode, fill, float(feather))
        return io.NodeOutput(control, control_mask)


class SCPoseFromImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCPoseFromImage",
            display_name="MediaPipe Pose as OpenPose (SC)",
            category=CATEGORY,
            description=(
                "Finds each person's body pose with Google's MediaPipe (not the OpenPose network) and draws it as an "
                "OpenPose skeleton in the standard colours, so OpenPose ControlNets can use it. Also gives the "
                "keypoints (OpenPose JSON in pixels) and one mask per person shaped like the body. For several "
                "people give one mask per person: with one image, each mask is one person."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Picture(s) with people."),
                io.Mask.Input("person_masks", optional=True,
                              tooltip="Optional: one mask (or box-shaped mask) per person. With a single image, a "
                                      "batch of P masks gives P people; with B images, one mask per image (or one "
                                      "for all). Without it, the most prominent person of each image is used."),
                io.Float.Input("min_confidence", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Keypoints less visible than this are left out of the skeleton and the mask."),
                io.Int.Input("mask_margin", default=8, min=0, max=256, step=1,
                             tooltip="Grow each person mask by this many pixels."),
            ],
            outputs=[
                io.Image.Output("pose_image", display_name="pose_image", tooltip="Skeletons of all people on black, one image per input image."),
                PoseKeypoint.Output("keypoints", display_name="keypoints", tooltip="Per image: OpenPose-style people with 18 body keypoints "
                                                         "(x, y in pixels, confidence; 0,0,0 when missing)."),
                io.Mask.Output("pose_masks", display_name="pose_masks", tooltip="One mask per person (P for a single image with P masks, "
                                                       "otherwise one per image)."),
            ],
        )

    @classmethod
    def execute(cls, image, min_confidence, mask_margin, person_masks=None) -> io.NodeOutput:
        image = as_rgb(image)
        batch, height, width = image.shape[:3]
        masks = None
        if person_masks is not None:
            masks = resize_mask(as_mask(person_masks, "person_masks"), height, width)
            if batch > 1:  # one person per image
                _, masks = broadcast_batch(image[..., 0], masks, ("image", "person_masks"))
            masks = masks.cpu().numpy()
        if masks is None:
            people = [[None]] * batch
        else:
            people = [list(masks)] if batch == 1 else [[m] for m in masks]
        poses_per_image = pose_models.detect_poses(control_ops.to_uint8(image), people, min_confidence)
        drawn = [control_ops.draw_pose(poses, height, width, min_confidence) for poses in poses_per_image]
        keypoints = [control_ops.pose_keypoint_dict(poses, height, width) for poses in poses_per_image]
        person = [control_ops.pose_person_mask(p, height, width, mask_margin, min_confidence)
                  for poses in poses_per_image for p in poses]
        pose_image = control_ops.from_uint8(np.stack(drawn))
        person = torch.stack(person)
        people = [m[None] for m in person] if batch == 1 else [person]  # one colour per person
        return io.NodeOutput(pose_image, keypoints, person, ui=ui.PreviewImage(mask_overlay(people, image), cls=cls))


class SCApplyControlNetMasked(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCApplyControlNetMasked",
            display_name="Apply ControlNet With Mask (SC)",
            category=CATEGORY,
            description=(
                "Like core Apply ControlNet (Advanced), plus a mask: the ControlNet (or T2I-Adapter) steers the "
                "picture only inside the mask, at every step. Chain several, each with its own image, strength, "
                "range and mask. A white mask gives exactly core's result, a black mask no effect."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning to add the control to."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning to add the control to."),
                io.ControlNet.Input("control_net", tooltip="A ControlNet or T2I-Adapter from a core loader."),
                io.Image.Input("image", tooltip="The control image (e.g. from Masked Control Image (SC))."),
                io.Mask.Input("mask", tooltip="Where the control acts, in the control image's frame (resized to it, "
                                              "bilinear). A batch of 1 applies to every latent."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Control strength, as in core (0 leaves the conditioning unchanged)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control stops."),
                io.Boolean.Input("exact_outside", default=False,
                                 tooltip="Also keep the model's output outside the mask exactly as without this "
                                         "control (the UNet otherwise spreads some influence past the mask edge): "
                                         "runs each conditioning with and without the control and blends the "
                                         "outputs by the mask. Costs one more model pass per masked control."),
                io.Vae.Input("vae", optional=True, tooltip="Only for ControlNets that need a VAE (as in core)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the masked control."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the masked control."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, control_net, image, mask, strength, start_percent, end_percent,
                exact_outside=False, vae=None) -> io.NodeOutput:
        image = as_rgb(image)
        mask = resize_mask(as_mask(mask), image.shape[1], image.shape[2])
        if mask.shape[0] not in (1, image.shape[0]) and image.shape[0] != 1:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} and image {tuple(image.shape)}: give one mask, or one per "
                "control image"
            )
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not be after end_percent ({end_percent})")
        pos, neg = apply_masked_control(positive, negative, control_net, image, mask, strength, start_percent,
                                        end_percent, vae, exact_outside)
        return io.NodeOutput(pos, neg)


class SCMaskModelPatchControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCMaskModelPatchControl",
            display_name="Limit Model Patch ControlNet To Mask (SC)",
            category=CATEGORY,
            description=(
                "Put it right after core's Apply Z-Image Fun ControlNet or Apply Qwen Image DiffSynth ControlNet: "
                "that control then steers the picture only inside the mask, at every step. A white mask gives "
                "exactly core's result, a black mask no control. Other patches on the model keep working. For "
                "several controls, each with its own mask, follow each core node with one of these."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model coming out of core's Apply Z-Image Fun ControlNet or "
                                                "Apply Qwen Image DiffSynth ControlNet."),
                io.Mask.Input("mask", tooltip="Where the control acts, in the control image's frame (fitted to the "
                                              "picture the way core fits the control image). A batch of 1 applies "
                                              "to every latent. Not the same as core's own mask input, which tells "
                                              "the control model what to inpaint."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the control limited to the mask."),
            ],
        )

    @classmethod
    def execute(cls, model, mask) -> io.NodeOutput:
        return io.NodeOutput(mask_model_patch_controls(model, mask))


CONTROL_NODES: list[type[io.ComfyNode]] = [SCMaskedControlImage, SCPoseFromImage, SCApplyControlNetMasked,
                                           SCMaskModelPatchControl]
