"""figures.sweep: the line with its ±1 sd band (one axis) and the heatmap of means (two axes)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dml_core.figures.sweep import sweep_figure


def _results(axes: dict[str, list], means: list[float], sds: list[float]) -> pd.DataFrame:
    """A ``cell_results``-shaped table: cells in the sweep's order (first axis slowest)."""
    names = list(axes)
    grid = pd.MultiIndex.from_product(list(axes.values()), names=names).to_frame(index=False)
    grid["cell"] = range(len(grid))
    grid["runs"] = grid["finished"] = 2
    for metric in ("map_at_r", "precision_at_1", "r_precision"):
        grid[f"{metric}_mean"] = means
        grid[f"{metric}_sd"] = sds
    return grid


def test_line_has_the_means_and_a_band_of_one_sd() -> None:
    """y of the mean line = the cells' means; band edges = mean ± sd.

    Catches: a band of ±2 sd or of the variance, or the band edges swapped with the line.
    """
    results = _results({"margin": [0.1, 0.2, 0.4]}, [0.5, 0.7, 0.6], [0.02, 0.05, 0.01])
    fig = sweep_figure(results, ["margin"])
    upper, lower, mean = fig.data
    assert list(mean.x) == [0.1, 0.2, 0.4]
    assert list(mean.y) == pytest.approx([0.5, 0.7, 0.6])
    assert list(upper.y) == pytest.approx([0.52, 0.75, 0.61])
    assert list(lower.y) == pytest.approx([0.48, 0.65, 0.59])
    assert lower.fill == "tonexty"


def test_heatmap_puts_each_mean_at_its_row_and_column() -> None:
    """Two axes: z[i][j] is the mean of (first axis = row i, second axis = column j), with
    "mean ± sd" as text.

    Catches: the mean placed over the wrong axis (rows and columns transposed, or the cells
    filled in the wrong order), and a text without the sd.
    """
    axes = {"margin": [0.1, 0.3], "embedding_dim": [8, 16, 32]}
    means = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    sds = [0.01, 0.02, 0.03, 0.04, 0.05, math.nan]
    fig = sweep_figure(_results(axes, means, sds), list(axes))
    (heat,) = fig.data
    assert list(heat.y) == ["0.1", "0.3"]
    assert list(heat.x) == ["8", "16", "32"]
    np.testing.assert_allclose(np.asarray(heat.z), [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    assert heat.text[0][1] == "0.200 ± 0.020"
    assert heat.text[1][2] == "0.600 ± n/a"  # one finished seed: no sd


def test_metric_choice_reads_that_metric() -> None:
    """P@1 chosen: the figure shows P@1's means, not MAP@R's (catches a hard-wired metric)."""
    results = _results({"lr": [0.001, 0.01]}, [0.5, 0.6], [0.0, 0.0])
    results["precision_at_1_mean"] = [0.9, 0.8]
    fig = sweep_figure(results, ["lr"], metric="precision_at_1")
    assert list(fig.data[-1].y) == pytest.approx([0.9, 0.8])
    assert "P@1" in fig.layout.title.text


def test_nothing_finished_says_so() -> None:
    """No finished run: no trace, a note instead of an empty or NaN plot."""
    results = _results({"margin": [0.1, 0.2]}, [math.nan, math.nan], [math.nan, math.nan])
    results["finished"] = 0
    fig = sweep_figure(results, ["margin"])
    assert not fig.data
    assert "No finished run" in fig.layout.annotations[0].text
