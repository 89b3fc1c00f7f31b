"""The views strip: two augmented views of a few images, what label-free training matches.

With ``supervision="views"`` (SimCLR, Chen et al. 2020) the two views of an image are the
only positive pair and every other view in the batch is a negative. Showing them side by side
tells the user what invariances the net is asked to learn (crop, rotation, shift, noise).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dml_core.figures import style
from dml_core.figures.images import image_trace

TITLE = "What the net is asked to match: two random views of each image"
PAIR_GAP = 1 / 2
"""The white gap between two images' pairs, as a fraction of the image height."""
VIEW_GAP = 1 / 8
"""The white gap between the two views of one image, as a fraction of the image height."""
STRIP_HEIGHT = 210


def views_mosaic(pairs: np.ndarray) -> np.ndarray:
    """``(n, 2, H, W)`` views -> one RGB mosaic ``(H, W_total, 3)`` uint8, pairs side by side.

    Args:
        pairs: float in [0, 1] or uint8; ``pairs[i, 0]`` and ``pairs[i, 1]`` are the two
            views of image i. They are laid out left to right, the two views of an image
            close together and the images apart (white gaps).
    """
    pairs = np.asarray(pairs)
    grey = pairs if pairs.dtype == np.uint8 else np.rint(np.clip(pairs, 0, 1) * 255)
    grey = grey.astype(np.uint8)  # (n, 2, H, W)
    n, h = grey.shape[0], grey.shape[2]
    view_gap = max(1, round(h * VIEW_GAP))
    pair_gap = max(2, round(h * PAIR_GAP))
    blocks: list[np.ndarray] = []
    for i in range(n):
        if i:
            blocks.append(np.full((h, pair_gap), 255, np.uint8))
        blocks += [grey[i, 0], np.full((h, view_gap), 255, np.uint8), grey[i, 1]]
    mosaic = np.concatenate(blocks, axis=1) if blocks else np.zeros((h, 0), np.uint8)
    return np.repeat(mosaic[:, :, None], 3, axis=2)  # (H, W_total, 3)


def views_strip_figure(
    pairs: np.ndarray, title: str = TITLE, uirevision: str = "views-strip"
) -> go.Figure:
    """The views strip: each image's two views side by side, a label under each pair.

    Args:
        pairs: (n, 2, H, W) views (see :func:`views_mosaic`), e.g. ``augment.example_views``.
        title: figure title.
        uirevision: constant per view.
    """
    mosaic = views_mosaic(pairs)
    n, _, h, w = np.asarray(pairs).shape
    fig = go.Figure(image_trace(mosaic, hoverinfo="skip"))
    view_gap = max(1, round(h * VIEW_GAP))
    pair_width = 2 * w + view_gap + max(2, round(h * PAIR_GAP))
    for i in range(n):
        fig.add_annotation(
            x=i * pair_width + w + view_gap / 2 - 0.5,
            y=h - 0.5,
            yanchor="top",
            yshift=-4,
            text=f"image {i + 1}",
            showarrow=False,
            font={"size": 11},
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    style._style(fig, title, uirevision, height=STRIP_HEIGHT, legend="right")
    fig.update_layout(margin={"l": 10, "r": 10, "t": 50, "b": 30}, showlegend=False)
    return fig
