r"""The lessons' table: each lesson's runs, text, paper, claim and check.

``dml_core.services.lessons`` trains and judges them (and re-exports ``Lesson``, ``LESSONS`` and
``COMMON``). A lesson's runs are ``RunConfig`` overrides on top of ``COMMON``; its check lives in
``lesson_checks``. Every lesson runs in well under 2 minutes on 2 CPU cores at ``scale=1``.

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
8. Wang & Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021: the temperature
   \tau of NT-Xent trades uniformity (Wang & Isola, ICML 2020) against tolerance of hard
   negatives.
9. Deng et al., ArcFace, CVPR 2019: an additive angular margin tightens each class around its
   weight, against normalised softmax (Zhai & Wu, BMVC 2019) at the same scale.
10. Chen et al., SimCLR, ICML 2020: two augmented views of each image, no labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dml_core.services.lesson_checks import (
    Check,
    check_all_negatives,
    check_angular_margin,
    check_circle,
    check_contrastive_vs_triplet,
    check_dimension,
    check_hard_mining_collapse,
    check_histogram_overlap,
    check_label_free,
    check_sampling_matters,
    check_temperature,
)

COMMON: dict[str, Any] = {"dataset": "digits", "net": "mlp", "lr": 0.01, "seed": 0}


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
            "collapse warning on the Train page; semi-hard negatives (FaceNet) train normally. "
            "A milder failure is dimensional collapse: the points keep apart but use only a "
            "few directions, so the effective rank on the Train page falls towards 1."
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
            "On the unit sphere random pairs crowd at √2 (density q(d)), so uniform "
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
            "the hardest pairs dominate. **Look for** the boundary in the Loss explorer, the "
            "negatives of the m=0.45 run stopping at positive similarities while m=0.05 pushes "
            "them to orthogonal, and how similar the retrieval ends up: the paper reports "
            "robustness to m and gamma."
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
        claim="Negative pairs end nearer orthogonal with m=0.05 than with m=0.45 (mean s_n^2 "
        "below 0.9x), while MAP@R of all runs stays within 0.1.",
        check=check_circle,
        pages=("pages/loss_explorer.py", "pages/train.py", "pages/compare.py"),
    ),
    Lesson(
        key="dimension",
        title="7. Dimension: distances concentrate near √2",
        text=(
            "The same triplet loss at D = 2, 3, 16, 128. In 3-D you can watch the sphere "
            "directly. As D grows the distances between points on Sᴰ⁻¹ concentrate "
            "(q(d) narrows around √2): already the untrained net's distances spread less, "
            "though they centre lower because an untrained ReLU net maps all images into a "
            "narrow cone. After training, negative pairs sit near √2, nearly orthogonal. "
            "In 2-D ten classes have no room and retrieval suffers."
        ),
        paper="Wu et al., Sampling Matters, ICCV 2017, Eq. 3",
        configs=tuple(
            {"loss": "triplet", "miner": "semi_hard", "embedding_dim": dim, "steps": 120}
            for dim in (2, 3, 16, 128)
        ),
        labels=("D=2", "D=3", "D=16", "D=128"),
        claim="The std of the untrained pairwise distances falls with D (to < 0.5x from D=2 to "
        "D=128); trained negatives at D=128 average within 0.15 of √2; MAP@R at D=2 is "
        "> 0.15 below D=16.",
        check=check_dimension,
        pages=("pages/sphere.py", "pages/train.py", "pages/compare.py"),
    ),
    Lesson(
        key="temperature",
        title="8. Temperature: low τ spreads the embedding and punishes hard negatives",
        text=(
            "NT-Xent (InfoNCE) asks each anchor to pick its positive out of all others by a "
            "softmax over similarities divided by the temperature τ. A negative is pushed with "
            "its softmax weight exp(s/τ) / Σ: at low τ the hardest negatives take almost all of "
            "it, at high τ every negative gets about the same. Both runs use labels (every "
            "same-class pair is a positive), τ = 0.05 vs τ = 1. **Look for** the (uniformity, "
            "alignment) path on the Train page: the low-τ run ends further left, spread more "
            "evenly over the sphere, with fewer negatives nearer an anchor than its positives. "
            "The high-τ run tolerates those hard negatives while it packs each class tighter "
            "(lower alignment). The Loss explorer draws each negative's weight against its "
            "similarity for several τ."
        ),
        paper="Wang, Liu, Understanding the Behaviour of Contrastive Loss, CVPR 2021; Wang, "
        "Isola, Alignment and Uniformity on the Hypersphere, ICML 2020; Chen et al., SimCLR, "
        "ICML 2020",
        configs=tuple(
            {"loss": "ntxent", "loss_params": {"temperature": tau}, "miner": "all", "steps": 200}
            for tau in (0.05, 1.0)
        ),
        labels=("τ=0.05", "τ=1"),
        claim="At the end, uniformity at τ = 0.05 is more than 0.15 below τ = 1's, and its "
        "share of hard probe triplets (negative nearer than positive) is < 0.5x τ = 1's.",
        check=check_temperature,
        pages=("pages/train.py", "pages/loss_explorer.py", "pages/compare.py"),
    ),
    Lesson(
        key="angular_margin",
        title="9. Angular margins: ArcFace tightens each class around its weight",
        text=(
            "ArcFace and normalised softmax both score an embedding against one learned weight "
            "per class by the cosine of the angle θ between them, at the same scale s = 1/T = "
            "20. Normalised softmax is satisfied once the angle θ_y to the own class weight is "
            "the smallest; ArcFace only once θ_y + m < θ_j for every other class j (m = 0.5 "
            "rad), so it keeps pulling each image towards its class weight. **Look for** the "
            "class weights drawn among the probe points on the Train page, and the decision "
            "boundaries in the Loss explorer, where the margin moves ArcFace's boundary off the "
            "diagonal θ_own = θ_other. CosFace (cos θ_y − m) does the same with a cosine margin."
        ),
        paper="Deng, Guo, Xue, Zafeiriou, ArcFace: Additive Angular Margin Loss for Deep Face "
        "Recognition, CVPR 2019; Zhai, Wu, Classification is a Strong Baseline for Deep Metric "
        "Learning, BMVC 2019",
        configs=tuple(
            {"loss": loss, "loss_params": params, "miner": "all", "steps": 350}
            for loss, params in (
                ("arcface", {"margin": 0.5, "scale": 20.0}),
                ("normalized_softmax", {"temperature": 0.05}),
            )
        ),
        labels=("ArcFace m=0.5", "normalised softmax"),
        claim="At the end the mean angle θ_y between a probe image and its own class weight is "
        "< 0.7x under ArcFace than under normalised softmax.",
        check=check_angular_margin,
        pages=("pages/train.py", "pages/loss_explorer.py", "pages/compare.py"),
    ),
    Lesson(
        key="label_free",
        title="10. Learning without labels: SimCLR",
        text=(
            "Each batch holds N images x 2 augmented views (a random crop, a small rotation "
            "and shift, pixel noise); NT-Xent asks each view to pick its twin out of the 2N − 1 "
            "others. Training never reads a label: labels only colour the points and score "
            "retrieval. **Look for** the views strip on the Train page (what the net is asked "
            "to match), MAP@R rising from the untrained net's, and digit classes forming "
            "though the loss never saw one. On digits the untrained net's nearest neighbour is "
            "already usually right, so P@1 can dip: what improves is the ranking of the whole "
            "class (MAP@R)."
        ),
        paper="Chen, Kornblith, Norouzi, Hinton, A Simple Framework for Contrastive Learning of "
        "Visual Representations (SimCLR), ICML 2020; Oord, Li, Vinyals, Representation "
        "Learning with Contrastive Predictive Coding (InfoNCE), 2018",
        configs=(
            {
                "supervision": "views",
                "loss": "ntxent",
                "loss_params": {"temperature": 0.5},
                "miner": "all",
                "steps": 300,
            },
        ),
        labels=("SimCLR, no labels",),
        claim="MAP@R on the probe set rises by more than 0.05 over the untrained net's (the "
        "run's step-0 snapshot), trained with supervision = views.",
        check=check_label_free,
        pages=("pages/train.py",),
    ),
)

LESSONS: dict[str, Lesson] = {lesson.key: lesson for lesson in _LESSON_LIST}
