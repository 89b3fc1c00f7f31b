"""The Train page's sidebar: widgets generated from RunConfig and the registries.

Every range, default, label and help text comes from ``RunConfig``'s declared fields and each
loss's and miner's parameter model; one "Margin α" drives the loss's and the miner's margin
unless the user unlinks them (``config.margin_link``). No maths here.
"""

from __future__ import annotations

import typing
from typing import Any

import streamlit as st

from dml_core.config import SECTIONS, RunConfig, margin_link, widget_values
from dml_core.data import DATASETS, dataset_availability
from dml_core.registry import LOSSES, MINERS
from dml_core.services.share_links import TRAIN, read_train_link
from dml_core.train import resolve_device
from pages.train_links import (
    LINK_STATE,
    apply_locks,
    current_link,
    fixed_params,
    link_param,
    share_panel,
)
from pages.ui import (
    LOCKED_NOTE,
    field_widget,
    float_slider,
    link_warnings,
    param_widgets,
    read_new_link,
    services,
)
from pages.your_data import OWN_DATA, YOUR_DATA, keep_user_data, your_data_inputs

FIELDS = RunConfig.model_fields
SEPARATE_MARGIN = "cfg.separate_margin"


def section_widgets(section: str, skip: typing.Collection[str] = ()) -> dict[str, Any]:
    """Widgets generated from RunConfig's fields of one sidebar section (ranges declared there).

    A setting the session's link hides is not drawn (the link's value is used); one it locks is
    drawn disabled; those in ``skip`` are drawn elsewhere.
    """
    link = current_link()
    values = {}
    names = [n for n, f in FIELDS.items() if (f.json_schema_extra or {}).get("section") == section]
    columns = {}
    for name in names:
        if name in skip:
            continue
        if name in link.hide:
            values[name] = link.values[name]
            continue
        column = (FIELDS[name].json_schema_extra or {}).get("column")
        if column is not None and not columns:
            columns = dict(enumerate(st.columns(2)))
        with columns.get(column, st.container()):
            values[name] = field_widget(RunConfig, name, f"cfg.{name}", disabled=name in link.lock)
    return values


def margin_widgets(loss: str, miner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One "Margin α" for the loss and the miner (unless unlinked), then each one's parameters.

    Parameters the session's link hides take the link's values; locked ones are disabled (a
    locked or hidden loss margin fixes the shared "Margin α" and its toggle).
    """
    link = margin_link(loss, miner)
    loss_skip: set[str] = set()
    miner_skip: set[str] = set()
    loss_locked, loss_hidden = fixed_params("loss", loss)
    miner_locked, miner_hidden = fixed_params("miner", miner)
    margin = None
    if link is not None:
        field = link.loss_field
        if field in loss_hidden:
            margin = link_param("loss", loss, field)
        else:
            st.subheader("Margin")
            margin = float_slider(
                "Margin α",
                (link.low, link.high),
                link.low_open,
                link.default,
                f"cfg.margin.{loss}.{miner}",
                f"Sets the {loss} loss's '{field}' and the {miner} miner's 'margin'.",
                disabled=field in loss_locked,
            )
            separate = st.toggle(
                "Separate miner margin",
                key=SEPARATE_MARGIN,
                help="Unlink only to study mining with a different margin than the loss (e.g. "
                "semi-hard mining at 0.2 for a loss at 0.5). Two silently different margins are "
                "a classic source of confusion (pytorch-metric-learning issue #466).",
                disabled=field in loss_locked,
            )
            if field in loss_locked:
                st.caption(LOCKED_NOTE)
            if not separate:
                miner_skip.add("margin")
        loss_skip.add(field)
    params = []
    for title, entry, prefix, skip, locked in (
        ("Loss parameters", LOSSES[loss], "loss", loss_skip | loss_hidden, loss_locked),
        ("Miner parameters", MINERS[miner], "miner", miner_skip | miner_hidden, miner_locked),
    ):
        if set(entry.params.model_fields) - skip:
            st.subheader(title)
        drawn = param_widgets(entry, prefix, skip=skip, locked=locked)
        hidden = loss_hidden if prefix == "loss" else miner_hidden
        params.append({n: link_param(prefix, entry.name, n) for n in hidden} | drawn)
    loss_params, miner_params = params
    if link is not None:
        loss_params[link.loss_field] = margin
        if "margin" in miner_skip:
            miner_params["margin"] = margin
    return loss_params, miner_params


def open_link() -> None:
    """The URL's settings into the widgets, once per session, before they draw.

    The locked ones are set again on every run, and each bad value of the link is a warning.
    """
    first = read_new_link(LINK_STATE, read_train_link, keep=TRAIN.keep)
    if first is not None and set(st.query_params) - set(TRAIN.keep):
        load_settings(RunConfig(**first.values))
    apply_locks(current_link())
    link_warnings(LINK_STATE)


def sidebar_config() -> tuple[dict[str, Any], str | None]:
    """The run settings, from widgets generated from RunConfig and the registries.

    On the session's first visit the URL's link fills them.
    """
    problem = None
    open_link()
    with st.sidebar:
        st.header("Settings")
        own = st.toggle(
            YOUR_DATA,
            key=OWN_DATA,
            help="An image folder (a folder per class) or a feature table of yours, on the "
            "server or uploaded, instead of a built-in dataset.",
        )
        yours, problem = your_data_inputs() if own else ({}, None)  # sets P, K, net: before them
        values = section_widgets(SECTIONS[0], skip={"dataset"} if own else ()) | yours
        if not own:
            available, source = dataset_availability(values["dataset"])
            if available:
                st.caption(f"Source: {source}")
            else:
                st.warning(source)
                problem = f"The {values['dataset']} dataset is not available here."
        if values["supervision"] == "views":
            with st.expander("Views (augmentation strengths)", expanded=True):
                values |= section_widgets(SECTIONS[3])
        st.subheader("Loss and miner")
        loss = field_widget_registry("loss", LOSSES)
        st.caption(LOSSES[loss].summary)
        miner = field_widget_registry("miner", MINERS)
        st.caption(MINERS[miner].summary)
        loss_params, miner_params = margin_widgets(loss, miner)
        values |= {"loss": loss, "loss_params": loss_params}
        values |= {"miner": miner, "miner_params": miner_params}
        st.subheader("Batch and optimiser")
        values |= section_widgets(SECTIONS[1])
        with st.expander("More"):
            values |= section_widgets(SECTIONS[2])
        try:
            alone = services()[1].cpu_threads  # what a run training alone gets
            st.caption(f"Device: {resolve_device(values['device'], alone)[1]}")
        except RuntimeError as err:
            problem = str(err)
        share_panel(values)
    return values, problem


def field_widget_registry(name: str, registry: typing.Mapping[str, Any]) -> str:
    """A selectbox over a registry's names, defaulting to RunConfig's default.

    Not drawn when the link hides it (the link's value is used), disabled when it locks it.
    """
    link = current_link()
    if name in link.hide:
        return link.values[name]
    options = list(registry)
    value = st.selectbox(
        FIELDS[name].title,
        options,
        index=options.index(FIELDS[name].default),
        key=f"cfg.{name}",
        help=FIELDS[name].description,
        disabled=name in link.lock,
    )
    if name in link.lock:
        st.caption(LOCKED_NOTE)
    return value


def load_settings(cfg: RunConfig) -> None:
    """Copy a run's settings into the sidebar's widgets (a button callback: before they draw)."""
    link = margin_link(cfg.loss, cfg.miner)
    for key, value in widget_values(cfg).items():
        st.session_state[key] = value
    own = cfg.dataset not in DATASETS  # a user's path opens under "Your data", with its P and K
    st.session_state[OWN_DATA] = own
    if own:
        del st.session_state["cfg.dataset"]
        keep_user_data(cfg.dataset)
    if link is not None:
        loss_margin = cfg.loss_params[link.loss_field]
        st.session_state[f"cfg.margin.{cfg.loss}.{cfg.miner}"] = loss_margin
        separate = cfg.miner_params.get("margin") != loss_margin
        st.session_state[SEPARATE_MARGIN] = separate
