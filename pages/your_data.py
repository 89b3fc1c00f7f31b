"""The Train sidebar's "Your data" inputs: a path on the server or an upload, image settings.

Drawn by ``pages/train_settings.py`` when the dataset picker says "Your data" (issue 17). The
image size, colour and skip-bad-files widgets are generated from ``RunConfig``'s fields of
the ``your_data`` section; loading and every check are ``dml_core`` calls (no maths here).
The P, K and net widgets are set to what fits the data (``config_data.fit_to_data``: P and K
it can fill, the ConvNet for images, the MLP for a table) when a new dataset is chosen,
before they are drawn (call this before them), so Train works without touching them.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from dml_core.config import SECTIONS, RunConfig, make_config
from dml_core.config_data import fit_to_data
from dml_core.data import DatasetError, load_for_config
from dml_core.errors import ConfigError
from dml_core.user_data import (
    DATA_SUFFIXES,
    DEFAULT_MAX_BYTES,
    check_user_data,
    default_batch,
)
from dml_core.user_data.archive import store_upload
from pages.ui import field_widget

YOUR_DATA = "Your data"
"""The dataset picker's extra option (beside ``data.DATASETS``)."""
SOURCES = ("Path on the server", "Upload")
SECTION = SECTIONS[4]  # "your_data": drawn here, not by the sidebar's generic sections
FITTED_KEY = "your_data.fitted"  # the dataset whose P and K the widgets were last set for
OWN_DATA = "cfg.your_data"  # the sidebar's toggle: "Your data" instead of a built-in dataset
KEPT = "kept"  # FITTED_KEY's mark: P, K and net were set from a run's or link's settings


def keep_user_data(path: str) -> None:
    """Open ``path`` under "Your data", keeping the P, K and net already in the widgets.

    For a run's "Load these settings" or a link: the defaults that fit the data must not
    replace the run's own.
    """
    st.session_state["your_data.source"] = SOURCES[0]
    st.session_state["your_data.path"] = path
    st.session_state[FITTED_KEY] = (KEPT, path)


@st.cache_data(show_spinner="Reading your data…", max_entries=4, ttl=60)
def data_summary(path: str, image_size: int, color: str, skip_bad_files: bool) -> dict[str, Any]:
    """Load the data once per settings (a minute; a problem is not cached, it is raised).

    Returns:
        the absolute path, the loader's ``source`` line, the class count, the P, K the data
        can fill and its net (the ConvNet for images, the MLP for a table).

    Raises:
        ConfigError, DatasetError: one sentence naming what is wrong.
    """
    cfg = make_config(
        dataset=path, image_size=image_size, color=color, skip_bad_files=skip_bad_files
    )
    dataset = load_for_config(cfg)
    batch = default_batch(dataset)
    check_user_data(dataset, *batch)
    return {
        "dataset": cfg.dataset,
        "source": dataset.source,
        "classes": len(dataset.class_names),
        "batch": batch,
        "net": fit_to_data(cfg, dataset).net,
    }


def _path_input(max_bytes: int) -> tuple[str | None, str | None]:
    """The chosen path (typed, or where an upload was stored) and a problem, if any."""
    source = st.radio("Your data from", SOURCES, horizontal=True, key="your_data.source")
    if source == SOURCES[0]:
        path = st.text_input(
            "Path",
            key="your_data.path",
            placeholder="/data/my_images  or  /data/features.csv",
            help="An image folder <class>/<images> (or train/ and test/ folders of them), or "
            f"a feature table ({', '.join(DATA_SUFFIXES)}).",
        ).strip()
        return (path or None), None
    upload = st.file_uploader(
        f"Upload (at most {max_bytes // 2**20} MB)",
        type=[s.lstrip(".") for s in DATA_SUFFIXES],
        key="your_data.upload",
        help="A .zip of an image folder, or a table file. Kept in the app's cache.",
    )
    if upload is None:
        return None, None
    try:
        return str(store_upload(upload.name, upload.getvalue(), max_bytes=max_bytes)), None
    except DatasetError as err:
        return None, str(err)


def upload_cap() -> int:
    """The upload size cap in bytes: Streamlit's ``server.maxUploadSize`` (MB, default 200).

    One setting caps both Streamlit's uploader and ours:
    ``streamlit run app.py --server.maxUploadSize 500``.
    """
    megabytes = st.get_option("server.maxUploadSize")
    return int(megabytes * 2**20) if megabytes else DEFAULT_MAX_BYTES


def your_data_inputs(max_bytes: int | None = None) -> tuple[dict[str, Any], str | None]:
    """Draw the "Your data" inputs; return RunConfig values and a problem that disables Train.

    Args:
        max_bytes: the upload size cap (default :func:`upload_cap`, 200 MB unless configured).

    Returns:
        ``({"dataset", "image_size", "color", "skip_bad_files"}, problem)``; ``dataset`` is
        absent until a path is given. P and K are not returned: the sidebar's own widgets,
        set here to the data's defaults when the dataset changes, give them.
    """
    path, problem = _path_input(upload_cap() if max_bytes is None else max_bytes)
    fields = RunConfig.model_fields
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if (field.json_schema_extra or {}).get("section") == SECTION:  # type: ignore[union-attr]
            values[name] = field_widget(RunConfig, name, f"cfg.{name}")
    if problem is not None:
        return values, problem
    if path is None:
        return values, "Give the path of your data, or upload it."
    try:
        summary = data_summary(
            path, values["image_size"], values["color"], values["skip_bad_files"]
        )
    except (ConfigError, DatasetError) as err:
        st.error(str(err))
        return values, str(err)
    st.caption(f"Source: {summary['source']}.")
    fitted = (summary["dataset"], *summary["batch"], summary["net"])
    if st.session_state.get(FITTED_KEY) == (KEPT, summary["dataset"]):
        st.session_state[FITTED_KEY] = fitted  # a run's or link's own P, K and net stay
    elif st.session_state.get(FITTED_KEY) != fitted:  # a new dataset: P, K and net that fit it
        st.session_state[FITTED_KEY] = fitted
        st.session_state["cfg.classes_per_batch"], st.session_state["cfg.samples_per_class"] = (
            summary["batch"]
        )
        st.session_state["cfg.net"] = summary["net"]
    return values | {"dataset": summary["dataset"]}, None
