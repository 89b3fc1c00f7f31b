"""Sphere & sampling: distances on S^(n-1), and which negatives each sampling method picks."""

from __future__ import annotations

import streamlit as st

from dml_core.analysis.sphere import sample_sphere_distances, sampling_comparison
from dml_core.config import EMBEDDING_DIMS
from dml_core.errors import ConfigError
from dml_core.figures import batch as batch_figures
from dml_core.figures import sphere as sphere_figures
from pages.ui import plotly_chart, use_app_navigation

use_app_navigation()
DIMS = list(EMBEDDING_DIMS)
OVERLAY_DIMS = [2, 3, 8, 32, 128, 512]

st.title("Sphere & sampling")
st.caption(
    "Wu, Manmatha, Smola, Krähenbühl. Sampling Matters in Deep Embedding Learning. ICCV 2017, "
    "Sec. 4 (Eq. 3, Fig. 2 and 3)."
)

n = st.select_slider(
    "Dimension n (points on the unit sphere Sⁿ⁻¹ in ℝⁿ)",
    DIMS,
    value=32,
    key="sp.n",
    help="log scale: 2 to 512",
)
zoom = st.toggle(
    "Zoom in on the distances",
    value=False,
    key="sp.zoom",
    help="Off: d from 0 to 2 at every n, so you see the distances pile up near √2 as n grows. "
    "On: the axis follows the data, with finer bins.",
)
left, right = st.columns(2)
with left:
    points = st.select_slider("Random points", [100, 200, 400, 800], value=400, key="sp.points")
    distances = sample_sphere_distances(n, points, seed=0)
    plotly_chart(batch_figures.sampled_density_figure(n, distances, zoom=zoom), key="sp.chart.one")
with right:
    plotly_chart(
        sphere_figures.density_figure(
            OVERLAY_DIMS, title="q(d) for several n: mass piles up at √2", uirevision="overlay"
        ),
        key="sp.chart.overlay",
    )
st.markdown(
    "Two random unit vectors in high dimension are almost orthogonal, so their distance is "
    "almost always close to √2: q(d) ∝ d^(n−2) (1 − d²/4)^((n−3)/2) concentrates there as n "
    "grows (Wu et al., Fig. 2). On the circle (n = 2) the density instead rises without bound "
    "towards d = 2 (an integrable (1 − d²/4)^(−1/2)): the curve stops just short of d = 2. "
    "The d-axis stays 0 to 2 at every n, so the pile-up is visible; switch on the zoom to see "
    "its shape."
)

st.header("What each sampling method picks")
c1, c2, c3, c4 = st.columns(4)
P = c1.number_input("P classes", 1, 32, 8, key="sp.P")
K = c2.number_input("K per class", 1, 32, 8, key="sp.K")
margin = c3.slider("Margin α (semi-hard)", 0.01, 1.0, 0.2, 0.01, key="sp.margin")
seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="sp.seed")
try:
    comparison = sampling_comparison(n, P, K, seed, margin=margin)
except ConfigError as err:
    st.error(str(err), icon="🚫")
else:
    if comparison.anchors < comparison.batch:
        st.caption(
            f"The batch has {comparison.batch} points: the table and histograms count the "
            f"triplets of the {comparison.anchors} anchors of {len(comparison.anchor_classes)} "
            f"classes drawn at random (of {comparison.classes}), every point of the batch a "
            "candidate negative, so the page answers in seconds."
        )
    plotly_chart(
        batch_figures.selected_distance_figure(comparison, zoom=zoom), key="sp.chart.selected"
    )
    st.dataframe(
        comparison.table,
        hide_index=True,
        column_config={
            k: st.column_config.NumberColumn(format="%.4f")
            for k in comparison.table.columns
            if k not in ("method", "triplets")
        },
    )
    st.markdown(
        "**The argument (Wu et al., Sec. 4).** Uniform sampling mostly returns negatives near "
        "√2, which after a little training give no loss. Mining the hardest negatives "
        "(`batch_hard`: each anchor's nearest) picks the smallest distances, where the "
        "direction of the gradient is dominated by noise: its variance grows like 1/d² "
        "(Fig. 3). Distance-weighted sampling draws each negative with probability ∝ 1/q(d): "
        "it covers a much wider range of distances than the hardest negatives, with a less "
        "noisy gradient.\n\n"
        "**What to look for.** In the histograms, `uniform` follows q(d), `batch_hard` sits at "
        "the far left, `distance_weighted` is spread to the left of √2. In the table, "
        "`gradient variance` (trace of the covariance of the triplet gradient w.r.t. the "
        "anchor when every embedding gets noise of norm 0.1) is largest for `batch_hard` and "
        "smaller for `distance_weighted`, whose `std d(a,n)` is the larger. In high n all "
        "distances are ≈ √2 and the columns converge; in low n the gaps are large. This "
        "batch is random points with random labels, so most negatives are still active: "
        "the 'no loss at √2' part of the argument needs a trained net (see the Miner view)."
    )
