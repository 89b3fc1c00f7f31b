"""Metric-learning losses, each registered in ``LOSSES`` with its parameters, paper and equation.

Every loss is an ``nn.Module`` called as ``loss(emb, labels, tuples=None) -> LossOutput``.
``tuples`` come from a miner (see ``tuples.py``); ``None`` means every valid tuple. Each loss
also exposes its formula as a plain function of distances (``pair_terms``, ``triplet_terms``):
training and the Loss explorer call the same code.
"""

from dml_core.losses import anchor, memory, pair, proxy, triplet
from dml_core.losses.base import LossOutput, PairLoss, Params, TripletLossBase, mean_active

__all__ = [
    "LossOutput",
    "PairLoss",
    "Params",
    "TripletLossBase",
    "anchor",
    "mean_active",
    "memory",
    "pair",
    "proxy",
    "triplet",
]
