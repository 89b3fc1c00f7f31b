"""The app's pages, in one place: the navigation (``app.py``) and Home's list read it."""

from __future__ import annotations

from typing import NamedTuple


class PageEntry(NamedTuple):
    """One page: its script, title, icon, and what it shows (one line, for Home)."""

    path: str
    title: str
    icon: str
    what: str


PAGES = (
    PageEntry("pages/home.py", "Home", "🏠", "what the playground is, and where to start"),
    PageEntry(
        "pages/train.py",
        "Train",
        "🏋️",
        "train a net and watch the embedding, distances and curves live",
    ),
    PageEntry(
        "pages/loss_explorer.py",
        "Loss explorer",
        "📈",
        "each loss and its gradient against distance",
    ),
    PageEntry(
        "pages/miner_view.py", "Miner view", "⛏️", "which pairs and triplets each miner picks"
    ),
    PageEntry(
        "pages/sphere.py", "Sphere & sampling", "🌐", "how distances concentrate on the sphere"
    ),
    PageEntry("pages/compare.py", "Compare runs", "⚖️", "finished runs side by side"),
    PageEntry(
        "pages/sweep.py",
        "Sweep",
        "🧮",
        "a grid of runs over one or two parameters and seeds, locally or on Ray",
    ),
    PageEntry(
        "pages/retrieval.py",
        "Retrieval",
        "🔎",
        "nearest neighbours, worst queries, verification",
    ),
    PageEntry(
        "pages/lessons.py",
        "Lessons",
        "🎓",
        "one-click experiments that reproduce the papers' claims",
    ),
)
HOME = PAGES[0]
