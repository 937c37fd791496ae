"""Evaluation nodes: numbers (and a chart) for how well a regional edit kept and changed what it should."""
from __future__ import annotations

import json
import math

import torch
from comfy_api.latest import io, ui

from .ops import charts, metrics

CATEGORY = "selective_control/evaluation"
MASK_MEANINGS = ("edited area", "kept area")


def _mean(values: list[float]) -> float:
    """Batch mean that ignores NaN (empty areas); NaN only when every item is NaN."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _report(scores: dict[str, list[float]]) -> str:
    """JSON text per image; inf and NaN are written as strings so any JSON reader accepts it."""
    def clean(v: float) -> float | str:
        return v if math.isfinite(v) else str(v)

    count = len(next(iter(scores.values())))
    return json.dumps([{k: clean(v[i]) for k, v in scores.items()} for i in range(count)], indent=1)


class SCPreservationScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCPreservationScore",
            display_name="Preservation Score",
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
                io.Float.Output("psnr_outside", tooltip="Mean PSNR over the kept area in dB (inf when identical)."),
                io.Float.Output("ssim_outside", tooltip="Mean SSIM over the kept area (1 = identical)."),
                io.Float.Output("max_abs_diff_outside", tooltip="Largest pixel difference in the kept area (0..1)."),
                io.Float.Output("mean_change_inside", tooltip="Mean absolute change in the edited area (0..1)."),
                io.String.Output("report", tooltip="Per-image scores as JSON."),
                io.Image.Output("chart", tooltip="The per-image scores as a bar chart."),
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
            display_name="Seam Score",
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
                io.Float.Output("seam_ratio", tooltip="Batch mean of band energy / surrounding energy."),
                io.String.Output("report", tooltip="Per-image ratio and energies as JSON."),
                io.Image.Output("chart", tooltip="The per-image seam ratios as a bar chart."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, mask: torch.Tensor, band_px: int) -> io.NodeOutput:
        scores = metrics.seam_score(image, mask, band_px)
        labels = [f"image {i}" for i in range(len(scores["seam_ratio"]))]
        chart = charts.bar_chart("Seam ratio (1 = seamless)", labels, {"seam ratio": scores["seam_ratio"]})
        return io.NodeOutput(_mean(scores["seam_ratio"]), _report(scores), chart, ui=ui.PreviewImage(chart, cls=cls))


EVALUATION_NODES: list[type[io.ComfyNode]] = [SCPreservationScore, SCSeamScore]
