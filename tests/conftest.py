"""Shared test settings (CPU threads, xdist groups, one component scan) and the fault tests'
reference.

One pytest process uses two torch threads, as on the CI machine. Under pytest-xdist (the
README's ``-n 2``) each of the two workers uses one, so the workers do not oversubscribe the
two cores; the fault tests still train with ``fault_runs.TEST_THREADS`` in every process.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from dml_core.runs import RunStore
from tests.fault_runs import TEST_THREADS, Outcome, tiny_config, train

try:
    from streamlit.components.v2 import manifest_scanner
except ImportError:  # a Streamlit before or after its components v2 scanner
    manifest_scanner = None

# Every new AppTest scans every installed distribution's metadata for Streamlit components
# (``BidiComponentManager.discover_and_register_components``): 0.38 s of CPU here, for about
# 300 distributions, in each of the suite's page tests. What is installed cannot change while
# the tests run, so each process scans once. (A Streamlit without this scanner scans nothing.)
if manifest_scanner is not None:
    manifest_scanner.scan_component_manifests = functools.cache(
        manifest_scanner.scan_component_manifests
    )

# The pages' AppTests train in threads of the test process, as the CLI does: a child process
# per run (and one started ahead) for each of hundreds of page tests would cost seconds of CPU
# each. tests/test_process_jobs.py and the e2e server (which drops this) train in processes.
os.environ.setdefault("DML_RUNS_IN_THREADS", "1")
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under xdist, else None
torch.set_num_threads(1 if WORKER else 2)

# Work units of ``-n 2 --dist loadgroup``: tests of one unit run in one worker process, one
# after another. Each file is a unit, so module fixtures and caches (test_lessons' trained
# lessons) are built once; these files share one: e2e (one streamlit server and one browser),
# faults (the session's ``reference_run``), ray (one local Ray instance at a time).
GROUPS = {
    "tests/test_disk_full.py": "faults",
    "tests/test_faults.py": "faults",
    "tests/test_kill_phases.py": "faults",
    "tests/test_resume.py": "faults",
    "tests/test_ray_backend.py": "ray",
    "tests/test_ray_worker.py": "ray",
}
FIRST = ("e2e", "tests/test_lessons.py", "faults", "ray")  # the longest units start first


def work_unit(nodeid: str) -> str:
    """The unit of a test, by its node id: its file, or the group its file belongs to."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/e2e/"):
        return "e2e"
    return GROUPS.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` by ``work_unit``, longest units first.

    xdist 3.8 groups by a suffix it appends to node ids, which pytest 9 no longer lets a
    plugin change, so its own loadgroup would scatter every file's tests over the workers.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            for unit in reversed(FIRST):
                if unit in self.workqueue:
                    self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return FileUnits(config, log)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One real local Ray instance with 2 CPUs, for a module of the "ray" work unit.

    Its modules run one after another in one worker process: one instance at a time.
    """
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)  # before the modules' own fixtures
def fault_test_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fault test modules run on ``TEST_THREADS`` torch threads, as the fault child does.

    Their runs must end bit-identical to ``reference_run``, trained on ``TEST_THREADS``; a job
    started without ``threads`` adopts the process's count, and an xdist worker's single
    thread changes float sums (e.g. the effective rank at step 0).
    """
    if work_unit(request.node.nodeid) != "faults":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """``fault_runs.tiny_config()`` trained to the end without a fault (once per session)."""
    store = RunStore(tmp_path_factory.mktemp("reference"))
    run_id = store.create(tiny_config(), "reference")
    train(store, run_id)
    return Outcome.read(store, run_id)
