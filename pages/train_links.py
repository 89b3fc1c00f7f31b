"""The Train page's link: the URL's settings, teacher locks, "Copy link", links for a class.

The mapping between a query and settings is ``dml_core.services.share_links``; this module
keeps the session's link (read once, on the session's first run of the Train page), keeps the
URL in step with the sidebar, and draws the share panel. No maths here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from dml_core.config import SECTIONS, RunConfig, margin_link
from dml_core.registry import LOSSES, MINERS
from dml_core.services.lesson_catalogue import LESSONS
from dml_core.services.share_links import LESSON, TRAIN, Link, read_train_link, settings_to_query
from pages.ui import copy_link, url_of

LINK_STATE = "link.train"  # this session's Train link (a share_links.Link)
PAGE_PATH = "train"  # app.py's url_path of the Train page
NO_LESSON = "—"
MAKE_OPEN = "link.make.open"  # whether "Make a link for your class" is open
DEFAULT_LINK = read_train_link({})


def current_link() -> Link:
    """The link this session opened the Train page with (the defaults when none)."""
    return st.session_state.get(LINK_STATE, DEFAULT_LINK)


def fixed_params(prefix: str, entry: str) -> tuple[set[str], set[str]]:
    """The parameters of ``entry`` (``prefix`` loss or miner) the link locks and hides.

    They apply while the sidebar shows the link's own loss (miner); another one is free.
    """
    link = current_link()
    if link.values[prefix] != entry:
        return set(), set()
    names = {
        f"{prefix}.{n}": n
        for n in (LOSSES if prefix == "loss" else MINERS)[entry].params.model_fields
    }
    return {names[k] for k in link.lock if k in names}, {names[k] for k in link.hide if k in names}


def link_param(prefix: str, entry: str, name: str) -> Any:
    """The link's value of a parameter of ``entry``, or its default for another entry."""
    link = current_link()
    if link.values[prefix] == entry:
        return link.values[f"{prefix}_params"][name]
    return (LOSSES if prefix == "loss" else MINERS)[entry].defaults()[name]


def apply_locks(link: Link) -> None:
    """Put the link's value back into every locked widget (before they draw).

    Locked widgets are disabled, but "Load these settings" or a visit to another page could
    change or drop their state.
    """
    for name in link.lock:
        if name in TRAIN.names:
            st.session_state[f"cfg.{name}"] = link.values[name]
            continue
        prefix, param = name.split(".", 1)
        entry = link.values[prefix]
        params = link.values[f"{prefix}_params"]
        if param not in params:
            continue
        st.session_state[f"{prefix}.{entry}.{param}"] = params[param]
        shared = margin_link(link.values["loss"], link.values["miner"])
        if prefix == "loss" and shared is not None and shared.loss_field == param:
            st.session_state[f"cfg.margin.{link.values['loss']}.{link.values['miner']}"] = params[
                param
            ]


def complete(values: Mapping[str, Any]) -> dict[str, Any]:
    """The sidebar's values with every setting it does not draw taken from the link."""
    return {**current_link().values, **values}


def share_panel(values: Mapping[str, Any]) -> None:
    """Keep the URL in step, then "Copy link" and "Make a link for your class"."""
    link = current_link()
    settings = complete(values)
    query = settings_to_query(settings, link.lock, link.hide)
    st.subheader("Share")
    copy_link(query, PAGE_PATH, LINK_STATE, keep=TRAIN.keep)
    box = st.expander("Make a link for your class", key=MAKE_OPEN, on_change="rerun")
    with box:
        if box.open:  # about 50 checkboxes: drawn only while the expander is open
            class_link(settings)


def link_names(settings: Mapping[str, Any]) -> list[str]:
    """The settings a class link can lock or hide: the sidebar's, then the parameters."""
    shown = [
        n
        for n, f in RunConfig.model_fields.items()
        if (f.json_schema_extra or {}).get("section") in SECTIONS[:3]
        or n in ("loss", "miner")
        or (
            settings["supervision"] == "views"
            and (f.json_schema_extra or {}).get("section") == SECTIONS[3]
        )
    ]
    for prefix in ("loss", "miner"):
        entry = (LOSSES if prefix == "loss" else MINERS)[settings[prefix]]
        shown += [f"{prefix}.{n}" for n in entry.params.model_fields]
    return shown


def class_link(settings: Mapping[str, Any]) -> None:
    """Checkboxes to lock or hide each setting, a lesson to start from, and the link."""
    link = current_link()
    st.caption(
        "Students who open the link see these settings; locked ones are greyed out, hidden "
        "ones are left out of the sidebar (their value is still used)."
    )
    lesson = st.selectbox(
        "Start from a lesson",
        [NO_LESSON, *LESSONS],
        key="link.make.lesson",
        format_func=lambda k: "no: the settings above" if k == NO_LESSON else LESSONS[k].title,
        help="A lesson's first run; the link then carries the lesson's name, not the settings.",
    )
    head = st.columns([3, 1, 1])
    head[0].caption("setting")
    head[1].caption("🔒", help="lock: shown greyed out")
    head[2].caption("🙈", help="hide: left out of the sidebar")
    lock, hide = [], []
    for name in link_names(settings):
        row = st.columns([3, 1, 1])
        row[0].markdown(f"`{name}`")
        if row[1].checkbox(
            f"lock {name}", value=name in link.lock, key=f"link.make.lock.{name}",
            label_visibility="collapsed",
        ):  # fmt: skip
            lock.append(name)
        if row[2].checkbox(
            f"hide {name}", value=name in link.hide, key=f"link.make.hide.{name}",
            label_visibility="collapsed",
        ):  # fmt: skip
            hide.append(name)
    if lesson == NO_LESSON:
        query = settings_to_query(settings, lock, hide)
    else:
        query = {LESSON: lesson} | {
            k: ",".join(v) for k, v in (("lock", lock), ("hide", hide)) if v
        }
    st.markdown("**Link for your class**")
    st.code(url_of(query, PAGE_PATH), language=None, wrap_lines=True)
