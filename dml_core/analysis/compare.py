"""Comparing runs: one shared layout frame, a shared scrubber, a results table, sweeps.

What the Compare page needs, as plain functions over the RunStore (no streamlit):

- ``aligned_layouts``: one 2-D layout per run of the *same* probe points, all in one frame, so
  the same class sits in the same place in every panel. Point i of every run is the same test
  image, so layouts can be matched point by point. PCA: each run is projected on its own (a
  linear map, nothing to bias) and rotated/reflected onto the reference run
  (``projection.procrustes_align``). UMAP: the reference run gets a cold fit; every other run is
  warm-started from that layout (``project(..., init=ref)``, the run's own neighbour graph, 200
  epochs) and then Procrustes-aligned. A cold fit per run plus Procrustes was tried first: UMAP
  places clusters arbitrarily, so no rotation makes two cold fits agree and the classes landed
  in different places. Warm starts inherit only where clusters sit; how tight or mixed they
  are still comes from each run's own graph (the idea of AlignedUMAP). The scale is set so each
  layout keeps the reference's spread: the least-squares Procrustes scale shrinks a layout that
  matches the reference poorly towards a point.
- ``snapshot_at`` / ``shared_steps``: one scrubber for several runs. Runs may differ in batch
  size, so the scrubber position is a number of training samples, and each run shows its
  snapshot nearest to it.
- ``run_names``: what each run is called in every figure: the settings in which the shown runs
  differ ("margin = 0.1", "D = 128"), or the name a user gave it (``RunStore.set_label``).
- ``results_table``: final and best metrics, time and throughput of each run.
- ``sweep_parameters``, ``suggested_values``, ``parse_values``: a one-parameter sweep's axis
  and values; ``sweep_link`` / ``sweep_prefill``: Compare's link to the Sweep page, which
  trains it (``sweeps.build_sweep``) and reads the link back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dml_core.config import RunConfig, differing_labels, params_text
from dml_core.projection import procrustes_align, project
from dml_core.registry import LOSSES
from dml_core.runs import RunStore

LAYOUT_METHODS = ("pca", "umap")
UMAP_EPOCHS = 200  # a cold fit per panel; 200 epochs look settled on <= 2k points
METRICS = {"precision_at_1": "P@1", "r_precision": "R-Precision", "map_at_r": "MAP@R"}
SWEEP_FIELDS = ("loss", "miner", "embedding_dim", "lr", "samples_per_class")
SWEEP_LOSSES = ("contrastive", "triplet", "margin", "multi_similarity")
SWEEP_MINERS = ("semi_hard", "hard", "batch_hard", "distance_weighted")
SUGGESTED_VALUES = {
    "embedding_dim": "2, 3, 16, 128",
    "lr": "0.0003, 0.001, 0.003",
    "samples_per_class": "4, 8, 16",
    "margin": "0.05, 0.1, 0.2, 0.5",
}


class ProbeMismatchError(ValueError):
    """The runs were not measured on the same probe points, so their layouts cannot be paired."""


def _layout(emb: np.ndarray, method: str, seed: int, init: np.ndarray | None = None) -> np.ndarray:
    """One run's own 2-D layout (n, 2): PCA, or UMAP (cold, or warm-started from ``init``)."""
    if method == "umap":
        return project(emb, "umap", init=init, seed=seed, n_epochs=UMAP_EPOCHS)
    return project(emb, "pca")


def _align(layout: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Procrustes rotation/reflection and translation onto ``reference``, keeping its spread."""
    moved = procrustes_align(layout, reference)  # (n, 2)
    centre = reference.mean(axis=0)  # (2,)
    size = np.sqrt(np.mean((moved - centre) ** 2))
    target = np.sqrt(np.mean((reference - centre) ** 2))
    return moved if size == 0 else centre + (moved - centre) * (target / size)


def aligned_layouts(
    embs: Sequence[np.ndarray],
    method: str = "pca",
    seed: int = 0,
    labels: Sequence[np.ndarray] | None = None,
    reference: np.ndarray | None = None,
) -> list[np.ndarray]:
    """2-D layouts of several runs' probe embeddings in one shared frame.

    The reference frame is the given ``reference`` layout, else the first run's own layout.
    PCA lays out each run on its own; UMAP warm-starts each run from the reference (see the
    module's notes). Each layout is then rotated/reflected and shifted onto the reference by
    Procrustes and scaled to the reference's spread.

    Args:
        embs: one (n, D_r) array per run; n must agree, D_r may differ.
        method: "pca" (fast, deterministic) or "umap" (seconds per run).
        seed: UMAP's random_state.
        labels: optional (n,) probe labels per run; they must all be equal.
        reference: optional (n, 2) layout to align every run onto (e.g. the first run's final
            snapshot, so that scrubbing through time keeps the frame still).

    Returns:
        one (n, 2) float64 layout per run.

    Raises:
        ProbeMismatchError: the runs have different numbers of probe points or labels.
        ValueError: an unknown method or a reference of the wrong shape.
    """
    if method not in LAYOUT_METHODS:
        raise ValueError(f"The 'method' parameter must be one of {LAYOUT_METHODS}. Got {method!r}.")
    sizes = {len(e) for e in embs}
    if len(sizes) > 1:
        raise ProbeMismatchError(
            f"The runs have different probe sets (sizes {sorted(sizes)}): compare runs with the "
            "same dataset, split, seed and probe size."
        )
    if labels is not None and any(not np.array_equal(labels[0], y) for y in labels[1:]):
        raise ProbeMismatchError(
            "The runs have different probe points (their labels differ): compare runs with the "
            "same dataset, split, seed and probe size."
        )
    points = [np.asarray(e, dtype=np.float32) for e in embs]
    if reference is None:
        target = _layout(points[0], method, seed)
        rest = points[1:]
        layouts = [target]
    else:
        target = np.asarray(reference, dtype=np.float64)
        if target.shape != (len(points[0]), 2):
            raise ValueError(
                f"The 'reference' must have shape ({len(points[0])}, 2). Got {target.shape}."
            )
        rest, layouts = points, []
    init = target if method == "umap" else None
    layouts += [_layout(e, method, seed, init) for e in rest]
    return [_align(layout, target) for layout in layouts]


def snapshot_layouts(
    store: RunStore,
    run_ids: Sequence[str],
    steps: Sequence[int],
    method: str = "pca",
    frame_step: int | None = None,
) -> list[np.ndarray]:
    """Aligned layouts of ``run_ids`` at ``steps``, in the frame of one snapshot of the first run.

    The frame is the first run's layout at ``frame_step`` (default: its last snapshot). Fixing
    it keeps the panels from spinning or flipping while the shared scrubber moves.
    """
    snaps = [store.load_snapshot(r, s) for r, s in zip(run_ids, steps, strict=True)]
    seed = store.load(run_ids[0]).config.seed
    frame_step = store.snapshot_steps(run_ids[0])[-1] if frame_step is None else frame_step
    reference = None
    if frame_step != steps[0]:
        frame = store.load_snapshot(run_ids[0], frame_step).probe_emb
        reference = _layout(frame, method, seed)
    return aligned_layouts(
        [s.probe_emb for s in snaps],
        method,
        seed,
        labels=[s.probe_labels for s in snaps],
        reference=reference,
    )


def comparison_problem(configs: Sequence[RunConfig]) -> str | None:
    """Why these runs cannot be compared side by side (different data), or None."""
    data = {(c.dataset, c.split) for c in configs}
    if len(data) > 1:
        names = ", ".join(f"{d} ({s})" for d, s in sorted(data))
        return f"These runs use different data ({names}): compare runs on one dataset and split."
    return None


def probe_note(configs: Sequence[RunConfig]) -> str | None:
    """A note when the runs' probe points differ (seed or probe size), else None."""
    if len({(c.seed, c.probe_size) for c in configs}) > 1:
        return (
            "These runs have different probe points (seed or probe size differ), so their "
            "embedding panels cannot be aligned point by point."
        )
    return None


def planned_samples(cfg: RunConfig) -> int:
    """Training samples a run consumes when it finishes: steps * P * K."""
    return cfg.steps * cfg.batch_size


def snapshot_at(
    store: RunStore, run_id: str, fraction: float | None = None, *, samples_seen: int | None = None
) -> int | None:
    """The step of the run's saved snapshot nearest to a point of training.

    Args:
        store: the run store.
        run_id: the run.
        fraction: 0..1 of the run's own planned training (``planned_samples``).
        samples_seen: an absolute number of training samples instead (for a scrubber shared by
            runs with different batch sizes). Exactly one of the two must be given.

    Returns:
        the snapshot's step (ties go to the earlier one), or None if none is saved yet.
    """
    if (fraction is None) == (samples_seen is None):
        raise ValueError("Give exactly one of 'fraction' and 'samples_seen'.")
    steps = store.snapshot_steps(run_id)
    if not steps:
        return None
    cfg = store.load(run_id).config
    target = samples_seen if fraction is None else fraction * planned_samples(cfg)
    seen = np.asarray(steps) * cfg.batch_size  # (S,) samples seen at each snapshot
    return int(steps[int(np.argmin(np.abs(seen - target)))])


def shared_steps(store: RunStore, run_ids: Sequence[str], fraction: float) -> dict[str, int | None]:
    """One scrubber for all runs: ``fraction`` of the longest run's samples; step per run."""
    total = max(planned_samples(store.load(r).config) for r in run_ids)
    return {r: snapshot_at(store, r, samples_seen=round(fraction * total)) for r in run_ids}


def run_names(store: RunStore, run_ids: Sequence[str]) -> dict[str, str]:
    """What each run is called in the figures: its label, else the settings that differ.

    A run the user renamed (``RunStore.set_label``) keeps that name. The others are named by
    the settings in which the shown runs differ (``config.differing_labels``: "margin = 0.1",
    "D = 128"). Names that would coincide get the run id appended, so every name is unique.

    Returns:
        run id -> name, in the order of ``run_ids``.
    """
    derived = differing_labels({r: store.config(r) for r in run_ids})
    names = {run_id: store.label(run_id) or derived[run_id] for run_id in run_ids}
    counts = pd.Series(list(names.values())).value_counts()
    return {r: f"{n} ({r})" if counts[n] > 1 else n for r, n in names.items()}


def results_table(
    store: RunStore, run_ids: Sequence[str], names: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per run: settings, final metrics (test vs train), best snapshot metrics, speed.

    Columns: run (its name: ``names``, else ``run_names``), id, state, dataset, loss, loss
    params, miner, miner params, dim, P x K, steps, ``final <metric>`` (``status.final_metrics``:
    P@1, R-Precision, MAP@R, NMI), ``best <metric>`` (the best value over the run's snapshots,
    on the probe set), wall time (s) (training time of the last snapshot) and samples/s.
    Missing values are NaN, so the table sorts.
    """
    names = run_names(store, run_ids) if names is None else names
    rows = []
    for run_id in run_ids:
        record = store.load(run_id)
        cfg, history = record.config, record.history
        final = record.status.get("final_metrics") or {}
        row: dict[str, Any] = {
            "run": names[run_id],
            "id": run_id,
            "state": record.status.get("state", ""),
            "dataset": cfg.dataset,
            "loss": cfg.loss,
            "loss params": params_text(cfg.loss_params),
            "miner": cfg.miner,
            "miner params": params_text(cfg.miner_params),
            "dim": cfg.embedding_dim,
            "P x K": f"{cfg.classes_per_batch} x {cfg.samples_per_class}",
            "steps": int(history["step"].max()) if len(history) else 0,
        }
        for key, name in {**METRICS, "nmi": "NMI"}.items():
            row[f"final {name}"] = float(final.get(key, np.nan))
        for key, name in METRICS.items():
            column = history[key] if key in history else pd.Series(dtype=float)
            row[f"best {name}"] = float(column.max()) if column.notna().any() else np.nan
        last = history.iloc[-1] if len(history) else {}
        elapsed = float(last.get("elapsed", np.nan)) if len(history) else np.nan
        seen = float(last.get("samples_seen", np.nan)) if len(history) else np.nan
        row["wall time (s)"] = elapsed
        row["samples/s"] = seen / elapsed if elapsed and elapsed > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_parameters(base: RunConfig) -> list[str]:
    """What a sweep from ``base`` can vary: the loss's parameters, then run-level fields."""
    numeric = [
        name
        for name, field in LOSSES[base.loss].params.model_fields.items()
        if field.annotation in (int, float) and name != "seed"
    ]
    return [*numeric, *SWEEP_FIELDS]


def suggested_values(base: RunConfig, parameter: str) -> str:
    """A reasonable default list of values to sweep, as text (e.g. ``"0.05, 0.1, 0.2, 0.5"``)."""
    if parameter == "loss":
        return ", ".join(SWEEP_LOSSES)
    if parameter == "miner":
        return ", ".join(SWEEP_MINERS)
    if parameter in SUGGESTED_VALUES:
        return SUGGESTED_VALUES[parameter]
    current = base.loss_params.get(parameter, getattr(base, parameter, None))
    if isinstance(current, (int, float)) and not isinstance(current, bool) and current:
        values = [current * f for f in (0.5, 1, 2)]
        if isinstance(current, int):  # an int parameter takes ints (3 -> 2, 3, 6, not 1.5)
            values = list(dict.fromkeys(max(1, round(v)) for v in values))
        return ", ".join(f"{v:g}" for v in values)
    return ""


def parse_values(text: str) -> list[Any]:
    """``"0.05, 0.1, triplet"`` -> ``[0.05, 0.1, "triplet"]`` (ints stay ints)."""
    values: list[Any] = []
    for item in (part.strip() for part in text.replace(";", ",").split(",")):
        if not item:
            continue
        try:
            values.append(int(item))
        except ValueError:
            try:
                values.append(float(item))
            except ValueError:
                values.append(item)
    return values


def sweep_link(base_run: str | None, parameter: str) -> dict[str, str]:
    """The Sweep page's query for a sweep over ``parameter``: Compare's link to it.

    Args:
        base_run: the saved run the grid starts from (None: the defaults).
        parameter: the first axis, one of ``sweep_parameters`` of that base.
    """
    return {"axis": parameter} | ({"base": base_run} if base_run else {})


def sweep_prefill(query: Mapping[str, str], saved: Sequence[str]) -> tuple[str, str | None]:
    """What the Sweep page starts from, read from its query (``sweep_link``'s keys).

    Returns:
        The base choice (a saved run's id, else ``"defaults"``: an unknown or deleted run
        must not break the page) and the first axis (None when the query names none).
    """
    base = query.get("base", "defaults")
    return (base if base in saved else "defaults"), (query.get("axis") or None)
