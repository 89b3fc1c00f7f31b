"""Variant A of the benchmark: the training loop people write with pytorch-metric-learning.

A torchvision-style ``Dataset`` over float images, ``DataLoader(batch_size, shuffle=True)``,
``TripletMarginMiner(margin, type_of_triplets="semihard")`` + ``TripletMarginLoss(margin)``
and Adam: the baseline that ``dml_core``'s ``train.Trainer`` (variant B) is timed against.
Also here: the straightforward semi-hard miner that lists every triplet, then filters (the
reference the fused path is checked against).

References:
    Schroff et al., FaceNet, CVPR 2015 (triplet loss, semi-hard negatives, Eq. 1);
    Musgrave et al., pytorch-metric-learning, 2020.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dml_core.data import Dataset
from dml_core.nets import Embedder, build_net
from dml_core.tuples import Triplets, all_triplets

if TYPE_CHECKING:
    from dml_core.train import Trainer

MARGIN = 0.2  # alpha of the triplet loss and the semi-hard band, in A and B alike
LR = 1e-3  # Adam's learning rate, in A and B alike


def enumerated_semi_hard(dist: Tensor, labels: Tensor, margin: float) -> Triplets:
    r"""The straightforward semi-hard miner: list all B (K-1) (B-K) triplets, then filter.

    Keeps the triplets with :math:`d(a,p) < d(a,n) < d(a,p) + \alpha` (FaceNet, Sec. 3.2).

    Args:
        dist: pairwise distances of the batch, ``(B, B)``.
        labels: ``(B,)`` class labels.
        margin: the band width :math:`\alpha`.
    """
    triplets = all_triplets(labels)
    d_ap = dist[triplets.anchor, triplets.pos]  # (T,)
    d_an = dist[triplets.anchor, triplets.neg]  # (T,)
    keep = (d_an > d_ap) & (d_an < d_ap + margin)
    return Triplets(*(t[keep] for t in triplets))


def baseline_net(trainer: Trainer) -> Embedder:
    """A's net: ``trainer``'s initial weights in the net as ``nets.build_net`` makes it.

    The layers in their own order (ReLU, then max-pool) and memory format (NCHW), as a user of
    pytorch-metric-learning runs them. A copy of ``trainer.net`` would hand A two of B's
    speed-ups: ``pool_before_relu`` swaps the trunk's layers in place, and channels_last.
    """
    cfg = trainer.cfg
    net = build_net(cfg.net, trainer.data.input_shape, cfg.embedding_dim, cfg.normalize)
    net.load_state_dict(trainer.net.state_dict())  # weights, pixel mean and std: the same start
    return net.to(trainer.device)


class ImageDataset(torch.utils.data.Dataset):
    """What a torchvision dataset hands a DataLoader: one (float image, label) per index."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images.float()  # (N, 1, H, W), 0-255
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


class PMLLoop:
    """Variant A: the usual pytorch-metric-learning training loop, one step at a time.

    Args:
        net: the embedder to train (a copy of B's initial weights).
        data: the dataset; A trains on ``data.train``.
        batch: samples per step.
        device: where the net runs; batches are moved there each step.
    """

    def __init__(self, net: Embedder, data: Dataset, batch: int, device: torch.device) -> None:
        from pytorch_metric_learning import losses, miners

        self.net, self.device = net, device
        self.loader = torch.utils.data.DataLoader(
            ImageDataset(data.train.x, data.train.y), batch_size=batch, shuffle=True
        )
        self.loss = losses.TripletMarginLoss(margin=MARGIN)
        self.miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
        self.optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        self._batches: Iterator[tuple[Tensor, Tensor]] = iter(self.loader)

    def train_step(self) -> int:
        """One optimiser step; returns the number of samples it used."""
        try:
            x, y = next(self._batches)
        except StopIteration:  # a new epoch
            self._batches = iter(self.loader)
            x, y = next(self._batches)
        x, y = x.to(self.device), y.to(self.device)
        emb = self.net(x)
        loss = self.loss(emb, y, self.miner(emb, y))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return len(y)
