"""Metric Learning Playground: the entry point routes to the pages (no maths here)."""

import streamlit as st

st.set_page_config(page_title="Metric Learning Playground", page_icon="🧭", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/train.py", title="Train", icon="🏋️", url_path="train"),
]

st.navigation(PAGES).run()
