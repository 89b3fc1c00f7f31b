"""Metric Learning Playground: the entry point routes to the pages (no maths here)."""

import streamlit as st

st.set_page_config(page_title="Metric Learning Playground", page_icon="🧭", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/train.py", title="Train", icon="🏋️", url_path="train"),
    st.Page("pages/loss_explorer.py", title="Loss explorer", icon="📈", url_path="losses"),
    st.Page("pages/miner_view.py", title="Miner view", icon="⛏️", url_path="miners"),
    st.Page("pages/sphere.py", title="Sphere & sampling", icon="🌐", url_path="sphere"),
    st.Page("pages/compare.py", title="Compare runs", icon="⚖️", url_path="compare"),
    st.Page("pages/sweep.py", title="Sweep", icon="🧮", url_path="sweep"),
    st.Page("pages/retrieval.py", title="Retrieval", icon="🔎", url_path="retrieval"),
    st.Page("pages/lessons.py", title="Lessons", icon="🎓", url_path="lessons"),
]

st.navigation(PAGES).run()
