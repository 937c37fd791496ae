"""Small charts rendered to ComfyUI IMAGE tensors, so numbers can be read at a glance in the graph.

Uses matplotlib's object API (no pyplot global state, safe from any thread) and imports it
only when a chart is drawn, so loading the pack stays fast.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _figure(width_px: int, height_px: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _to_image(figure) -> torch.Tensor:
    figure.tight_layout()
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0).unsqueeze(0)


def bar_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float]], width_px: int = 640,
              height_px: int = 360) -> torch.Tensor:
    """Grouped bars: one group per label, one bar per series; non-finite values are drawn as 0 and marked."""
    figure = _figure(width_px, height_px)
    axes = figure.add_subplot()
    count = max(1, len(series))
    bar_width = 0.8 / count
    positions = np.arange(len(labels))
    for index, (name, values) in enumerate(series.items()):
        finite = [v if math.isfinite(v) else 0.0 for v in values]
        bars = axes.bar(positions + index * bar_width, finite, bar_width, label=name)
        for bar, value in zip(bars, values):
            text = "inf" if value == math.inf else ("n/a" if not math.isfinite(value) else f"{value:.3g}")
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(positions + bar_width * (count - 1) / 2, labels)
    axes.set_title(title)
    if len(series) > 1:
        axes.legend(fontsize=8)
    return _to_image(figure)


def heatmap(title: str, matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str],
            width_px: int = 560, height_px: int = 480) -> torch.Tensor:
    """A labelled matrix with its values written in the cells (e.g. region crops x region texts)."""
    figure = _figure(width_px, height_px)
    axes = figure.add_subplot()
    data = np.asarray(matrix, dtype=np.float64)
    image = axes.imshow(data, cmap="viridis")
    axes.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
    axes.set_yticks(range(len(row_labels)), row_labels)
    high = np.nanmax(data) if data.size else 0.0
    for (row, col), value in np.ndenumerate(data):
        axes.text(col, row, f"{value:.2f}", ha="center", va="center", color="black" if value > 0.6 * high else "white")
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    return _to_image(figure)


SMOOTHED_POINTS = 50  # a run longer than this is drawn as its running mean over len / 50 steps


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of each value and the ``window - 1`` before it (fewer at the start): what a loss is doing
    when single steps jump by 10x with the batch and the noise drawn."""
    data = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.concatenate(([0.0], data)))
    ends = np.arange(1, len(data) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def loss_plot(history: dict[str, list[float]], width_px: int = 640, height_px: int = 360) -> torch.Tensor:
    """IMAGE ``[1,H,W,3]``: each loss series against the step, log scale when all are positive; a long
    run's steps are drawn faint under their running mean (``SMOOTHED_POINTS``)."""
    figure = _figure(width_px, height_px)
    axes = figure.add_subplot()
    positive = True
    window = max(1, max((len(v) for v in history.values()), default=0) // SMOOTHED_POINTS)
    for name, values in history.items():
        if not values:
            continue
        steps = range(1, len(values) + 1)
        if window == 1:
            axes.plot(steps, values, label=name)
        else:
            (raw,) = axes.plot(steps, values, alpha=0.2, linewidth=0.6)
            axes.plot(steps, running_mean(values, window), color=raw.get_color(),
                      label=f"{name} (mean of {window} steps)")
        positive = positive and min(values) > 0
    if positive and any(history.values()):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("Local-control adapter training")
    axes.legend(fontsize=8)
    return _to_image(figure)
