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
from dml_core.data import dataset_availability
from dml_core.registry import LOSSES, MINERS
from dml_core.train import resolve_device
from pages.ui import field_widget, float_slider, param_widgets

FIELDS = RunConfig.model_fields
SEPARATE_MARGIN = "cfg.separate_margin"


def section_widgets(section: str) -> dict[str, Any]:
    """Widgets generated from RunConfig's fields of one sidebar section (ranges declared there)."""
    values = {}
    names = [n for n, f in FIELDS.items() if (f.json_schema_extra or {}).get("section") == section]
    columns = {}
    for name in names:
        column = (FIELDS[name].json_schema_extra or {}).get("column")
        if column is not None and not columns:
            columns = dict(enumerate(st.columns(2)))
        with columns.get(column, st.container()):
            values[name] = field_widget(RunConfig, name, f"cfg.{name}")
    return values


def margin_widgets(loss: str, miner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One "Margin α" for the loss and the miner (unless unlinked), then each one's parameters."""
    link = margin_link(loss, miner)
    loss_skip: set[str] = set()
    miner_skip: set[str] = set()
    margin = None
    if link is not None:
        st.subheader("Margin")
        margin = float_slider(
            "Margin α",
            (link.low, link.high),
            link.low_open,
            link.default,
            f"cfg.margin.{loss}.{miner}",
            f"Sets the {loss} loss's '{link.loss_field}' and the {miner} miner's 'margin'.",
        )
        separate = st.toggle(
            "Separate miner margin",
            key=SEPARATE_MARGIN,
            help="Unlink only to study mining with a different margin than the loss (e.g. "
            "semi-hard mining at 0.2 for a loss at 0.5). Two silently different margins are a "
            "classic source of confusion (pytorch-metric-learning issue #466).",
        )
        loss_skip.add(link.loss_field)
        if not separate:
            miner_skip.add("margin")
    params = []
    for title, entry, prefix, skip in (
        ("Loss parameters", LOSSES[loss], "loss", loss_skip),
        ("Miner parameters", MINERS[miner], "miner", miner_skip),
    ):
        if set(entry.params.model_fields) - skip:
            st.subheader(title)
        params.append(param_widgets(entry, prefix, skip=skip))
    loss_params, miner_params = params
    if link is not None:
        loss_params[link.loss_field] = margin
        miner_params.setdefault("margin", margin)
    return loss_params, miner_params


def sidebar_config() -> tuple[dict[str, Any], str | None]:
    """The run settings, from widgets generated from RunConfig and the registries."""
    problem = None
    with st.sidebar:
        st.header("Settings")
        values = section_widgets(SECTIONS[0])
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
            st.caption(f"Device: {resolve_device(values['device'])[1]}")
        except RuntimeError as err:
            problem = str(err)
    return values, problem


def field_widget_registry(name: str, registry: typing.Mapping[str, Any]) -> str:
    """A selectbox over a registry's names, defaulting to RunConfig's default."""
    options = list(registry)
    return st.selectbox(
        FIELDS[name].title,
        options,
        index=options.index(FIELDS[name].default),
        key=f"cfg.{name}",
        help=FIELDS[name].description,
    )


def load_settings(cfg: RunConfig) -> None:
    """Copy a run's settings into the sidebar's widgets (a button callback: before they draw)."""
    link = margin_link(cfg.loss, cfg.miner)
    for key, value in widget_values(cfg).items():
        st.session_state[key] = value
    if link is not None:
        loss_margin = cfg.loss_params[link.loss_field]
        st.session_state[f"cfg.margin.{cfg.loss}.{cfg.miner}"] = loss_margin
        separate = cfg.miner_params.get("margin") != loss_margin
        st.session_state[SEPARATE_MARGIN] = separate
