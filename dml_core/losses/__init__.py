"""Metric-learning losses, each registered in ``LOSSES`` with its parameters, paper and equation.

Every loss is a :class:`Loss` (``losses/base.py``), called as
``loss(emb, labels, tuples=None) -> LossOutput``, and declares ``curve``, ``distance_lines``,
``histogram_lines``, ``decision_boundaries``, ``extras`` and ``class_weights`` for the views.
``tuples`` come from a miner (see ``tuples.py``); ``None`` means every valid tuple. Each loss
exposes its formula as a plain function of distances (``pair_terms``, ``triplet_terms``, ...):
training and the Loss explorer call the same code.
"""

from dml_core.losses import (
    anchor,
    angular,
    centres,
    memory,
    pair,
    proxy,
    similarity,
    soft_triple,
    temperature,
    triplet,
)
from dml_core.losses.base import (
    Boundary,
    CurveUnavailableError,
    Loss,
    LossOutput,
    PairLoss,
    Params,
    TripletLossBase,
    mean_active,
)

__all__ = [
    "Boundary",
    "CurveUnavailableError",
    "Loss",
    "LossOutput",
    "PairLoss",
    "Params",
    "TripletLossBase",
    "anchor",
    "angular",
    "centres",
    "mean_active",
    "memory",
    "pair",
    "proxy",
    "similarity",
    "soft_triple",
    "temperature",
    "triplet",
]
