"""Metric Learning Playground: the entry point routes to the pages (no maths here)."""

from pathlib import Path

import streamlit as st

from pages import catalogue

st.set_page_config(page_title="Metric Learning Playground", page_icon="🧭", layout="wide")

# Each page's url path is its file name (Streamlit's default): the first request of a fresh
# server resolves it from pages/ before this script runs, so a different url_path (a
# teacher's link to /miners) opened behind a "Page not found" dialog.
PAGES = [
    st.Page(page.path, title=page.title, icon=page.icon, default=page is catalogue.HOME)
    for page in catalogue.PAGES
]

# One style sheet for every page (why: in the file).
st.html(Path(__file__).parent / "assets" / "app.css")
st.navigation(PAGES).run()
