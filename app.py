"""Metric Learning Playground: the entry point routes to the pages (no maths here)."""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="Metric Learning Playground", page_icon="🧭", layout="wide")

# Each page's url path is its file name (Streamlit's default): the first request of a fresh
# server resolves it from pages/ before this script runs, so a different url_path (a
# teacher's link to /miners) opened behind a "Page not found" dialog.
PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/loss_explorer.py", title="Loss explorer", icon="📈"),
    st.Page("pages/miner_view.py", title="Miner view", icon="⛏️"),
    st.Page("pages/sphere.py", title="Sphere & sampling", icon="🌐"),
    st.Page("pages/compare.py", title="Compare runs", icon="⚖️"),
    st.Page("pages/sweep.py", title="Sweep", icon="🧮"),
    st.Page("pages/retrieval.py", title="Retrieval", icon="🔎"),
    st.Page("pages/lessons.py", title="Lessons", icon="🎓"),
]

# One style sheet for every page (why: in the file).
st.html(Path(__file__).parent / "assets" / "app.css")
st.navigation(PAGES).run()
