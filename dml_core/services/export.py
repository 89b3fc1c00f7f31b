"""Export a run: TensorBoard Projector files, metrics CSV, training animations, figure files.

- ``export_projector``: the probe set of one snapshot in the format of TensorBoard's Embedding
  Projector (Smilkov et al., Embedding Projector: Interactive Visualization and
  Interpretation of Embeddings, NIPS 2016 workshop): ``tensors.tsv`` (n rows of D
  tab-separated floats), ``metadata.tsv`` (a ``label<TAB>class_name`` header, then n rows),
  ``sprite.png`` (the probe images in a square grid, row-major; none for a feature table) and
  ``projector_config.pbtxt`` tying them together. Load the folder with
  ``tensorboard --logdir DIR`` or upload the TSVs to projector.tensorflow.org.
- ``export_metrics_csv``: the run's history, one row per snapshot.
- ``export_embeddings``: every query and reference embedding of the run's weights in one
  ``embeddings.npz`` (``step``, ``query_emb`` (n_query, D) float32, ``query_labels``,
  ``ref_emb`` (n_ref, D) float32, ``ref_labels``): the ones its final evaluation saved, so
  a finished run is not embedded again.
- ``animation_figure`` / ``animation_html``: the probe layout over snapshots as plotly frames
  (layouts chained with ``projection.Projector``: warm-started and Procrustes-aligned, so the
  view does not spin between frames).
- ``animation_gif``: the same frames drawn with PIL (kaleido needs ~1 s per frame; a scatter
  plot in PIL takes milliseconds) and joined into an animated GIF.
- ``figure_png`` / ``figure_html``: any plotly figure as PNG bytes (kaleido >= 1, which drives
  a system Chromium) or as a self-contained HTML page (plotly.js inlined: works offline).

A RUN argument is a run id in a store or a run directory path.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw

from dml_core.analysis.retrieval import build_index
from dml_core.config import RunConfig, make_config
from dml_core.data import DATASETS, DIGIT_NAMES, FASHION_NAMES, load_for_config
from dml_core.errors import ConfigError
from dml_core.figures.style import class_color, use_template
from dml_core.metrics import METRIC_LABELS
from dml_core.projection import Method, Projector
from dml_core.runs import EMBEDDINGS_FILE, RunStore, atomic_write_bytes
from dml_core.snapshot import Snapshot, make_probe_indices
from dml_core.user_data.for_runs import is_table, thumbnails

FORMATS = ("projector", "csv", "html", "gif", "embeddings")
MIN_SPRITE_CELL = 24  # px: tiny images (digits are 8x8) are enlarged to at least this
GIF_SIZE = 480


def resolve_run(store: RunStore, run: str | os.PathLike) -> tuple[RunStore, str]:
    """The store and id of RUN: a run id in ``store``, or a run directory path."""
    path = Path(run)
    if path.is_dir() and (path / "config.json").exists():
        return RunStore(path.resolve().parent), path.resolve().name
    return store, str(run)


def class_names_of(dataset: str | RunConfig) -> tuple[str, ...]:
    """Class names by label: a built-in dataset's without loading it, a user's from its data.

    Args:
        dataset: a run's config, or its ``dataset`` (a user's path is then read with the
            default image settings: pass the config to reuse the run's cached arrays).
    """
    name = dataset.dataset if isinstance(dataset, RunConfig) else dataset
    if name in DATASETS:
        return FASHION_NAMES if name == "fashion-mnist" else DIGIT_NAMES
    cfg = dataset if isinstance(dataset, RunConfig) else make_config(dataset=name)
    return load_for_config(cfg).class_names


def _snapshot(store: RunStore, run_id: str, step: int | None) -> Snapshot:
    steps = store.snapshot_steps(run_id)
    if not steps:
        raise ConfigError(f"The run {run_id!r} has no snapshots yet.")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise ConfigError(f"The run {run_id!r} has no snapshot at step {step}. It has {steps}.")
    return store.load_snapshot(run_id, step)


def probe_images(store: RunStore, run_id: str, snap: Snapshot) -> np.ndarray:
    """The probe images of a run, (n, H, W) uint8, in the order of ``snap.probe_emb``.

    RGB images are shown as luminance; a feature table's rows as blank tiles
    (``user_data.thumbnails``).

    The Trainer embeds ``query[make_probe_indices(query.y, probe_size, seed)]``; the same
    indices are recomputed here and their labels checked against the snapshot's.
    """
    cfg = store.load(run_id).config
    query = load_for_config(cfg).query
    idx = make_probe_indices(query.y.numpy(), cfg.probe_size, cfg.seed)  # (n,)
    labels = query.y.numpy()[idx]
    if not np.array_equal(labels, snap.probe_labels):
        raise ConfigError(
            f"The probe images of {run_id!r} cannot be recovered: the dataset's labels differ "
            "from the snapshot's (was the dataset changed since the run?)."
        )
    return thumbnails(query.x[torch.from_numpy(idx)])  # (n, H, W)


def sprite_image(images: np.ndarray) -> tuple[Image.Image, int]:
    """A square grid of the images (row-major, black padding) and the size of one cell.

    Images smaller than ``MIN_SPRITE_CELL`` are enlarged by an integer factor (nearest
    neighbour), so an 8x8 digit is a 24x24 cell.
    """
    n, h, w = images.shape
    factor = max(1, math.ceil(MIN_SPRITE_CELL / max(h, w)))
    cell = max(h, w) * factor
    grid = math.ceil(math.sqrt(n))
    canvas = np.zeros((grid * cell, grid * cell), dtype=np.uint8)  # (grid*cell, grid*cell)
    big = images.repeat(factor, axis=1).repeat(factor, axis=2)  # (n, h*f, w*f)
    for i, img in enumerate(big):
        r, c = divmod(i, grid)
        canvas[r * cell : r * cell + img.shape[0], c * cell : c * cell + img.shape[1]] = img
    return Image.fromarray(canvas, mode="L"), cell


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def projector_files(store: RunStore, run_id: str, step: int | None = None) -> dict[str, bytes]:
    """The Projector files of one snapshot, by file name (see the module docstring)."""
    snap = _snapshot(store, run_id, step)
    cfg = store.load(run_id).config
    names = class_names_of(cfg)
    emb = np.asarray(snap.probe_emb, dtype=np.float32)  # (n, D)
    tensors = "\n".join("\t".join(f"{v:.6g}" for v in row) for row in emb) + "\n"
    meta_rows = [f"{int(y)}\t{names[int(y)]}" for y in snap.probe_labels]
    metadata = "\n".join(["label\tclass_name", *meta_rows]) + "\n"
    pictures = not is_table(load_for_config(cfg))  # a feature table's rows have no sprite
    sprite, cell = sprite_image(probe_images(store, run_id, snap)) if pictures else (None, 0)
    config = (
        "embeddings {\n"
        f'  tensor_name: "{run_id}_step{snap.step}"\n'
        f"  tensor_shape: {emb.shape[0]}\n"
        f"  tensor_shape: {emb.shape[1]}\n"
        '  tensor_path: "tensors.tsv"\n'
        '  metadata_path: "metadata.tsv"\n'
    )
    if sprite is not None:
        config += (
            "  sprite {\n"
            '    image_path: "sprite.png"\n'
            f"    single_image_dim: {cell}\n"
            f"    single_image_dim: {cell}\n"
            "  }\n"
        )
    files = {"tensors.tsv": tensors.encode(), "metadata.tsv": metadata.encode()}
    if sprite is not None:
        files["sprite.png"] = _png_bytes(sprite)
    return files | {"projector_config.pbtxt": (config + "}\n").encode()}


def export_projector(
    store: RunStore, run_id: str, out_dir: str | os.PathLike, step: int | None = None
) -> dict[str, Path]:
    """Write the Projector files of a snapshot (default: the last) into ``out_dir``."""
    store, run_id = resolve_run(store, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in projector_files(store, run_id, step).items():
        atomic_write_bytes(out / name, data)
        written[name] = out / name
    return written


def projector_zip(store: RunStore, run_id: str, step: int | None = None) -> bytes:
    """The Projector files of a snapshot in one zip (for a download button)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in projector_files(store, run_id, step).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def export_metrics_csv(store: RunStore, run_id: str, path: str | os.PathLike) -> Path:
    """Write the run's metrics table (one row per snapshot) as CSV."""
    store, run_id = resolve_run(store, run_id)
    history = store.load(run_id).history
    atomic_write_bytes(Path(path), history.to_csv(index=False).encode())
    return Path(path)


def export_embeddings(store: RunStore, run_id: str, path: str | os.PathLike) -> Path:
    """Write the run's query and reference embeddings (see the module docstring) to ``path``.

    A finished run's are the ones its final evaluation saved; a run without embeddings of its
    last checkpoint (stopped, or older) is embedded once and they are saved with it too.
    """
    store, run_id = resolve_run(store, run_id)
    if not store.has_checkpoint(run_id):
        raise ConfigError(f"The run {run_id!r} has no saved weights yet: nothing to embed.")
    build_index(store, run_id)  # reads the saved embeddings, or embeds and saves them
    atomic_write_bytes(Path(path), (store.path(run_id) / EMBEDDINGS_FILE).read_bytes())
    return Path(path)


def _snapshots(store: RunStore, run_id: str) -> list[Snapshot]:
    steps = store.snapshot_steps(run_id)
    if not steps:
        raise ConfigError(f"The run {run_id!r} has no snapshots yet.")
    return [store.load_snapshot(run_id, s) for s in steps]


def animation_layouts(snapshots: Sequence[Snapshot], method: Method = "pca") -> list[np.ndarray]:
    """One (n, 2) layout per snapshot, each warm-started from and aligned to the previous."""
    projector = Projector(method)
    layouts = []
    for snap in snapshots:
        emb = snap.probe_emb
        layout = projector.update(emb if method != "direct" else emb[:, :2])  # (n, 2)
        layouts.append(np.asarray(layout)[:, :2])
    return layouts


def animation_figure(
    snapshots: Sequence[Snapshot], class_names: Sequence[str], method: Method = "pca"
) -> go.Figure:
    """The probe layout over training as a plotly figure with one frame per snapshot."""
    layouts = animation_layouts(snapshots, method)
    labels = snapshots[0].probe_labels
    classes = [int(c) for c in np.unique(labels)]
    allpts = np.concatenate(layouts)  # (frames * n, 2)
    pad = 0.05 * (allpts.max(axis=0) - allpts.min(axis=0) + 1e-9)  # (2,)
    low, high = allpts.min(axis=0) - pad, allpts.max(axis=0) + pad

    def traces(layout: np.ndarray) -> list[go.Scatter]:
        return [
            go.Scatter(
                x=layout[labels == c, 0],
                y=layout[labels == c, 1],
                mode="markers",
                name=class_names[c] if c < len(class_names) else str(c),
                marker={"size": 5, "color": class_color(c), "opacity": 0.8},
            )
            for c in classes
        ]

    frames = [
        go.Frame(data=traces(layout), name=str(snap.step), layout={"title": {"text": _title(snap)}})
        for snap, layout in zip(snapshots, layouts, strict=True)
    ]
    steps = [
        {
            "label": str(snap.step),
            "method": "animate",
            "args": [[str(snap.step)], {"mode": "immediate", "frame": {"duration": 0}}],
        }
        for snap in snapshots
    ]
    play = {"frame": {"duration": 600, "redraw": True}, "fromcurrent": True}
    fig = go.Figure(data=traces(layouts[0]), frames=frames)
    use_template(fig).update_layout(
        title={"text": _title(snapshots[0])},
        height=600,
        xaxis={"range": [low[0], high[0]], "title": {"text": f"{method} 1"}},
        yaxis={"range": [low[1], high[1]], "title": {"text": f"{method} 2"}},
        updatemenus=[
            {
                "type": "buttons",
                "x": 0,
                "y": -0.08,
                "xanchor": "left",
                "buttons": [
                    {"label": "Play", "method": "animate", "args": [None, play]},
                    {
                        "label": "Pause",
                        "method": "animate",
                        "args": [[None], {"mode": "immediate"}],
                    },
                ],
            }
        ],
        sliders=[{"steps": steps, "currentvalue": {"prefix": "step "}, "x": 0.15, "len": 0.85}],
        legend={"title": {"text": "class"}},
    )
    return fig


def _title(snap: Snapshot) -> str:
    map_r = snap.metrics.get("map_at_r", float("nan"))
    return f"step {snap.step}: {METRIC_LABELS['map_at_r']} {map_r:.3f}"


def animation_html_bytes(store: RunStore, run_id: str, method: Method = "pca") -> bytes:
    """The training animation as a self-contained HTML page (plotly frames), as bytes."""
    store, run_id = resolve_run(store, run_id)
    names = class_names_of(store.load(run_id).config)
    return figure_html(animation_figure(_snapshots(store, run_id), names, method)).encode()


def animation_html(
    store: RunStore, run_id: str, path: str | os.PathLike, method: Method = "pca"
) -> Path:
    """Write the training animation as a self-contained HTML page (plotly frames)."""
    atomic_write_bytes(Path(path), animation_html_bytes(store, run_id, method))
    return Path(path)


def gif_frames(
    snapshots: Sequence[Snapshot], method: Method = "pca", size: int = GIF_SIZE
) -> list[Image.Image]:
    """One PIL image per snapshot: the probe layout, class colours, the step in the corner."""
    layouts = animation_layouts(snapshots, method)
    allpts = np.concatenate(layouts)  # (frames * n, 2)
    low, high = allpts.min(axis=0), allpts.max(axis=0)
    span = float(max(high - low)) or 1.0
    margin = 0.06 * size
    frames = []
    for snap, layout in zip(snapshots, layouts, strict=True):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        xy = margin + (layout - low) / span * (size - 2 * margin)  # (n, 2) pixels
        for (x, y), label in zip(xy, snap.probe_labels, strict=True):
            colour = class_color(int(label))
            draw.ellipse((x - 2.5, size - y - 2.5, x + 2.5, size - y + 2.5), fill=colour)
        draw.text((8, 6), _title(snap), fill="black")
        frames.append(image)
    return frames


def animation_gif_bytes(
    store: RunStore, run_id: str, method: Method = "pca", frame_ms: int = 500
) -> bytes:
    """The training animation as an animated GIF (one frame per snapshot, looping)."""
    store, run_id = resolve_run(store, run_id)
    frames = gif_frames(_snapshots(store, run_id), method)
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=frame_ms,
        loop=0,
        disposal=2,
    )
    return buffer.getvalue()


def animation_gif(
    store: RunStore,
    run_id: str,
    path: str | os.PathLike,
    method: Method = "pca",
    frame_ms: int = 500,
) -> Path:
    """Write the training animation as an animated GIF (one frame per snapshot, looping)."""
    atomic_write_bytes(Path(path), animation_gif_bytes(store, run_id, method, frame_ms))
    return Path(path)


def chromium_path() -> str | None:
    """The Chromium kaleido can drive (``BROWSER_PATH``, else ``chromium`` on PATH), or None."""
    return os.environ.get("BROWSER_PATH") or shutil.which("chromium")


def figure_png(fig: go.Figure, width: int | None = None, height: int | None = None) -> bytes:
    """The figure as PNG bytes, rendered by kaleido (>= 1) in the system Chromium.

    Raises:
        RuntimeError: no Chromium was found (the message says how to install it).
    """
    if chromium_path() is None:
        raise RuntimeError(
            "PNG export needs Chromium (kaleido drives it): install Debian's 'chromium' "
            "package or set BROWSER_PATH to a Chrome/Chromium binary."
        )
    return fig.to_image(format="png", width=width, height=height)


def figure_html(fig: go.Figure) -> str:
    """The figure as a standalone HTML page with plotly.js inlined (works offline)."""
    return fig.to_html(full_html=True, include_plotlyjs=True)


def export_main(run: str, fmt: str, out: str, runs_dir: str) -> int:
    """``python -m dml_core export RUN --format F --out DIR``; returns the exit status.

    Writes into DIR: the Projector files (projector), ``metrics.csv`` (csv),
    ``animation.html`` (html), ``animation.gif`` (gif) or ``embeddings.npz`` (embeddings).
    Errors print one line; status 2.
    """
    if fmt not in FORMATS:
        print(f"error: --format must be one of {', '.join(FORMATS)}. Got {fmt!r}.", file=sys.stderr)
        return 2
    try:
        store, run_id = resolve_run(RunStore(runs_dir), run)
        store.load(run_id)  # a clear error for an unknown run
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "projector":
            paths = list(export_projector(store, run_id, folder).values())
        elif fmt == "csv":
            paths = [export_metrics_csv(store, run_id, folder / "metrics.csv")]
        elif fmt == "embeddings":
            paths = [export_embeddings(store, run_id, folder / EMBEDDINGS_FILE)]
        elif fmt == "html":
            paths = [animation_html(store, run_id, folder / "animation.html")]
        else:
            paths = [animation_gif(store, run_id, folder / "animation.gif")]
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
