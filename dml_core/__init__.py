"""Metric Learning Playground core: data, nets, losses, miners, training and run storage.

Importing the package registers every loss and miner, so ``LOSSES`` and ``MINERS`` are complete.
The core vocabulary keeps its module paths (``dml_core.config``, ``registry``, ``tuples``,
``geometry``, ``metrics``, ``losses``, ``miners``, ``runs``, ``projection``, ``train``,
``cli``); families live in sub-packages by role: ``analysis`` (the understanding pages' maths),
``figures`` (plotly, one module per page family), ``services`` (jobs, lessons, export) and
``bench``.
"""

from dml_core import losses, miners
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
