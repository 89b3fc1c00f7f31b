r"""The claim checks of the lessons: what each measures on the finished runs, and its verdict.

A check takes the lesson's runs in the lesson's order (``RunResult``: config, snapshots, final
metrics) and returns ``(holds, message)``, the message giving the measured numbers. Every
check reads the runs by their role (first run: the one the claim says wins, and so on), so
swapping the runs' results makes it fail; ``tests/test_lessons.py`` verifies that for each.
The papers are cited by ``dml_core.services.lessons``, next to each lesson.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dml_core.analysis.hard_triplets import hardest_triplets
from dml_core.config import RunConfig
from dml_core.geometry import SQRT2
from dml_core.snapshot import Snapshot


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


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float64 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_angles(
    emb: np.ndarray,
    labels: np.ndarray,
    centres: np.ndarray | None = None,
    centre_labels: np.ndarray | None = None,
) -> np.ndarray:
    r"""Each point's angle on the sphere to its own class: its spread around the class, radians.

    With ``centres`` (a class-level loss's weights, rows labelled by ``centre_labels``),
    \theta_i = \arccos \max_{k: c_k = y_i} \cos(x_i, w_k), the angle to the nearest centre of
    its class: \theta_{y_i} of Deng et al., ArcFace, CVPR 2019, Eq. 3 (the angle the margin m
    is added to), with the nearest sub-centre as in sub-center ArcFace (Deng et al., ECCV 2020).
    Without, the angle to the class's mean direction
    \mu_c = \sum_{y_j = c} \hat x_j / \lVert \sum_{y_j = c} \hat x_j \rVert with
    \hat x = x / \lVert x \rVert: the class's own spread, whatever the loss. Everything is
    compared normalised, in float64.

    Args:
        emb: (n, D) embeddings.
        labels: (n,) classes.
        centres: (rows, D) class weights or centres, or None for the class means.
        centre_labels: (rows,) the class of each row of ``centres``.

    Returns:
        (n,) angles in [0, pi].
    """
    x = _unit(emb)  # (n, D)
    labels = np.asarray(labels)
    if centres is None:
        classes, own = np.unique(labels, return_inverse=True)  # (C,), (n,)
        sums = np.zeros((len(classes), x.shape[1]))  # (C, D)
        np.add.at(sums, own, x)
        cos = np.einsum("nd,nd->n", x, _unit(sums)[own])  # (n,)
    else:
        if centre_labels is None:
            raise ValueError("class_angles needs 'centre_labels' with 'centres'.")
        mine = labels[:, None] == np.asarray(centre_labels)[None, :]  # (n, rows)
        if not mine.any(axis=1).all():
            raise ValueError("class_angles: some points' class has no centre in 'centres'.")
        cos = np.where(mine, x @ _unit(centres).T, -np.inf).max(axis=1)  # (n,)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _angles_to_weights(snap: Snapshot) -> np.ndarray:
    """Each probe point's angle to its class weight (``class_angles``), (n,) radians."""
    return class_angles(
        snap.probe_emb, snap.probe_labels, snap.class_weights, snap.class_weight_labels
    )


def hard_triplet_share(snap: Snapshot) -> float:
    """Share of the probe set's triplets (a, p, n) whose negative is nearer than the positive.

    d(a, n) < d(a, p): FaceNet's hard triplets (Schroff et al. 2015, Sec. 3.2), counted exactly
    over all n (K - 1)(n - K) triplets by ``analysis.hard_triplets.hardest_triplets``.
    """
    hard = hardest_triplets(snap.probe_emb, snap.probe_labels, k=1)
    return hard.violating / max(hard.total, 1)


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
    """A small m leaves negatives nearer orthogonal than a large m; MAP@R hardly moves.

    Sun et al. 2020, Eq. (6): a negative pair's logit gamma [s_n + m]_+ (s_n - m) keeps
    pulling s_n down towards its optimum -m, and the pair counts as done below m. With m = 0.05
    negatives are pushed to near orthogonal (s_n ~ 0); with m = 0.45 many stay at s_n in
    (0, 0.45), so the mean of s_n^2 over negative pairs is larger. Measured on the runs' own
    distances (s = 1 - d^2 / 2), not on the thresholds, so swapping the runs fails the check.
    """
    spread = [float(np.mean(_cos(r.last.neg_dist) ** 2)) for r in results]
    maps = [_map(r) for r in results]
    map_range = max(maps) - min(maps)
    holds = spread[0] < 0.9 * spread[1] and map_range < 0.1
    desc = ", ".join(
        f"m={r.config.loss_params['m']:g} gamma={r.config.loss_params['gamma']:g}: "
        f"mean s_n^2 {sq:.4f}, MAP@R {mp:.3f}"
        for r, sq, mp in zip(results, spread, maps, strict=True)
    )
    return holds, (
        f"{desc} (claim: mean s_n^2 at m=0.05 < 0.9x that at m=0.45, while MAP@R varies by "
        f"< 0.1; measured {spread[0] / max(spread[1], 1e-12):.2f}x and {map_range:.3f})"
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
        f"d_neg at D={dims[-1]} within 0.15 of √2 = {SQRT2:.3f}; MAP@R at D={dims[0]} "
        f"> 0.15 below D={dims[2]})"
    )


def check_temperature(results: Sequence[RunResult]) -> tuple[bool, str]:
    r"""Low tau spreads the embedding and punishes hard negatives; high tau tolerates them.

    Wang & Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021, Eq. (4): NT-Xent
    pushes negative j of anchor i with a weight proportional to \exp(s_{ij} / \tau), so at low
    tau the hardest negatives take nearly all of the gradient and are pushed out (the
    embedding spreads: uniformity of Wang & Isola 2020, Eq. 2, falls), while at high tau all
    negatives share it and a few can stay inside a class. Measured on the runs' own probe
    embeddings at the end: ``Snapshot.geometry["uniformity"]`` and the share of probe
    triplets whose negative is nearer than the positive (``hard_triplet_share``).
    """
    taus = [float(r.config.loss_params["temperature"]) for r in results]
    unif = [float(r.last.geometry.get("uniformity", np.nan)) for r in results]
    align = [float(r.last.geometry.get("alignment", np.nan)) for r in results]
    hard = [hard_triplet_share(r.last) for r in results]
    holds = unif[0] < unif[1] - 0.15 and hard[0] < 0.5 * hard[1]
    desc = "; ".join(
        f"τ={t:g}: uniformity {u:.3f}, hard triplets {h:.2%}, alignment {a:.3f}, "
        f"MAP@R {_map(r):.3f}"
        for r, t, u, h, a in zip(results, taus, unif, hard, align, strict=True)
    )
    return holds, (
        f"{desc} (claim: uniformity at τ={taus[0]:g} > 0.15 below τ={taus[1]:g}'s, measured "
        f"{unif[1] - unif[0]:.3f}; hard-triplet share < 0.5x, measured "
        f"{hard[0] / max(hard[1], 1e-12):.2f}x)"
    )


def check_angular_margin(results: Sequence[RunResult]) -> tuple[bool, str]:
    r"""The angular margin pulls each image nearer its class weight than plain softmax does.

    Deng et al., ArcFace, CVPR 2019, Eq. 3: the own logit s \cos(\theta_y + m) wins only once
    \theta_y + m < \theta_j for every other class j, so training keeps shrinking \theta_y, the
    angle to the own class weight; normalised softmax (Zhai & Wu 2019; m = 0, same scale)
    stops pulling once \theta_y is the smallest. Measured on the final snapshot: the mean
    \theta_y over the probe set (``class_angles`` with the snapshot's class weights); the
    spread around each class's mean direction is reported beside it.
    """
    if any(r.last.class_weights is None for r in results):
        return False, "A run saved no class weights, so the angle to them cannot be measured."
    theta = [float(np.mean(_angles_to_weights(r.last))) for r in results]
    spread = [float(np.mean(class_angles(r.last.probe_emb, r.last.probe_labels))) for r in results]
    holds = theta[0] < 0.7 * theta[1]
    desc = "; ".join(
        f"{r.config.loss}: mean θ_y {t:.3f} rad, spread around the class mean {s:.3f} rad, "
        f"MAP@R {_map(r):.3f}"
        for r, t, s in zip(results, theta, spread, strict=True)
    )
    return holds, (
        f"{desc} (claim: mean θ_y with the margin < 0.7x without, measured "
        f"{theta[0] / max(theta[1], 1e-12):.2f}x)"
    )


def check_label_free(results: Sequence[RunResult]) -> tuple[bool, str]:
    """Training on two views of each image, without labels, improves retrieval (MAP@R).

    Chen et al., SimCLR, ICML 2020: the untrained net is the same run's step-0 snapshot (same
    weights, same probe set), so the rise is what label-free training added. The run must
    have trained with ``supervision = "views"``: labels only scored it.
    """
    (run,) = results
    start, end = (float(s.metrics["map_at_r"]) for s in (run.first, run.last))
    p1_start, p1_end = (float(s.metrics["precision_at_1"]) for s in (run.first, run.last))
    label_free = run.config.supervision == "views"
    holds = label_free and end > start + 0.05
    return holds, (
        f"MAP@R on the probe set: untrained {start:.3f} -> {end:.3f} after {run.last.step} "
        f"label-free steps (claim: > +0.05, measured {end - start:+.3f}); P@1 {p1_start:.3f} -> "
        f"{p1_end:.3f}; supervision: {run.config.supervision}"
    )
