r"""Plotly figures of a sweep's results: the mean of a final metric per cell, with its spread.

Input is ``sweeps.cell_results``: one row per cell, the cell's axis values, and
``<metric>_mean`` / ``<metric>_sd`` over the cell's finished seeds (sample sd, ddof = 1). The
metrics are P@1 and MAP@R (Musgrave et al., A Metric Learning Reality Check, ECCV 2020, Sec. 3.2,
MAP@R = (1/R) sum_{i=1}^{R} P(i) over the R relevant items of each query).

- one axis: a line of the mean against the axis' values with a band of mean +- 1 sd across
  seeds;
- two axes: a heatmap of the mean, the first axis down, the second across; each cell's text is
  "mean ± sd" and the hover names both values, the mean, the sd and the finished runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dml_core.figures.style import _note, _style

METRIC_NAMES = {"map_at_r": "MAP@R", "precision_at_1": "P@1", "r_precision": "R-Precision"}
BAND = "rgba(31, 119, 180, 0.2)"
LINE = "#1f77b4"


def _axis_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _numeric(values: list[object]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _sd_text(sd: float) -> str:
    return "n/a" if math.isnan(sd) else f"{sd:.3f}"


def sweep_figure(
    results: pd.DataFrame, axes: list[str], metric: str = "map_at_r", uirevision: str = "sweep"
) -> go.Figure:
    """The sweep's results: a line with a +-1 sd band (one axis) or a heatmap (two axes).

    Args:
        results: ``sweeps.cell_results`` (one row per cell, first axis varying slowest).
        axes: the sweep's axis names (0, 1 or 2).
        metric: ``map_at_r``, ``precision_at_1`` or ``r_precision``.
        uirevision: keeps zoom across polls.
    """
    name = METRIC_NAMES.get(metric, metric)
    mean, sd = results[f"{metric}_mean"], results[f"{metric}_sd"]
    fig = go.Figure()
    if not results["finished"].any():
        _note(fig, "No finished run yet: the means appear as runs finish.", size=16)
        return _style(fig, f"Mean {name} per cell", uirevision)
    if len(axes) == 2:
        return _heatmap(results, axes, metric, uirevision)
    if axes:
        values = list(results[axes[0]])
        x = values if _numeric(values) else [_axis_text(v) for v in values]
        title_x = axes[0]
    else:
        x, title_x = ["base"], ""
    low, high = (mean - sd.fillna(0)).to_numpy(), (mean + sd.fillna(0)).to_numpy()
    fig.add_trace(go.Scatter(x=x, y=high, mode="lines", line={"width": 0}, showlegend=False,
                             hoverinfo="skip"))  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=x, y=low, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=BAND,
            name="± 1 sd across seeds", hoverinfo="skip",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=x, y=mean, mode="lines+markers", name=f"mean {name}", line={"color": LINE},
            customdata=np.stack([sd.to_numpy(), results["finished"].to_numpy()], axis=1),
            hovertemplate=f"{title_x}=%{{x}}<br>mean {name} %{{y:.3f}}<br>sd %{{customdata[0]:.3f}}"
            "<br>%{customdata[1]} finished runs<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(title_text=title_x)
    fig.update_yaxes(title_text=f"final {name}")
    return _style(fig, f"Mean {name} across seeds (band: ± 1 sd)", uirevision)


def _heatmap(results: pd.DataFrame, axes: list[str], metric: str, uirevision: str) -> go.Figure:
    """Mean of ``metric`` with the first axis down and the second across; sd in text and hover."""
    name = METRIC_NAMES.get(metric, metric)
    rows = list(dict.fromkeys(results[axes[0]]))
    cols = list(dict.fromkeys(results[axes[1]]))
    shape = (len(rows), len(cols))
    z, sd = np.full(shape, np.nan), np.full(shape, np.nan)
    finished = np.zeros(shape, dtype=int)
    for _, row in results.iterrows():
        i, j = rows.index(row[axes[0]]), cols.index(row[axes[1]])
        z[i, j] = row[f"{metric}_mean"]
        sd[i, j] = row[f"{metric}_sd"]
        finished[i, j] = row["finished"]
    text = [
        ["" if math.isnan(m) else f"{m:.3f} ± {_sd_text(s)}" for m, s in zip(zr, sr, strict=True)]
        for zr, sr in zip(z, sd, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=[_axis_text(c) for c in cols], y=[_axis_text(r) for r in rows],
            text=text, texttemplate="%{text}", colorscale="Viridis",
            colorbar={"title": {"text": name}},
            customdata=np.stack([sd, finished], axis=-1),
            hovertemplate=f"{axes[0]}=%{{y}}<br>{axes[1]}=%{{x}}<br>mean {name} %{{z:.3f}}"
            "<br>sd %{customdata[0]:.3f}<br>%{customdata[1]} finished runs<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(title_text=axes[1], type="category")
    fig.update_yaxes(title_text=axes[0], type="category", autorange="reversed")
    return _style(fig, f"Mean {name} per cell (text: mean ± sd across seeds)", uirevision)
