"""Shared test settings (two CPU threads, as on the CI machine) and the fault tests' reference."""

from __future__ import annotations

import pytest
import torch

from dml_core.runs import RunStore
from tests.fault_runs import Outcome, tiny_config, train

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """``fault_runs.tiny_config()`` trained to the end without a fault (once per session)."""
    store = RunStore(tmp_path_factory.mktemp("reference"))
    run_id = store.create(tiny_config(), "reference")
    train(store, run_id)
    return Outcome.read(store, run_id)
