r"""Lessons: one-click presets that reproduce a paper's claim on digits, with a check that it held.

Each :class:`Lesson` names the runs to train (``RunConfig`` overrides), says what to look for,
cites the paper, and carries a ``check`` that measures the stated effect on the finished runs'
snapshots and final metrics. ``run_lesson`` trains them synchronously (tests, CLI); the app
submits them as background jobs and reads them back with ``load_results``. Every lesson runs
in well under 2 minutes on 2 CPU cores at ``scale=1``; ``scale`` shortens the runs.

The thresholds were measured on digits with the MLP, seed 0 (see each check's message):

1. Hadsell, Chopra, LeCun, CVPR 2006 vs Schroff et al. (FaceNet), CVPR 2015: a margin on
   absolute distances (contrastive) vs one on relative distances (triplet).
2. Schroff et al. 2015, Sec. 3.2 and Hermans, Beyer, Leibe 2017: the hardest negatives with a
   margin collapse the embedding; semi-hard ones do not.
3. Wu, Manmatha, Smola, Kraehenbuehl, Sampling Matters in Deep Embedding Learning, ICCV 2017:
   distance-weighted sampling and the margin loss with a learnable boundary \beta.
4. Song et al., Lifted Structured Feature Embedding, CVPR 2016; Sohn, N-pair loss, NeurIPS
   2016: all negatives of the batch vs one negative per anchor.
5. Ustinova, Lempitsky, Learning Deep Embeddings with Histogram Loss, NeurIPS 2016.
6. Sun et al., Circle Loss, CVPR 2020 (Sec. 4.5: robust to m and \gamma).
7. Wu et al. 2017, Eq. 3: on S^{D-1} distances concentrate near \sqrt{2} as D grows.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dml_core.config import RunConfig, make_config
from dml_core.geometry import SQRT2
from dml_core.runs import RunStore
from dml_core.snapshot import Snapshot

COMMON: dict[str, Any] = {"dataset": "digits", "net": "mlp", "lr": 0.01, "seed": 0}
MIN_STEPS = 10


@dataclass(frozen=True)
class RunResult:
    """One finished run of a lesson: its config, snapshots (in step order) and final metrics."""

    config: RunConfig
    snapshots: tuple[Snapshot, ...]
    final: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def first(self) -> Snapshot:
        """The step-0 snapshot (the untrained net)."""
        return self.snapshots[0]

    @property
    def last(self) -> Snapshot:
        """The last snapshot."""
        return self.snapshots[-1]


Check = Callable[[Sequence[RunResult]], tuple[bool, str]]


@dataclass(frozen=True)
class Lesson:
    """A preset: runs to train, what to look for, the paper, and a check of the claim.

    Attributes:
        key: identifier (snake_case), also used in run ids.
        title: short title.
        text: what the lesson shows and what to look for (markdown).
        paper: the citation.
        configs: overrides of ``RunConfig`` (on top of ``COMMON``), one per run.
        labels: a short name per run, e.g. ``"hard"`` / ``"semi-hard"``.
        claim: the measurable claim ``check`` tests, in one sentence.
        check: ``check(results) -> (holds, message with the measured numbers)``.
        pages: the app pages that show the effect (paths under ``pages/``).
    """

    key: str
    title: str
    text: str
    paper: str
    configs: tuple[dict[str, Any], ...]
    labels: tuple[str, ...]
    claim: str
    check: Check
    pages: tuple[str, ...] = ("pages/train.py", "pages/compare.py")


@dataclass(frozen=True)
class LessonResult:
    """The runs of a lesson and the verdict of its check."""

    lesson: Lesson
    runs: tuple[RunResult, ...]
    holds: bool
    message: str
    seconds: float


# ------------------------------------------------------------------ measurements


def _pairwise(emb: np.ndarray) -> np.ndarray:
    """All distances between distinct probe points, (n (n - 1) / 2,)."""
    emb = np.asarray(emb, dtype=np.float64)  # (n, D)
    sq = (emb**2).sum(axis=1)  # (n,)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T, 0.0)  # (n, n)
    return np.sqrt(d2[np.triu_indices(len(emb), 1)])


def _cos(d: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors at distance d: s = 1 - d^2 / 2."""
    return 1.0 - np.asarray(d, dtype=np.float64) ** 2 / 2.0


def _map(run: RunResult) -> float:
    return float(run.last.metrics["map_at_r"])


# ------------------------------------------------------------------ the checks


def check_contrastive_vs_triplet(results: Sequence[RunResult]) -> tuple[bool, str]:
    """Contrastive pulls positives towards 0 and parks negatives at m_neg; triplet does not."""
    con, tri = results
    m_neg = float(con.config.loss_params["neg_margin"])
    pos_con, pos_tri = np.median(con.last.pos_dist), np.median(tri.last.pos_dist)
    beyond = float(np.mean(con.last.neg_dist >= m_neg))
    holds = pos_con < 0.8 * pos_tri and beyond >= 0.9
    return holds, (
        f"median positive distance: contrastive {pos_con:.3f} vs triplet {pos_tri:.3f} "
        f"(claim: < 0.8x); contrastive negatives at or beyond m_neg = {m_neg:g}: {beyond:.1%} "
        f"(claim: >= 90%)"
    )


def check_hard_mining_collapse(results: Sequence[RunResult]) -> tuple[bool, str]:
    """Hardest negatives collapse (mean distance < 0.1x semi-hard's, warning fires); not semi."""
    hard, semi = results
    d_hard = hard.last.collapse["mean_distance"]
    d_semi = semi.last.collapse["mean_distance"]
    fired_hard = bool(hard.last.collapse["collapsing"])
    fired_semi = any(s.collapse["collapsing"] for s in semi.snapshots)
    margin = float(hard.config.loss_params["margin"])
    holds = d_hard < 0.1 * d_semi and fired_hard and not fired_semi
    return holds, (
        f"mean pairwise probe distance at the end: hard {d_hard:.4f} vs semi-hard {d_semi:.3f} "
        f"(ratio {d_hard / max(d_semi, 1e-12):.4f}, claim < 0.1); collapse warning: hard "
        f"{'fired' if fired_hard else 'silent'}, semi-hard {'fired' if fired_semi else 'silent'}; "
        f"last loss under hard mining {hard.last.loss:.3f} (margin {margin:g})"
    )


def check_sampling_matters(results: Sequence[RunResult]) -> tuple[bool, str]:
    """The learnable beta moves, and further under distance-weighted than uniform sampling."""
    dw, uni = results
    moved = [abs(r.last.extras["beta"] - r.first.extras["beta"]) for r in (dw, uni)]
    holds = min(moved) > 0.1 and moved[0] > moved[1]
    (b0, b1), (u0, u1) = ((r.first.extras["beta"], r.last.extras["beta"]) for r in (dw, uni))
    return holds, (
        f"beta: distance-weighted {b0:.2f} -> {b1:.3f}, uniform {u0:.2f} -> {u1:.3f} (claim: "
        f"both move > 0.1, distance-weighted further); MAP@R {_map(dw):.3f} vs {_map(uni):.3f}"
    )


def check_all_negatives(results: Sequence[RunResult]) -> tuple[bool, str]:
    """Lifted structure and N-pair beat triplet with one negative per anchor at equal steps."""
    lifted, npair, triplet = (_map(r) for r in results)
    holds = lifted > triplet + 0.05 and npair > triplet + 0.05
    return holds, (
        f"MAP@R after the same steps: lifted structure {lifted:.3f}, N-pair {npair:.3f}, "
        f"triplet with one negative {triplet:.3f} (claim: both > triplet + 0.05)"
    )


def check_histogram_overlap(results: Sequence[RunResult]) -> tuple[bool, str]:
    """The pos/neg overlap P(d_neg < d_pos) falls below a quarter of its start."""
    (run,) = results
    start, end = run.first.metrics["pair_overlap"], run.last.metrics["pair_overlap"]
    holds = end < 0.25 * start
    return holds, f"pair overlap P(d_neg < d_pos): {start:.3f} -> {end:.4f} (claim: < 0.25x start)"


def check_circle(results: Sequence[RunResult]) -> tuple[bool, str]:
    """The relaxation m moves the boundary (share of positives inside) but not MAP@R."""
    inside = []
    for run in results:
        m = float(run.config.loss_params["m"])
        inside.append(float(np.mean(_cos(run.last.pos_dist) > 1.0 - m)))
    maps = [_map(r) for r in results]
    spread = max(maps) - min(maps)
    holds = inside[1] - inside[0] > 0.1 and spread < 0.1
    desc = ", ".join(
        f"m={r.config.loss_params['m']:g} gamma={r.config.loss_params['gamma']:g}: "
        f"{share:.0%} of positives with s_p > 1 - m, MAP@R {mp:.3f}"
        for r, share, mp in zip(results, inside, maps, strict=True)
    )
    return holds, (
        f"{desc} (claim: the share inside the boundary grows by > 10 points from m=0.05 to "
        f"m=0.45, while MAP@R varies by < 0.1; measured {spread:.3f})"
    )


def check_dimension(results: Sequence[RunResult]) -> tuple[bool, str]:
    """Untrained distances concentrate as D grows; trained negatives sit near sqrt(2)."""
    dims = [r.config.embedding_dim for r in results]
    spread0 = [float(_pairwise(r.first.probe_emb).std()) for r in results]
    neg_mean = [float(np.mean(r.last.neg_dist)) for r in results]
    maps = [_map(r) for r in results]
    shrinks = all(a > b for a, b in itertools.pairwise(spread0))
    holds = (
        shrinks
        and spread0[-1] < 0.5 * spread0[0]
        and abs(neg_mean[-1] - SQRT2) < 0.15
        and maps[0] < maps[2] - 0.15
    )
    per_dim = "; ".join(
        f"D={d}: untrained std {s:.3f}, trained mean d_neg {n:.3f}, MAP@R {m:.3f}"
        for d, s, n, m in zip(dims, spread0, neg_mean, maps, strict=True)
    )
    return holds, (
        f"{per_dim} (claim: untrained std falls with D, to < 0.5x at D={dims[-1]}; trained mean "
        f"d_neg at D={dims[-1]} within 0.15 of sqrt(2) = {SQRT2:.3f}; MAP@R at D={dims[0]} "
        f"> 0.15 below D={dims[2]})"
    )


# ------------------------------------------------------------------ the lessons


def _triplet(margin: float) -> dict[str, Any]:
    return {"loss": "triplet", "loss_params": {"margin": margin}}


def _semi_hard(margin: float) -> dict[str, Any]:
    return {"miner": "semi_hard", "miner_params": {"margin": margin}}


_LESSON_LIST = (
    Lesson(
        key="contrastive_vs_triplet",
        title="1. Contrastive vs triplet: absolute vs relative margins",
        text=(
            "The contrastive loss asks for absolute distances: positives at 0 (or below "
            "m_pos), negatives at least m_neg apart. The triplet loss only asks that each "
            "negative be alpha farther than the positive, wherever they are. **Look for** on "
            "the distance histograms: contrastive's positives pile up near 0 and its negatives "
            "stop at the m_neg line; triplet's positives stay spread, since only the gap matters."
        ),
        paper="Hadsell, Chopra, LeCun, CVPR 2006; Schroff, Kalenichenko, Philbin (FaceNet), "
        "CVPR 2015",
        configs=(
            {
                "loss": "contrastive",
                "loss_params": {"neg_margin": 1.0},
                "miner": "all",
                "steps": 200,
            },
            {**_triplet(0.2), **_semi_hard(0.2), "steps": 200},
        ),
        labels=("contrastive", "triplet"),
        claim="Contrastive's median positive distance is < 0.8x triplet's, and >= 90% of its "
        "negative pairs lie at or beyond m_neg.",
        check=check_contrastive_vs_triplet,
        pages=("pages/train.py", "pages/compare.py", "pages/loss_explorer.py"),
    ),
    Lesson(
        key="hard_mining_collapse",
        title="2. Hardest negatives collapse the embedding",
        text=(
            "With a margin, the hardest negative of each anchor (batch-hard) is often closer "
            "than its positive; the cheapest way to lower that loss early in training is to "
            "map everything to one point, where every triplet costs exactly the margin. "
            "**Look for** all distances going to 0, the loss stuck at the margin, and the "
            "collapse warning on the Train page; semi-hard negatives (FaceNet) train normally."
        ),
        paper="Schroff et al., FaceNet, CVPR 2015, Sec. 3.2; Hermans, Beyer, Leibe, In Defense "
        "of the Triplet Loss, 2017",
        configs=(
            {**_triplet(1.0), "miner": "batch_hard", "lr": 0.05, "steps": 100},
            {**_triplet(1.0), **_semi_hard(1.0), "lr": 0.05, "steps": 100},
        ),
        labels=("batch-hard", "semi-hard"),
        claim="The mean pairwise probe distance at the end under hardest-negative mining is "
        "< 0.1x that under semi-hard mining; the collapse warning fires in the first run only.",
        check=check_hard_mining_collapse,
        pages=("pages/train.py", "pages/compare.py", "pages/miner_view.py"),
    ),
    Lesson(
        key="sampling_matters",
        title="3. Sampling Matters: distance-weighted sampling and a learnable beta",
        text=(
            "On the unit sphere random pairs crowd at sqrt(2) (density q(d)), so uniform "
            "sampling mostly yields uninformative negatives. Distance-weighted sampling draws "
            "negatives with probability 1/q(d), spread over all distances; the margin loss "
            "[alpha + y (d - beta)]_+ learns the boundary beta. Both runs get one negative per "
            "positive pair. **Look for** beta's trajectory in the curves and the sphere "
            "distribution against q(d)."
        ),
        paper="Wu, Manmatha, Smola, Kraehenbuehl, Sampling Matters in Deep Embedding Learning, "
        "ICCV 2017",
        configs=(
            {"loss": "margin", "miner": "distance_weighted", "steps": 200},
            {
                "loss": "margin",
                "miner": "random",
                "miner_params": {"fraction": 1 / 80},
                "steps": 200,
            },
        ),
        labels=("distance-weighted", "uniform"),
        claim="beta moves by > 0.1 from its start in both runs, and further under "
        "distance-weighted sampling.",
        check=check_sampling_matters,
        pages=("pages/train.py", "pages/compare.py", "pages/sphere.py"),
    ),
    Lesson(
        key="all_negatives",
        title="4. Lifted structure and N-pair: all negatives vs one per anchor",
        text=(
            "A triplet sees one negative per anchor; lifted structure and N-pair push each "
            "anchor away from every negative of the batch at once (a soft maximum or a "
            "softmax over them). Batches of 10 classes x 2 samples, as N-pair builds them. "
            "**Look for** MAP@R rising faster for the two all-negative losses."
        ),
        paper="Song, Xiang, Jegelka, Savarese, CVPR 2016; Sohn, NeurIPS 2016",
        configs=tuple(
            {"classes_per_batch": 10, "samples_per_class": 2, "steps": 120, **run}
            for run in (
                {"loss": "lifted_structure", "miner": "all"},
                {"loss": "n_pair", "miner": "all"},
                {"loss": "triplet", "miner": "random", "miner_params": {"fraction": 1 / 18}},
            )
        ),
        labels=("lifted structure", "N-pair", "triplet, 1 negative"),
        claim="After the same steps, lifted structure and N-pair both reach a MAP@R more than "
        "0.05 above triplet with one random negative per anchor.",
        check=check_all_negatives,
    ),
    Lesson(
        key="histogram_overlap",
        title="5. Histogram loss: shrink the overlap, no margin to tune",
        text=(
            "The histogram loss estimates the positive and negative distance histograms of the "
            "batch and minimises the probability that a random negative pair is closer than a "
            "random positive one. It has no margin: only the number of bins. **Look for** the "
            "two histograms pulling apart and the pair overlap curve falling."
        ),
        paper="Ustinova, Lempitsky, Learning Deep Embeddings with Histogram Loss, NeurIPS 2016",
        configs=({"loss": "histogram", "miner": "all", "steps": 200},),
        labels=("histogram",),
        claim="The pair overlap P(d_neg < d_pos) at the end is < 0.25x its value before training.",
        check=check_histogram_overlap,
    ),
    Lesson(
        key="circle",
        title="6. Circle loss: the relaxation m and the scale gamma",
        text=(
            "Circle loss re-weights each similarity by how far it is from its optimum; its "
            "decision boundary is the circle (s_n - 0)^2 + (s_p - 1)^2 = 2 m^2. m sets where "
            "pairs count as done (positives above 1 - m, negatives below m), gamma how sharply "
            "the hardest pairs dominate. **Look for** the boundary in the Loss explorer, and "
            "how similar the runs end up: the paper reports robustness to m and gamma."
        ),
        paper="Sun et al., Circle Loss: A Unified Perspective of Pair Similarity Optimization, "
        "CVPR 2020",
        configs=tuple(
            {"loss": "circle", "loss_params": params, "miner": "all", "steps": 200}
            for params in (
                {"m": 0.05, "gamma": 80.0},
                {"m": 0.45, "gamma": 80.0},
                {"m": 0.25, "gamma": 16.0},
            )
        ),
        labels=("m=0.05", "m=0.45", "gamma=16"),
        claim="Going from m=0.05 to m=0.45 raises the share of positive pairs inside the "
        "boundary by > 10 points, while MAP@R of all runs stays within 0.1.",
        check=check_circle,
        pages=("pages/loss_explorer.py", "pages/train.py", "pages/compare.py"),
    ),
    Lesson(
        key="dimension",
        title="7. Dimension: distances concentrate near sqrt(2)",
        text=(
            "The same triplet loss at D = 2, 3, 16, 128. In 3-D you can watch the sphere "
            "directly. As D grows the distances between points on S^{D-1} concentrate "
            "(q(d) narrows around sqrt(2)): already the untrained net's distances spread less, "
            "though they centre lower because an untrained ReLU net maps all images into a "
            "narrow cone. After training, negative pairs sit near sqrt(2), nearly orthogonal. "
            "In 2-D ten classes have no room and retrieval suffers."
        ),
        paper="Wu et al., Sampling Matters, ICCV 2017, Eq. 3",
        configs=tuple(
            {"loss": "triplet", "miner": "semi_hard", "embedding_dim": dim, "steps": 120}
            for dim in (2, 3, 16, 128)
        ),
        labels=("D=2", "D=3", "D=16", "D=128"),
        claim="The std of the untrained pairwise distances falls with D (to < 0.5x from D=2 to "
        "D=128); trained negatives at D=128 average within 0.15 of sqrt(2); MAP@R at D=2 is "
        "> 0.15 below D=16.",
        check=check_dimension,
        pages=("pages/sphere.py", "pages/train.py", "pages/compare.py"),
    ),
)

LESSONS: dict[str, Lesson] = {lesson.key: lesson for lesson in _LESSON_LIST}


def lesson_configs(lesson: Lesson, scale: float = 1.0) -> list[RunConfig]:
    """The lesson's runs as checked configs; ``scale`` multiplies the steps (at least 10).

    Snapshots are taken about every quarter of the run, so each run has 5 or 6 of them.
    """
    if not scale > 0:
        raise ValueError(f"The 'scale' parameter of lesson_configs must be > 0. Got {scale}.")
    configs = []
    for overrides in lesson.configs:
        values = {**COMMON, **overrides}
        steps = max(MIN_STEPS, round(values["steps"] * scale))
        values.update(steps=steps, snapshot_every=max(1, steps // 4))
        configs.append(make_config(**values))
    return configs


def lesson_run_ids(lesson: Lesson, stamp: str | None = None) -> list[str]:
    """Run ids for one launch of a lesson: ``lesson-<key>-<stamp>-<i>``."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    key = lesson.key.replace("_", "-")
    return [f"lesson-{key}-{stamp}-{i}" for i in range(len(lesson.configs))]


def latest_lesson_runs(store: RunStore, lesson: Lesson) -> list[str]:
    """The run ids of the newest complete launch of ``lesson`` in ``store`` ([] if none)."""
    prefix = f"lesson-{lesson.key.replace('_', '-')}-"
    n = len(lesson.configs)
    stamps = sorted(
        {r[len(prefix) :].rsplit("-", 1)[0] for r in store.list() if r.startswith(prefix)},
        reverse=True,
    )
    saved = set(store.list())
    for stamp in stamps:
        ids = lesson_run_ids(lesson, stamp)
        if all(r in saved for r in ids) and len(ids) == n:
            return ids
    return []


def load_results(store: RunStore, run_ids: Sequence[str]) -> list[RunResult]:
    """Read finished runs back from the store (snapshots in step order, final metrics)."""
    results = []
    for run_id in run_ids:
        record = store.load(run_id)
        snaps = tuple(store.load_snapshot(run_id, s) for s in record.snapshot_steps)
        final = dict(record.status.get("final_metrics") or {})
        results.append(RunResult(record.config, snaps, final, run_id))
    return results


def evaluate(lesson: Lesson, results: Sequence[RunResult]) -> tuple[bool, str]:
    """The lesson's verdict on these runs; a run without snapshots cannot be judged."""
    if len(results) != len(lesson.configs) or any(len(r.snapshots) < 2 for r in results):
        return False, "Not every run of the lesson has finished with snapshots."
    return lesson.check(results)


def run_lesson(lesson: Lesson, scale: float = 1.0, store: RunStore | None = None) -> LessonResult:
    """Train the lesson's runs one after another (CPU-friendly) and check the claim.

    Args:
        lesson: one of ``LESSONS``.
        scale: multiplies each run's steps (tests use < 1).
        store: when given, every run is saved there as a normal run (config, snapshots,
            final metrics, status "finished").
    """
    from dml_core.train import Trainer  # torch only when training

    start = time.perf_counter()
    runs = []
    ids = lesson_run_ids(lesson) if store is not None else [None] * len(lesson.configs)
    for cfg, run_id in zip(lesson_configs(lesson, scale), ids, strict=True):
        trainer = Trainer(cfg)
        if store is not None:
            store.create(cfg, run_id)
            store.set_status(run_id, state="running", device=trainer.device_note)
        snaps = []
        for snap in trainer.run():
            snaps.append(snap)
            if store is not None:
                store.save_snapshot(run_id, snap)
        final = trainer.final_metrics() if cfg.final_eval else {}
        if store is not None:
            store.set_status(run_id, state="finished", step=trainer.step, final_metrics=final)
        runs.append(RunResult(cfg, tuple(snaps), final, run_id))
    holds, message = evaluate(lesson, runs)
    return LessonResult(lesson, tuple(runs), holds, message, time.perf_counter() - start)
