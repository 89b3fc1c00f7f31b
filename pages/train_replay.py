"""The Train page's replay controls: follow the latest snapshot, or scrub and Play through them.

Play steps the snapshot slider forward on a timer (the figures fragment reruns every
``play_period`` seconds) and stops at the last snapshot, as a media player does.
"""

from __future__ import annotations

import time

import streamlit as st

PLAY_SPEEDS = {"slow": 2.0, "normal": 1.0, "fast": 0.4}  # seconds per snapshot
PLAY_AT = "view.play_at"  # the snapshot step Play is at, while it plays
PLAY_SLIDER = "view.play_slider"  # the slider that shows it (the user's is not drawn meanwhile)
SCRUB = "Replay the run: every figure follows this slider"
PLAYING = "Play moves the slider; switch Play off to scrub"


def scrub_controls(steps_saved: tuple[int, ...]) -> int:
    """Follow / Play / speed and the step slider; returns the step to show."""
    last = steps_saved[-1]
    c1, c2, c3 = st.columns([2, 1, 2])
    following = c1.toggle("Follow the latest snapshot", value=True, key="view.follow")
    if following or len(steps_saved) == 1:
        return last
    key = "view.scrub_step"
    if st.session_state.get(key) not in steps_saved:
        st.session_state[key] = steps_saved[0]
    playing = bool(st.session_state.get("view.play"))
    if playing:
        cursor = st.session_state.get(PLAY_AT, st.session_state[key])
        at = steps_saved.index(cursor) if cursor in steps_saved else 0
        now = time.monotonic()
        due = now - st.session_state.get("view.advanced", 0.0) >= 0.8 * play_period()
        if at == len(steps_saved) - 1:
            st.session_state["view.play"] = playing = False  # the end: stop, as a player does
        elif due:  # a timer tick, not a rerun caused by a click
            at += 1
            st.session_state["view.advanced"] = now
        st.session_state[key] = st.session_state[PLAY_AT] = steps_saved[at]
    if not playing:
        st.session_state.pop(PLAY_AT, None)  # the next Play starts where the slider is
    c2.toggle(
        "Play",
        key="view.play",
        help="Step through the snapshots until the last one",
        on_change=lambda: st.session_state.update({"view.advanced": time.monotonic()}),
    )
    c3.radio("Speed", list(PLAY_SPEEDS), index=1, key="view.speed", horizontal=True)
    slider = {"options": list(steps_saved), "format_func": lambda s: f"step {s}"}
    if playing:
        # Play keeps its own place and draws it on a slider of its own. The browser can send
        # a rerun carrying a slider's value from before the last tick (it had not drawn it
        # yet): read back, that stepped the replay back (Chromium showed 3, then 2, then 4).
        st.session_state[PLAY_SLIDER] = st.session_state[PLAY_AT]
        st.select_slider("Snapshot", key=PLAY_SLIDER, disabled=True, help=PLAYING, **slider)
        return st.session_state[PLAY_AT]
    return st.select_slider("Snapshot", key=key, help=SCRUB, **slider)


def play_period() -> float:
    """Seconds per snapshot while playing, from the chosen speed."""
    return PLAY_SPEEDS[st.session_state.get("view.speed", "normal")]


def play_interval() -> float | None:
    """How often the figures rerun by themselves: only while Play steps through a replay."""
    if st.session_state.get("view.play") and not st.session_state.get("view.follow", True):
        return play_period()
    return None
