"""Image strips of mined tuples: what "hard" looks like, as the dataset's own pictures.

Pure functions: analysis results and (n, H, W) uint8 images in, ``go.Figure`` out. Each strip
is one ``go.Image`` (a PNG: ``figures.images``) of tiles composed here (the images enlarged by
an integer factor, nearest neighbour, so pixels stay sharp), with captions as annotations below
each tile. Encodings follow ``figures.batch``: a green frame is a positive, red a negative,
dark the anchor; a negative's kind is written with its shape mark (○ easy, ◇ semi-hard,
× hard), never a colour.
The tiles' data is in ``layout.meta["tiles"]`` (role, index, distance, kind, and the tile's
top-left corner x, y in image pixels), in the order drawn, so tests can read what is shown.

- ``anchor_strip_figure``: one anchor of a Miner view batch, the positives the miner selected
  and the negatives it uses with the chosen positive, each row nearest first.
- ``triplet_strip_figure``: the hardest triplets of a snapshot (``analysis.hard_triplets``),
  one column per triplet, with d(a,p), d(a,n), the margin and the violation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from dml_core.analysis.batch_view import AnchorView, Batch
from dml_core.analysis.hard_triplets import HardTriplets
from dml_core.figures.batch import KIND_MARKS
from dml_core.figures.images import image_trace
from dml_core.figures.style import NEGATIVE_COLOR, POSITIVE_COLOR, TITLE_POSITION, use_template
from dml_core.tuples import TRIPLET_KINDS

INK = "#222222"  # caption text: dark on any page background
ANCHOR_FRAME = "#8a8a8a"  # grey: a dark frame would vanish against the black backgrounds
TILE = 64  # enlarged image size (data pixels)
FRAME = 4  # frame width
INSET = 2  # white line between frame and image, so frames stand out on dark images
PITCH_X = 100  # horizontal distance between tiles (room for captions)
CAPTION_LINE = 16  # data pixels per caption line (room when the chart is drawn smaller)
HEADER = 26  # room for a row's heading
PER_ROW = 10  # tiles per row in the anchor strip
MAX_NEGATIVE_ROWS = 3
WHITE = np.array([255, 255, 255], dtype=np.uint8)


@dataclass(frozen=True)
class Tile:
    """One framed image and its caption, placed at (col, row) of a grid."""

    image: np.ndarray  # (H, W) uint8
    frame: str  # "#rrggbb"
    caption: str  # lines separated by "<br>"
    x: float  # left edge, data pixels
    y: float  # top edge of the frame, data pixels
    meta: dict


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _enlarged(image: np.ndarray) -> np.ndarray:
    """The image enlarged by the largest integer factor that fits ``TILE``, as RGB."""
    h, w = image.shape
    factor = max(1, TILE // max(h, w))
    big = image.repeat(factor, axis=0).repeat(factor, axis=1)  # (h f, w f)
    return np.repeat(big[:, :, None], 3, axis=2)  # (h f, w f, 3)


def _compose(tiles: Sequence[Tile], width: float, height: float) -> np.ndarray:
    """A white RGB canvas (height, width, 3) with every tile framed at its place."""
    canvas = np.empty((int(height), int(width), 3), dtype=np.uint8)
    canvas[:] = WHITE
    side = TILE + 2 * (FRAME + INSET)
    for tile in tiles:
        x0, y0 = int(tile.x), int(tile.y)
        canvas[y0 : y0 + side, x0 : x0 + side] = _rgb(tile.frame)
        inner = slice(y0 + FRAME, y0 + side - FRAME), slice(x0 + FRAME, x0 + side - FRAME)
        canvas[inner] = WHITE
        img = _enlarged(tile.image)
        h, w = img.shape[:2]
        top, left = y0 + FRAME + INSET + (TILE - h) // 2, x0 + FRAME + INSET + (TILE - w) // 2
        canvas[top : top + h, left : left + w] = img
    return canvas


def _figure(
    tiles: Sequence[Tile], headings: Sequence[tuple[float, float, str]], title: str, size: tuple
) -> go.Figure:
    """The composed tiles as one image, captions below each, headings at (x, y)."""
    width, height = size
    fig = go.Figure(image_trace(_compose(tiles, width, height), hoverinfo="skip"))
    side = TILE + 2 * (FRAME + INSET)
    notes = [
        {"x": t.x + side / 2, "y": t.y + side + 2, "text": t.caption, "yanchor": "top"}
        for t in tiles
    ] + [{"x": x, "y": y, "text": f"<b>{text}</b>", "xanchor": "left", "yanchor": "bottom",
          "font": {"size": 13, "color": INK}} for x, y, text in headings]  # fmt: skip
    for note in notes:
        fig.add_annotation(**({"showarrow": False, "font": {"size": 11, "color": INK}} | note))
    top = 64 if "<br>" in title else 45
    use_template(fig).update_layout(
        title={"text": title, "pad": {"t": 12}, "font": {"size": 15}, **TITLE_POSITION},
        margin={"l": 10, "r": 10, "t": top, "b": 10},
        height=int(height) + top + 20,
        meta={"tiles": [t.meta | {"x": t.x, "y": t.y} for t in tiles]},
    )
    # a narrower chart shrinks the image: keep it at the top left, the spare room below
    fig.update_xaxes(visible=False, range=[0, width], constrain="domain", constraintoward="left")
    fig.update_yaxes(
        visible=False, range=[height, 0], scaleanchor="x", constrain="domain", constraintoward="top"
    )
    return fig


def _row_height(lines: int) -> float:
    return TILE + 2 * (FRAME + INSET) + lines * CAPTION_LINE + 10


def _class_text(name: str) -> str:
    """A class name for a caption: "class 7" for the digits' bare numbers, else the name."""
    return f"class {name}" if name.isdigit() else name


def _kind_text(code: int) -> str:
    return f"{KIND_MARKS[code]} {TRIPLET_KINDS[code]}"


def anchor_strip_figure(batch: Batch, view: AnchorView, miner: str, margin: float) -> go.Figure:
    """The anchor, the positives ``miner`` selected and the negatives it uses, as images.

    Each row is ordered by distance to the anchor, nearest first; each tile says its batch
    index, d(a,·) and, for a negative, its kind against the chosen positive (the rings of the
    polar view: hard inside d(a,p), semi-hard up to d(a,p) + margin, easy beyond).
    """
    names = batch.class_names
    anchor_class = _class_text(names[batch.labels[view.anchor]])
    tiles = [
        Tile(batch.images[view.anchor], ANCHOR_FRAME, f"anchor #{view.anchor}<br>{anchor_class}",
             0.0, HEADER, {"role": "anchor", "index": int(view.anchor)})
    ]  # fmt: skip
    order = np.argsort(view.pos_dist, kind="stable")  # nearest first
    per_row = PER_ROW - 1
    rows = max(1, -(-len(order) // per_row))
    for i, j in enumerate(order):
        idx, d = int(view.positives[j]), float(view.pos_dist[j])
        chosen = " (rings)" if idx == view.positive else ""
        col, row = 1 + i % per_row, i // per_row
        tiles.append(
            Tile(batch.images[idx], POSITIVE_COLOR, f"#{idx}{chosen}<br>d = {d:.3f}",
                 col * PITCH_X, HEADER + row * _row_height(2),
                 {"role": "positive", "index": idx, "distance": d})
        )  # fmt: skip
    top = HEADER + rows * _row_height(2) + HEADER
    order = np.argsort(view.neg_dist, kind="stable")  # nearest (hardest) first
    shown = order[: PER_ROW * MAX_NEGATIVE_ROWS]
    for i, j in enumerate(shown):
        idx, d, code = int(view.negatives[j]), float(view.neg_dist[j]), int(view.neg_kind[j])
        tiles.append(
            Tile(batch.images[idx], NEGATIVE_COLOR,
                 f"#{idx}<br>{_class_text(names[batch.labels[idx]])}<br>d = {d:.3f}"
                 f"<br>{_kind_text(code)}",
                 (i % PER_ROW) * PITCH_X, top + (i // PER_ROW) * _row_height(4),
                 {"role": "negative", "index": idx, "distance": d, "kind": code})
        )  # fmt: skip
    neg_rows = max(1, -(-len(shown) // PER_ROW))
    more = len(order) - len(shown)
    headings = [
        (PITCH_X, HEADER - 4, f"Positives the {miner} miner selected, nearest first"),
        (0.0, top - 4, f"Negatives it uses with positive #{view.positive}, nearest first"
         + (f" ({more} farther ones not shown)" if more else "")
         + ("" if len(shown) else ": none")
         + ("" if view.positive in view.positives else
            f" (the miner did not select positive #{view.positive} for this anchor)")),
    ]  # fmt: skip
    title = (
        f"What the {miner} miner picks for anchor #{view.anchor}<br><sup>negatives judged against "
        f"positive #{view.positive}: hard up to d = {view.radius:.3f}, semi-hard up to "
        f"{view.radius + margin:.3f} (α = {margin:g}), easy beyond</sup>"
    )
    width = PER_ROW * PITCH_X
    height = top + neg_rows * _row_height(4)
    return _figure(tiles, headings, title, (width, height))


def triplet_strip_figure(
    hard: HardTriplets, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> go.Figure:
    """The hardest triplets, one column each (anchor, positive, negative from the top).

    Args:
        hard: from ``analysis.hard_triplets``; its rows index ``images`` and ``labels``.
        images: (n, H, W) uint8, the probe images in the snapshot's order.
        labels: (n,) their classes.
        class_names: names indexed by label.
    """
    label_width = 80.0
    tiles = []
    roles = (("anchor", ANCHOR_FRAME), ("positive", POSITIVE_COLOR), ("negative", NEGATIVE_COLOR))
    step = _row_height(2)
    for col in range(len(hard)):
        x = label_width + col * PITCH_X
        trio = (hard.anchor[col], hard.positive[col], hard.negative[col])
        for row, ((role, frame), idx) in enumerate(zip(roles, trio, strict=True)):
            meta = {"role": role, "index": int(idx), "triplet": col}
            if role == "negative":
                meta |= {
                    "d_ap": float(hard.d_ap[col]),
                    "d_an": float(hard.d_an[col]),
                    "margin": float(hard.margin[col]),
                    "violation": float(hard.violation[col]),
                    "kind": int(hard.kind[col]),
                }
            caption = f"#{int(idx)}<br>{_class_text(class_names[labels[idx]])}"
            if role == "negative":
                caption += (
                    f"<br>d(a,p) {hard.d_ap[col]:.3f}<br>d(a,n) {hard.d_an[col]:.3f}"
                    f"<br>margin {hard.margin[col]:.3f}<br>violation {hard.violation[col]:.3f}"
                    f"<br>{_kind_text(int(hard.kind[col]))}"
                )
            tiles.append(Tile(images[idx], frame, caption, x, HEADER + row * step, meta))
    headings = [(0.0, HEADER + row * step + TILE / 2 + FRAME, role) for row, (role, _) in
                enumerate(roles)]  # fmt: skip
    share = hard.violating / hard.total if hard.total else 0.0
    title = (
        f"The hardest triplets now: the {len(hard)} most violating of the probe set"
        f"<br><sup>{hard.violating:,} of {hard.total:,} triplets ({share:.2%}) violate; "
        f"{hard.rule}</sup>"
    )
    if not len(hard):
        title = f"No triplet of the probe set violates the margin<br><sup>{hard.rule}</sup>"
    width = label_width + max(len(hard), 1) * PITCH_X
    height = HEADER + 2 * step + _row_height(7)
    return _figure(tiles, headings, title, (width, height))
