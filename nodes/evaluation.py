"""Evaluation nodes: numbers (and a chart) for how well a regional edit kept, changed, followed prompts and poses."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

import comfy.model_management
from comfy_api.latest import io, ui

from .models import pose as pose_models
from .ops import charts, metrics
from .ops import control as control_ops
from .ops import finding as finding_ops
from .ops.shapes import as_mask, as_rgb, resize_mask
from .types import ClipMatcher, PoseKeypoint

CATEGORY = "selective_control/evaluation"
MASK_MEANINGS = ("edited area", "kept area")


def _mean(values: list[float]) -> float:
    """Batch mean that ignores NaN (empty areas); NaN only when every item is NaN."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _finite(value):
    """Non-finite floats as strings, recursively, so any JSON reader accepts the report."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _report(scores: dict[str, list[float]]) -> str:
    """JSON text per image; inf and NaN are written as strings so any JSON reader accepts it."""
    count = len(next(iter(scores.values())))
    return json.dumps(_finite([{k: v[i] for k, v in scores.items()} for i in range(count)]), indent=1)


class SCPreservationScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCPreservationScore",
            display_name="Preservation Score (SC)",
            category=CATEGORY,
            description=(
                "Measures how exactly a result kept the source where it had to (PSNR, SSIM and the largest "
                "pixel difference outside the edited area) and how much it changed inside it. Use it to check "
                "that a product or background stayed untouched."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("source", tooltip="The image before the edit."),
                io.Image.Input("result", tooltip="The image after the edit, at the source's size."),
                io.Mask.Input("mask", tooltip="The region the edit was meant to change (or keep, see mask_marks); resized to the images."),
                io.Combo.Input("mask_marks", options=list(MASK_MEANINGS), default=MASK_MEANINGS[0],
                               tooltip="Whether white in the mask marks the edited area or the area that had to be kept."),
            ],
            outputs=[
                io.Float.Output("psnr_outside", display_name="psnr_outside", tooltip="Mean PSNR over the kept area in dB (inf when identical)."),
                io.Float.Output("ssim_outside", display_name="ssim_outside", tooltip="Mean SSIM over the kept area (1 = identical)."),
                io.Float.Output("max_abs_diff_outside", display_name="max_abs_diff_outside", tooltip="Largest pixel difference in the kept area (0..1)."),
                io.Float.Output("mean_change_inside", display_name="mean_change_inside", tooltip="Mean absolute change in the edited area (0..1)."),
                io.String.Output("report", display_name="report", tooltip="Per-image scores as JSON."),
                io.Image.Output("chart", display_name="chart", tooltip="The per-image scores as a bar chart."),
            ],
        )

    @classmethod
    def execute(cls, source: torch.Tensor, result: torch.Tensor, mask: torch.Tensor, mask_marks: str) -> io.NodeOutput:
        edited = 1.0 - mask if mask_marks == "kept area" else mask
        scores = metrics.preservation(source, result, edited)
        labels = [f"image {i}" for i in range(len(scores["psnr_outside"]))]
        chart = charts.bar_chart(
            "Kept area: SSIM, max diff | edited area: mean change",
            labels,
            {k: scores[k] for k in ("ssim_outside", "max_abs_diff_outside", "mean_change_inside")},
        )
        return io.NodeOutput(
            *(_mean(scores[k]) for k in ("psnr_outside", "ssim_outside", "max_abs_diff_outside", "mean_change_inside")),
            _report(scores),
            chart,
            ui=ui.PreviewImage(chart, cls=cls),
        )


class SCSeamScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCSeamScore",
            display_name="Seam Score (SC)",
            category=CATEGORY,
            description=(
                "Detects visible seams: gradient energy in a band along the mask's edge divided by the energy "
                "just around it. About 1 means the region blends in; clearly above 1 means a visible edge or halo."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The result to inspect."),
                io.Mask.Input("mask", tooltip="The region whose edge may show a seam; resized to the image."),
                io.Int.Input("band_px", default=4, min=1, max=256,
                             tooltip="Half-width in pixels of the band along the edge; the surroundings reach 3x as far."),
            ],
            outputs=[
                io.Float.Output("seam_ratio", display_name="seam_ratio", tooltip="Batch mean of band energy / surrounding energy."),
                io.String.Output("report", display_name="report", tooltip="Per-image ratio and energies as JSON."),
                io.Image.Output("chart", display_name="chart", tooltip="The per-image seam ratios as a bar chart."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, mask: torch.Tensor, band_px: int) -> io.NodeOutput:
        scores = metrics.seam_score(image, mask, band_px)
        labels = [f"image {i}" for i in range(len(scores["seam_ratio"]))]
        chart = charts.bar_chart("Seam ratio (1 = seamless)", labels, {"seam ratio": scores["seam_ratio"]})
        return io.NodeOutput(_mean(scores["seam_ratio"]), _report(scores), chart, ui=ui.PreviewImage(chart, cls=cls))


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SCRegionScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCRegionScore",
            display_name="Region Prompt Score (SC)",
            category=CATEGORY,
            description=(
                "Checks that every region shows its own prompt and not its neighbours': CLIP compares each region's "
                "masked crop with every region's text. The diagonal is each region's CLIP score; a row whose "
                "largest value is off the diagonal means another region's prompt leaked into it."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("image", tooltip="The result to inspect (each image of a batch is scored)."),
                io.Mask.Input("region_masks", tooltip="One mask per region (a batch of masks), resized to the image."),
                io.String.Input("region_texts", multiline=True, default="",
                                tooltip="One text per line, in the order of the masks (e.g. 'a red car')."),
                ClipMatcher.Input("clip_matcher", tooltip="CLIP from 'Load CLIP Matcher (SC)'."),
            ],
            outputs=[
                io.Float.Output("mean_clip_score", display_name="mean_clip_score", tooltip="Mean cosine similarity of each crop to its own text."),
                io.Float.Output("worst_margin", display_name="worst_margin", tooltip="Smallest (own score - best other score); below 0 = leaked."),
                io.String.Output("report", display_name="report", tooltip="JSON per image: the texts, the crop x text matrix and per-region scores."),
                io.Image.Output("heatmap", display_name="heatmap", tooltip="The crop x text matrix (batch mean) as a heatmap."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, region_masks: torch.Tensor, region_texts: str,
                clip_matcher) -> io.NodeOutput:
        texts = [line.strip() for line in region_texts.splitlines() if line.strip()]
        images = as_rgb(image)
        masks = resize_mask(as_mask(region_masks, "region_masks"), images.shape[1], images.shape[2]) > 0.5
        if len(texts) != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} region masks but {len(texts)} region texts; give one text per line, "
                             "in the order of the masks")
        comfy.model_management.load_models_gpu([clip_matcher])
        matcher, settings = clip_matcher.model, finding_ops.FinderSettings()
        text_embeds = matcher.encode_text(texts)
        matrices, reports = [], []
        for item in images:
            crops = finding_ops.masked_crops(item, masks, settings.crop_size, settings.crop_padding)
            matrix = metrics.leakage_matrix(matcher.encode_images(crops), text_embeds).cpu()
            matrices.append(matrix)
            reports.append({"texts": texts, "matrix": matrix.tolist(), "regions": metrics.region_report(matrix, texts)})
        mean = torch.stack(matrices).mean(0)
        labels = [_short(t) for t in texts]
        heatmap = charts.heatmap("CLIP similarity: region crop (row) x region text (column)", mean.tolist(),
                                 [f"region {i}: {t}" for i, t in enumerate(labels)], labels)
        margins = [r["margin"] for report in reports for r in report["regions"]]
        worst = min((m for m in margins if not math.isnan(m)), default=math.nan)
        return io.NodeOutput(float(mean.diagonal().mean()), worst, json.dumps(_finite(reports), indent=1), heatmap, ui=ui.PreviewImage(heatmap, cls=cls))


def _target_region(pose: np.ndarray, height: int, width: int) -> np.ndarray:
    """A box-shaped mask around a target person's keypoints, to find that person in the result."""
    region = np.zeros((height, width), dtype=np.float32)
    visible = pose[pose[:, 2] > 0, :2]
    if visible.shape[0]:
        x0, y0 = np.clip(np.floor(visible.min(0)).astype(int), 0, [width - 1, height - 1])
        x1, y1 = np.clip(np.ceil(visible.max(0)).astype(int) + 1, 1, [width, height])
        region[y0:y1, x0:x1] = 1.0
    return region


class SCPoseScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCPoseScore",
            display_name="Pose Score (SC)",
            category=CATEGORY,
            description=(
                "How closely the people in a result follow a target pose: the pose is detected in the result with "
                "the same MediaPipe detector as 'MediaPipe Pose as OpenPose (SC)' and compared keypoint by keypoint: PCK (share of "
                "keypoints within a threshold of the person's size) and the mean error in pixels."
            ),
            is_output_node=True,
            inputs=[
                PoseKeypoint.Input("target_pose", tooltip="The wanted pose (POSE_KEYPOINT, e.g. from 'MediaPipe Pose as OpenPose (SC)'); "
                                                          "one entry for all images or one per image."),
                io.Image.Input("image", tooltip="The result whose people should stand in the target pose."),
                io.Float.Input("threshold", default=0.1, min=0.001, max=1.0, step=0.005,
                               tooltip="A keypoint counts as right within this fraction of the person's box size."),
                io.Float.Input("min_confidence", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Detected keypoints less visible than this count as missing."),
            ],
            outputs=[
                io.Float.Output("pck", display_name="pck", tooltip="Share of body keypoints in the right place (PCK), over people and images: 1 = every keypoint in place."),
                io.Float.Output("mean_error_px", display_name="mean_error_px", tooltip="Mean keypoint distance in pixels (found keypoints only)."),
                io.String.Output("report", display_name="report", tooltip="JSON per image and person: PCK, error, keypoints compared."),
                io.Image.Output("chart", display_name="chart", tooltip="PCK per person as a bar chart."),
            ],
        )

    @classmethod
    def execute(cls, target_pose, image: torch.Tensor, threshold: float, min_confidence: float) -> io.NodeOutput:
        images = as_rgb(image)
        batch, height, width = images.shape[:3]
        targets = target_pose if isinstance(target_pose, list) else [target_pose]
        if len(targets) not in (1, batch):
            raise ValueError(f"{len(targets)} target poses for {batch} images; give one for all or one per image")
        target_poses = [metrics.poses_from_keypoints(targets[b if len(targets) > 1 else 0], height, width).numpy()
                        for b in range(batch)]
        regions = [[None] if len(target) == 1 else [_target_region(p, height, width) for p in target]
                   for target in target_poses]
        found_poses = pose_models.detect_poses(control_ops.to_uint8(images), regions, min_confidence)
        scores: dict[str, list[float]] = {"pck": [], "mean_error_px": []}
        reports, labels = [], []
        for b, (target, found) in enumerate(zip(target_poses, found_poses)):
            people = metrics.pose_errors(torch.from_numpy(target), torch.from_numpy(found), threshold)
            reports.append(people)
            for p, person in enumerate(people):
                labels.append(f"image {b} person {p}")
                for key in scores:
                    scores[key].append(person[key])
        chart = charts.bar_chart(f"PCK@{threshold:g} per person", labels, {"pck": scores["pck"]})
        return io.NodeOutput(_mean(scores["pck"]), _mean(scores["mean_error_px"]), json.dumps(_finite(reports), indent=1), chart,
                             ui=ui.PreviewImage(chart, cls=cls))


EVALUATION_NODES: list[type[io.ComfyNode]] = [SCPreservationScore, SCRegionScore, SCPoseScore, SCSeamScore]
