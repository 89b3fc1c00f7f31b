"""AppTest of pages/your_data.py: the "Your data" inputs, their values and problems (issue 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.user_data_files import gaussian_table, write_npz, write_shapes


def _app() -> None:
    import streamlit as st

    from pages.your_data import your_data_inputs

    values, problem = your_data_inputs()
    st.session_state["out"] = (values, problem)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_function(_app, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def _path(at: AppTest, path: str) -> AppTest:
    at.text_input(key="your_data.path").set_value(path).run()
    assert not at.exception
    return at


def test_no_path_yet_disables_train(app: AppTest) -> None:
    values, problem = app.session_state["out"]
    assert problem == "Give the path of your data, or upload it."
    assert (values["image_size"], values["color"], values["skip_bad_files"]) == (28, "gray", False)


def test_a_table_gives_its_path_and_sets_p_and_k(app: AppTest, tmp_path: Path) -> None:
    """Catches: P and K left at 6 x 16 for data of 3 classes of 10 training samples."""
    x, y = gaussian_table(per_class=12)
    keep = np.isin(y, ["alpha", "beta", "gamma"])
    table = write_npz(tmp_path / "t.npz", x[keep], y[keep])
    at = _path(app, str(table))
    values, problem = at.session_state["out"]
    assert problem is None
    assert values["dataset"] == str(table)
    assert at.session_state["cfg.classes_per_batch"] == 3
    assert at.session_state["cfg.samples_per_class"] == 10  # 12 - round(0.2 * 12) train samples
    assert at.session_state["cfg.net"] == "mlp"
    assert "feature table" in at.caption[0].value


def test_bad_data_is_one_message(app: AppTest, tmp_path: Path) -> None:
    x, y = gaussian_table(per_class=5)
    table = write_npz(tmp_path / "one.npz", x[y == "alpha"], y[y == "alpha"])
    at = _path(app, str(table))
    _, problem = at.session_state["out"]
    assert "has 1 class(es) ('alpha') but the standard split needs at least 2" in problem
    assert at.error[0].value == problem
    at = _path(at, str(tmp_path / "missing"))
    _, problem = at.session_state["out"]
    assert problem.endswith("missing does not exist.")


def test_an_image_folder_sets_the_convnet(app: AppTest, tmp_path: Path) -> None:
    """Catches: the net widget left at the MLP for images (P@1 0.85 instead of 0.94 on shapes)."""
    folder = write_shapes(tmp_path / "shapes", per_class=6, size=16)
    at = _path(app, str(folder))
    _, problem = at.session_state["out"]
    assert problem is None
    assert at.session_state["cfg.net"] == "convnet"
    assert at.session_state["cfg.classes_per_batch"] == 4
    assert at.session_state["cfg.samples_per_class"] == 5  # 6 - round(0.2 * 6) train samples


def _sidebar() -> None:
    """The order pages/train_settings.py is asked to use: the inputs before the net, P, K."""
    import streamlit as st

    from dml_core.config import RunConfig
    from pages.ui import field_widget
    from pages.your_data import YOUR_DATA, your_data_inputs

    own = st.toggle(YOUR_DATA, key="cfg.your_data")
    yours, problem = your_data_inputs() if own else ({}, None)
    values = {n: field_widget(RunConfig, n, f"cfg.{n}") for n in ("net", "classes_per_batch")}
    st.session_state["out"] = (values | yours, problem)


def test_inputs_drawn_before_the_net_and_batch_widgets_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a page order in which the widgets are set after they were drawn (an error)."""
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_function(_sidebar, default_timeout=60).run()
    assert at.session_state["out"] == ({"net": "mlp", "classes_per_batch": 6}, None)
    at.toggle(key="cfg.your_data").set_value(True).run()
    folder = write_shapes(tmp_path / "shapes", per_class=6, size=16)
    at = _path(at, str(folder))
    values, problem = at.session_state["out"]
    assert problem is None
    assert (values["net"], values["classes_per_batch"], values["dataset"]) == (
        "convnet", 4, str(folder),
    )  # fmt: skip
    at.radio(key="cfg.net").set_value("mlp").run()  # the user's choice then stays
    assert at.session_state["out"][0]["net"] == "mlp"


def test_the_upload_cap_is_streamlits_max_upload_size() -> None:
    """Catches: a cap fixed at 200 MB whatever the server is configured with (the issue: the
    size cap is configurable), or one in other units than Streamlit's megabytes."""
    from streamlit import config

    from pages.your_data import upload_cap

    before = config.get_option("server.maxUploadSize")
    try:
        config.set_option("server.maxUploadSize", 200)
        assert upload_cap() == 200 * 2**20
        config.set_option("server.maxUploadSize", 1)
        assert upload_cap() == 2**20
    finally:
        config.set_option("server.maxUploadSize", before)
