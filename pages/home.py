"""Home: what the playground is, and where to start."""

import streamlit as st

from dml_core.registry import LOSSES, MINERS
from pages import catalogue
from pages.ui import use_app_navigation

use_app_navigation()

st.title("Metric Learning Playground")
st.markdown(
    """
Deep metric learning trains a network to map images to points so that **same-class images land
close together and different classes far apart**. How close, how far, and which pairs the
network learns from are exactly what the losses and miners of the classic papers disagree on.
Here you train small embedding nets on digits, MNIST or FashionMNIST and **watch** the geometry
change: a UMAP of test images, the distances of positive and negative pairs against the
margins, and how far the points are from uniform on the unit sphere.
"""
)
st.subheader("Start here (20 seconds)")
st.markdown(
    """
1. Open **Train** (left). The defaults train a small MLP on scikit-learn's 8×8 digits with the
   triplet loss and semi-hard mining: no download, no GPU.
2. Press **Train**. Within seconds the histograms and curves appear; the UMAP follows as soon as
   it has started (its kernels compile once per machine; PCA stands in until then).
3. Change the **margin** or the **miner** and train again; open a finished run from **Runs** to
   replay it with the snapshot slider.
"""
)
st.page_link("pages/train.py", label="Go to Train", icon="▶️")
st.subheader("The pages")
for page in catalogue.PAGES[1:]:  # Home itself is this page
    left, right = st.columns([1, 3])
    with left:
        st.page_link(page.path, label=page.title, icon=page.icon)
    right.caption(page.what)
c1, c2 = st.columns(2)
c1.metric("Losses", len(LOSSES))
c2.metric("Miners", len(MINERS))
with st.expander("Losses and their papers"):
    for name, entry in LOSSES.items():
        st.markdown(f"**{name}**: {entry.summary} *({entry.paper})*")
with st.expander("Miners and their papers"):
    for name, entry in MINERS.items():
        st.markdown(f"**{name}**: {entry.summary} *({entry.paper})*")
