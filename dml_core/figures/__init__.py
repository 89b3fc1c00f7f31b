"""Plotly figures built from snapshots and analyses; no streamlit: pages only display them.

``style`` holds the shared look and the maths-to-text helpers; one module per page family:
``live`` (Train), ``losses`` (Loss explorer), ``batch`` (Miner view, Sphere & sampling),
``compare`` (Compare runs), ``retrieval`` (Retrieval).
"""
