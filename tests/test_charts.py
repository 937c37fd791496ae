"""Charts drawn into IMAGE tensors: the loss plot of a long training run stays readable."""
import numpy as np
import pytest

from harness import pack_import

charts = pack_import("nodes.ops.charts")


def test_running_mean_is_the_mean_of_each_value_and_the_ones_before_it():
    assert charts.running_mean([1, 2, 3, 4, 10], 2).tolist() == [1.0, 1.5, 2.5, 3.5, 7.0]
    assert charts.running_mean([1, 2, 3, 4, 10], 3).tolist() == pytest.approx([1.0, 1.5, 2.0, 3.0, 17 / 3])
    assert charts.running_mean([4, 8], 1).tolist() == [4.0, 8.0]


def _line_pixels(image, rgb, tolerance=0.02):
    return (np.abs(image[0].numpy() - np.asarray(rgb)).max(-1) < tolerance).sum()


def test_a_long_noisy_run_is_drawn_as_its_running_mean_over_faint_steps(monkeypatch):
    """5,000 steps jumping 10x around a falling trend (as the toy ControlNet's run): the full-colour line is
    the trend (~2,200 pixels: one line across the plot), not a band of spikes filling it (~65,000 when every
    step is drawn solid, as before)."""
    g = np.random.default_rng(0)
    trend = np.geomspace(1e-2, 4e-3, 5000)
    noisy = (trend * np.exp(g.normal(0, 1.0, 5000))).tolist()
    blue = (31 / 255, 119 / 255, 180 / 255)  # matplotlib's first colour
    smoothed = charts.loss_plot({"noise loss": noisy})
    assert smoothed.shape == (1, 360, 640, 3)
    assert 1000 < _line_pixels(smoothed, blue) < 5000
    monkeypatch.setattr(charts, "SMOOTHED_POINTS", len(noisy) + 1)  # every step solid: a short run's plot
    assert _line_pixels(charts.loss_plot({"noise loss": noisy}), blue) > 30000
