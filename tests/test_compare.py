"""Compare: aligned layouts, the shared scrubber, the results table, the one-parameter sweep
(built by the Sweep page from Compare's link), the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dml_core.analysis import compare
from dml_core.config import make_config
from dml_core.errors import ConfigError
from dml_core.figures import compare as compare_figures
from dml_core.registry import LOSSES
from dml_core.runs import RunStore
from dml_core.sweeps import Axis, build_sweep
from tests.saved_runs import train_and_save

TINY = {"steps": 30, "snapshot_every": 10, "probe_size": 200, "final_eval": True, "device": "cpu"}


def train_runs(root: Path, settings: list[dict]) -> tuple[RunStore, list[str]]:
    """Tiny real runs on digits, trained to the end in this thread's caller."""
    store = RunStore(root)
    ids = [
        train_and_save(store, make_config(**TINY, **extra), f"run-{i}")
        for i, extra in enumerate(settings)
    ]
    return store, ids


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, list[str]]:
    return train_runs(
        tmp_path_factory.mktemp("runs"),
        [
            {"loss_params": {"margin": 0.1}, "miner_params": {"margin": 0.1}},
            {"loss": "contrastive", "samples_per_class": 8},
        ],
    )


def centroids(layout: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([layout[labels == c].mean(axis=0) for c in np.unique(labels)])


def test_a_rotated_copy_aligns_onto_the_same_coordinates() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(120, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # (8, 8) orthogonal
    first, second = compare.aligned_layouts([emb, 3.0 * emb @ rotation + 1.0], "pca")
    np.testing.assert_allclose(second, first, atol=1e-5)


def test_class_centroids_of_two_runs_are_closer_in_the_shared_frame(runs) -> None:
    store, (a, b) = runs
    snaps = [store.load_snapshot(r, store.snapshot_steps(r)[-1]) for r in (a, b)]
    labels = snaps[0].probe_labels
    raw = [compare.project(s.probe_emb, "pca") for s in snaps]  # each in its own frame
    aligned = compare.aligned_layouts([s.probe_emb for s in snaps], "pca")
    np.testing.assert_allclose(aligned[0], raw[0], atol=1e-9)  # the reference stays put

    def gap(first, second):  # mean distance of matching class centroids, in reference units
        return np.linalg.norm(centroids(first, labels) - centroids(second, labels), axis=1).mean()

    assert gap(aligned[0], aligned[1]) < gap(raw[0], raw[1])


def test_different_probe_points_are_refused() -> None:
    emb = np.zeros((10, 4))
    with pytest.raises(compare.ProbeMismatchError, match="different probe"):
        compare.aligned_layouts([emb, np.zeros((12, 4))])
    with pytest.raises(compare.ProbeMismatchError, match="labels differ"):
        compare.aligned_layouts([emb, emb], labels=[np.arange(10), np.arange(10)[::-1]])


def test_snapshot_layouts_keep_the_first_runs_final_frame(runs) -> None:
    store, ids = runs
    first = compare.snapshot_layouts(store, ids, [10, 30], "pca")
    assert [layout.shape for layout in first] == [(200, 2), (200, 2)]
    final = compare.snapshot_layouts(store, ids, [30, 30], "pca")
    np.testing.assert_allclose(first[1], final[1])


def test_snapshot_at_picks_the_nearest_snapshot_by_samples_seen(runs) -> None:
    store, (a, b) = runs
    assert store.snapshot_steps(a) == (0, 10, 20, 30)
    assert compare.snapshot_at(store, a, 0.0) == 0
    assert compare.snapshot_at(store, a, 0.4) == 10
    assert compare.snapshot_at(store, a, 1.0) == 30
    # a is 6 x 16 = 96 samples per step, b 6 x 8 = 48: 960 samples are step 10 of a, 20 of b
    assert compare.snapshot_at(store, b, samples_seen=960) == 20
    assert compare.shared_steps(store, [a, b], 0.6) == {a: 20, b: 30}
    with pytest.raises(ValueError, match="exactly one"):
        compare.snapshot_at(store, a)


def test_results_table_reads_status_and_history(runs) -> None:
    store, ids = runs
    table = compare.results_table(store, ids)
    assert list(table["id"]) == ids
    assert list(table["run"]) == [  # what differs: the loss (its non-defaults), margins, K
        "loss = triplet, margin = 0.1, miner margin = 0.1, K = 16",
        "loss = contrastive, miner margin = 0.2, K = 8",
    ]
    assert list(table["loss"]) == ["triplet", "contrastive"]
    assert table.loc[0, "loss params"] == "margin=0.1, soft=False"
    for name in ("P@1", "R-Precision", "MAP@R"):
        assert table[f"best {name}"].between(0, 1).all()
    final = store.status(ids[1])["final_metrics"]
    assert table.loc[1, "final P@1"] == pytest.approx(final["precision_at_1"])
    assert table.loc[1, "final NMI"] == pytest.approx(final["nmi"])
    history = store.history(ids[0])
    assert table.loc[0, "best MAP@R"] == pytest.approx(history["map_at_r"].max())
    assert (table["wall time (s)"] > 0).all()
    assert (table["samples/s"] > 0).all()
    assert table.sort_values("final P@1").shape == table.shape


def one_parameter_sweep(base, parameter: str, values) -> list:
    """The configs of Compare's one-parameter sweep, as the Sweep page now builds it (one
    axis, one seed per value: the old panel's runs)."""
    sweep = build_sweep(base, [Axis(name=parameter, values=tuple(values))], 1)
    return [sweep.config(run) for run in sweep.runs]


def test_sweep_over_a_margin_moves_the_miner_margin_too() -> None:
    """Catches a margin axis that leaves semi-hard's margin at 0.2 (PML issue #466), or one
    that changes the seed or the data of the runs."""
    base = make_config(seed=3)
    cfgs = one_parameter_sweep(base, "margin", [0.05, 0.1, 0.2, 0.5])
    assert [c.loss_params["margin"] for c in cfgs] == [0.05, 0.1, 0.2, 0.5]
    assert [c.miner_params["margin"] for c in cfgs] == [0.05, 0.1, 0.2, 0.5]
    assert {c.seed for c in cfgs} == {3}
    assert {c.dataset for c in cfgs} == {"digits"}


def test_sweep_over_losses_uses_their_defaults() -> None:
    """Catches a loss axis that carries the base's loss parameters over (triplet would keep
    margin 0.4) or changes the miner."""
    base = make_config(loss_params={"margin": 0.4})
    cfgs = one_parameter_sweep(base, "loss", compare.SWEEP_LOSSES)
    assert [c.loss for c in cfgs] == list(compare.SWEEP_LOSSES)
    assert cfgs[1].loss_params["margin"] == 0.2
    assert {c.miner for c in cfgs} == {base.miner}
    dims = one_parameter_sweep(base, "embedding_dim", compare.parse_values("2, 16"))
    assert [c.embedding_dim for c in dims] == [2, 16]


@pytest.mark.parametrize(
    ("parameter", "values", "message"),
    [
        ("gamma", [1.0, 2.0], "'gamma' is unknown"),
        ("margin", [0.1, 5.0], "margin=5: The 'margin' parameter"),
        ("loss", ["triplet", "nope"], "Unknown loss 'nope'"),
    ],
)
def test_bad_sweeps_name_the_parameter(parameter, values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        one_parameter_sweep(make_config(), parameter, values)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_parameter_compare_offers_makes_a_sweep_with_its_suggested_values(loss) -> None:
    """Compare's panel links to the Sweep page with one of ``sweep_parameters``, whose text
    box starts with ``suggested_values``: each pair must build a sweep (no error on a first
    click). Catches a suggestion the parameter's bounds refuse, e.g. sub_centers = 1.5 (half
    of an int parameter), or a parameter the Sweep page does not know."""
    base = make_config(loss=loss)
    for parameter in compare.sweep_parameters(base):
        values = compare.parse_values(compare.suggested_values(base, parameter))
        if not values:  # nothing to scale (a default of 0): the user types the values
            continue
        cfgs = one_parameter_sweep(base, parameter, values)
        assert len(cfgs) == len(values) >= 2


def test_the_sweep_link_reads_back_on_the_sweep_page() -> None:
    """``sweep_link`` (Compare) and ``sweep_prefill`` (Sweep) agree; an unknown run reads
    as the defaults. Catches a renamed query key on one side only."""
    query = compare.sweep_link("run-1", "lr")
    assert compare.sweep_prefill(query, ["run-0", "run-1"]) == ("run-1", "lr")
    assert compare.sweep_prefill(query, ["run-0"]) == ("defaults", "lr")
    assert compare.sweep_prefill(compare.sweep_link(None, "lr"), []) == ("defaults", "lr")
    assert compare.sweep_prefill({}, ["run-0"]) == ("defaults", None)


def test_comparison_problems_are_named() -> None:
    digits, open_set = make_config(), make_config(split="open-set", classes_per_batch=4)
    assert "different data" in compare.comparison_problem([digits, open_set])
    assert compare.comparison_problem([digits, digits]) is None
    assert "different probe points" in compare.probe_note([digits, make_config(seed=1)])


def test_figures_share_axes_and_colours(runs) -> None:
    store, ids = runs
    snaps = [store.load_snapshot(r, 30) for r in ids]
    layouts = compare.aligned_layouts([s.probe_emb for s in snaps])
    names = [str(i) for i in range(10)]
    emb = compare_figures.embedding_panels_figure(layouts, snaps[0].probe_labels, names, ids)
    assert emb.layout.xaxis.range == emb.layout.xaxis2.range
    assert emb.layout.xaxis2.matches == "x"
    assert sum(t.showlegend for t in emb.data) == 10
    hist = compare_figures.histogram_panels_figure(snaps, ids)
    bins = {(tuple(np.asarray(t.x).tolist()), t.width) for t in hist.data}
    assert len(bins) == 1  # every run's bars on the same bins
    assert hist.layout.yaxis2.matches == "y"
    sphere = compare_figures.sphere_overlay_figure([s.probe_emb for s in snaps], ids)
    assert [t.line.color for t in sphere.data[:2]] == list(compare_figures.RUN_COLORS[:2])
    curves = compare_figures.metric_curves_figure(
        {r: store.history(r) for r in ids}, x="elapsed", marker_x={ids[0]: 0.0}
    )
    assert curves.layout.xaxis.title.text == "wall time (s)"
    assert len(curves.data) == 2 * 3 + 3


def test_an_aligned_layout_keeps_the_references_spread() -> None:
    """Two unrelated embeddings: the second is rotated, shifted and scaled onto the first.
    Catches: the scale inverted (size / target), which a rotated copy (ratio 1) cannot show."""
    rng = np.random.default_rng(1)
    first, second = compare.aligned_layouts([rng.normal(size=(100, 8)), rng.normal(size=(100, 8))])
    centre = first.mean(axis=0)

    def spread(layout: np.ndarray) -> float:
        return float(np.sqrt(np.mean((layout - centre) ** 2)))

    assert spread(second) == pytest.approx(spread(first), rel=1e-9)


def test_wall_time_and_throughput_are_the_runs_last_figures(
    runs: tuple[RunStore, list[str]],
) -> None:
    """Catches: the wall time read from another row of the history than the last, and
    samples/s computed upside down."""
    store, ids = runs
    table = compare.results_table(store, ids)
    for i, run_id in enumerate(ids):
        last = store.history(run_id).iloc[-1]
        assert table.loc[i, "wall time (s)"] == pytest.approx(last["elapsed"])
        assert table.loc[i, "samples/s"] == pytest.approx(last["samples_seen"] / last["elapsed"])
