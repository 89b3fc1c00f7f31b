"""Training: the optimiser loop, snapshots for the live views, and a divergence guard.

``Trainer(cfg).run()`` yields a :class:`~dml_core.snapshot.Snapshot` at step 0 (the untrained
net), every ``snapshot_every`` steps and at the last step. Snapshots embed a fixed,
class-balanced probe set drawn from the query (test) split; their retrieval metrics are
leave-one-out within that probe set, so they stay cheap. The full test-vs-train evaluation
runs once, at the end (``Trainer.final_metrics``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dml_core import metrics
from dml_core.config import RunConfig, check_against_dataset
from dml_core.data import Dataset, load_dataset
from dml_core.nets import Embedder, build_net
from dml_core.sampling import PKSampler
from dml_core.snapshot import Snapshot, make_probe_indices
from dml_core.tuples import TRIPLET_KINDS

EMBED_CHUNK = 2048


class TrainingDivergedError(RuntimeError):
    """The loss, the embeddings or the gradients became NaN or infinite."""

    def __init__(self, step: int, what: str) -> None:
        self.step = step
        super().__init__(
            f"Training diverged at step {step}: the {what} became NaN or infinite. "
            "The last good snapshot and checkpoint are kept. Try a smaller learning rate."
        )


def resolve_device(name: str) -> tuple[torch.device, str]:
    """The device to train on, and a sentence saying what was picked and why."""
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise RuntimeError("CUDA was requested, but no CUDA GPU is available here.")
    if name == "cpu" or not has_cuda:
        why = "as requested" if name == "cpu" else "no CUDA GPU found"
        return torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads; {why})"
    return torch.device("cuda"), f"CUDA GPU: {torch.cuda.get_device_name(0)}"


@torch.no_grad()
def embed(net: Embedder, images: Tensor, device: torch.device) -> Tensor:
    """Embed images (N, 1, H, W) in chunks, in eval mode; returns (N, D) float32 on the CPU."""
    was_training = net.training
    net.eval()
    out = [
        net(images[i : i + EMBED_CHUNK].to(device)).float().cpu()
        for i in range(0, len(images), EMBED_CHUNK)
    ]
    net.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


class Trainer:
    """Builds data, net, loss, miner and optimiser from a RunConfig and trains.

    Args:
        cfg: a checked config (``config.make_config``).
        dataset: the loaded dataset (loaded from ``cfg`` when None).
    """

    def __init__(self, cfg: RunConfig, dataset: Dataset | None = None) -> None:
        self.cfg = cfg
        self.device, self.device_note = resolve_device(cfg.device)
        self.data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.split)
        check_against_dataset(cfg, self.data)
        torch.manual_seed(cfg.seed)
        train_x = self.data.train.x
        self.train_x = train_x.to(self.device)  # (N, 1, H, W) uint8, resident on the device
        self.train_y = self.data.train.y.to(self.device)  # (N,)
        pixels = train_x.float()
        self.net = build_net(
            cfg.net,
            self.data.image_shape,
            cfg.embedding_dim,
            cfg.normalize,
            float(pixels.mean()),
            float(pixels.std()),
        ).to(self.device)
        context = {
            "num_classes": int(self.data.train.y.max()) + 1,
            "embedding_dim": cfg.embedding_dim,
        }
        self.loss = cfg.loss_entry.create(context, **cfg.loss_params).to(self.device)
        self.miner = cfg.miner_entry.create(context, **cfg.miner_params)
        params = list(self.net.parameters()) + list(self.loss.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.sampler = PKSampler(
            self.train_y, cfg.classes_per_batch, cfg.samples_per_class, cfg.seed
        )
        query = self.data.query
        probe = make_probe_indices(query.y.numpy(), cfg.probe_size, cfg.seed)
        self.probe_x = query.x[probe]  # (n, 1, H, W)
        self.probe_y = query.y[probe]  # (n,)
        self.step = 0
        self.elapsed = 0.0
        self._pair_gen = torch.Generator().manual_seed(cfg.seed)

    def train_step(self) -> dict[str, Any]:
        """One optimiser step on a fresh P x K batch; returns the batch's loss statistics."""
        idx = self.sampler.sample()  # (P*K,)
        x, y = self.train_x[idx], self.train_y[idx]
        emb = self.net(x)  # (P*K, D)
        if not torch.isfinite(emb).all():
            raise TrainingDivergedError(self.step + 1, "embeddings")
        tuples = self.miner(emb, y)
        out = self.loss(emb, y, tuples)
        if not torch.isfinite(out.loss):
            raise TrainingDivergedError(self.step + 1, "loss")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):
            raise TrainingDivergedError(self.step + 1, "gradients")
        self.optimizer.step()
        self.step += 1
        stats = {
            "loss": float(out.loss.detach()),
            "active_fraction": float(out.active.float().mean()) if len(out.active) else 0.0,
        }
        if out.kinds is not None and len(out.kinds):
            shares = torch.bincount(out.kinds, minlength=len(TRIPLET_KINDS)).float() / len(
                out.kinds
            )
            stats["kind_shares"] = dict(zip(TRIPLET_KINDS, shares.tolist(), strict=True))
        return stats

    def snapshot(self, stats: dict[str, Any]) -> Snapshot:
        """Embed the probe set and measure it (the cost of a live update)."""
        emb = embed(self.net, self.probe_x, self.device)  # (n, D)
        labels = self.probe_y
        retrieval = metrics.retrieval_metrics(
            emb, labels, emb, labels, same_set=True, with_nmi=False
        )
        pos, neg = metrics.sample_pair_distances(emb, labels, 5000, self._pair_gen)
        collapse = metrics.collapse_signals(emb)
        collapse["collapsing"] = float(collapse["collapsed_fraction"] >= 0.5)
        retrieval["pair_overlap"] = metrics.pair_overlap(pos, neg)
        extras = self.loss.extras() if hasattr(self.loss, "extras") else {}
        lines = self.loss.distance_lines() if hasattr(self.loss, "distance_lines") else {}
        return Snapshot(
            step=self.step,
            samples_seen=self.step * self.cfg.batch_size,
            elapsed=self.elapsed,
            loss=float(stats.get("loss", np.nan)),
            active_fraction=float(stats.get("active_fraction", np.nan)),
            probe_emb=emb.numpy().astype(np.float32),
            probe_labels=labels.numpy().astype(np.int64),
            pos_dist=pos,
            neg_dist=neg,
            kind_shares=stats.get("kind_shares", {}),
            metrics=retrieval,
            collapse=collapse,
            extras=extras,
            lines={k: float(v) for k, v in lines.items()},
        )

    def run(
        self, steps: int | None = None, control: Callable[[], bool] | None = None
    ) -> Iterator[Snapshot]:
        """Train up to ``steps`` (default cfg.steps), yielding snapshots; call again to go on.

        Args:
            steps: the step to stop at.
            control: called before every step; may block (pause) and returns False to stop
                early, after one last snapshot of the current state.
        """
        last = self.cfg.steps if steps is None else steps
        stats: dict[str, Any] = {}
        snapped = -1
        if self.step == 0:
            snapped = self.step
            yield self.snapshot(stats)
        while self.step < last:
            if control is not None and not control():
                if snapped != self.step:
                    yield self.snapshot(stats)
                return
            start = time.perf_counter()
            stats = self.train_step()
            self.elapsed += time.perf_counter() - start
            if self.step % self.cfg.snapshot_every == 0 or self.step == last:
                snapped = self.step
                yield self.snapshot(stats)

    def final_metrics(self) -> dict[str, float]:
        """Full retrieval: every query (test) image against every reference (train) image."""
        query = embed(self.net, self.data.query.x, self.device)
        ref = embed(self.net, self.data.reference.x, self.device)
        return metrics.retrieval_metrics(query, self.data.query.y, ref, self.data.reference.y)

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything needed to resume: weights, loss, optimiser, step, sampler RNG."""
        return copy.deepcopy(
            {
                "net": self.net.state_dict(),
                "loss": self.loss.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "elapsed": self.elapsed,
                "sampler_rng": self.sampler.generator.get_state(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
        self.net.load_state_dict(state["net"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.sampler.generator.set_state(state["sampler_rng"])
