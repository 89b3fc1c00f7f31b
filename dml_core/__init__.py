"""Metric Learning Playground core: data, nets, losses, miners, training and run storage.

Importing the package registers every loss and miner, so ``LOSSES`` and ``MINERS`` are complete.
"""

from dml_core import losses, miners
from dml_core.errors import ConfigError
from dml_core.losses import LossOutput
from dml_core.registry import LOSSES, MINERS, Entry, Registry
from dml_core.tuples import Pairs, Triplets

__all__ = [
    "LOSSES",
    "MINERS",
    "ConfigError",
    "Entry",
    "LossOutput",
    "Pairs",
    "Registry",
    "Triplets",
    "losses",
    "miners",
]
