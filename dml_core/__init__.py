"""Metric Learning Playground core: data, nets, losses, miners, training and run storage.

Importing the package registers every loss and miner, so ``LOSSES`` and ``MINERS`` are complete.
The core vocabulary keeps its module paths (``dml_core.config``, ``registry``, ``tuples``,
``geometry``, ``metrics``, ``losses``, ``miners``, ``runs``, ``projection``, ``train``,
``cli``); families live in sub-packages by role: ``analysis`` (the understanding pages' maths),
``figures`` (plotly, one module per page family), ``services`` (jobs, lessons, export) and
``bench``.
"""

import os
import sys

if "streamlit" in sys.modules:  # the app (dml_core itself never imports streamlit)
    # Before torch loads OpenMP: a thread that waits at the end of a parallel op sleeps instead
    # of spinning. The app's training shares the cores with page reruns, the UMAP process and
    # often the browser; spinning threads took the CPU that the preempted one needed, and a
    # lone job on 2 threads trained slower than on 1 (``bench app``; notes of issue 14).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # numpy's and scipy's OpenBLAS on one thread: on two, the page reruns' small products (a
    # 2,000-point PCA, the layout's trustworthiness) ran up to 50x slower beside the browser
    # and their threads spun; the server's CPU per redrawn snapshot fell from 0.75 to 0.39 s
    # (notes of issue 14). OpenBLAS reads the variable as it loads; one loaded is capped here.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "numpy" in sys.modules:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1, user_api="blas")  # torch's threads are not BLAS

from dml_core import losses, miners  # after the OpenMP setting
from dml_core.config import RunConfig, make_config
from dml_core.errors import ConfigError
from dml_core.geometry import distance_density
from dml_core.losses import LossOutput
from dml_core.metrics import retrieval_metrics
from dml_core.registry import LOSSES, MINERS, Entry, Registry
from dml_core.runs import RunStore
from dml_core.tuples import Pairs, Triplets

__all__ = [
    "LOSSES",
    "MINERS",
    "ConfigError",
    "Entry",
    "LossOutput",
    "Pairs",
    "Registry",
    "RunConfig",
    "RunStore",
    "Triplets",
    "distance_density",
    "losses",
    "make_config",
    "miners",
    "retrieval_metrics",
]
