"""Training: the optimiser loop, snapshots for the live views, and a divergence guard.

``Trainer(cfg).run()`` yields a :class:`~dml_core.snapshot.Snapshot` at step 0 (the untrained
net), every ``snapshot_every`` steps and at the last step. Snapshots embed a fixed,
class-balanced probe set drawn from the query (test) split (``probe.ProbeMeter``); their
retrieval metrics are leave-one-out within that probe set, so they stay cheap. The full
test-vs-train evaluation runs once, at the end (``Trainer.final_metrics``). The speed-ups
live in ``fast_paths``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from dml_core.augment import Augmentation
from dml_core.config import RunConfig, check_against_dataset
from dml_core.data import Dataset, load_for_config
from dml_core.devices import CudaHealth, host_copy, synchronize
from dml_core.evaluation import Evaluation, embed, evaluate
from dml_core.fast_paths import (
    BF16_MIN_MACS,
    EXACT_PATHS,
    FAST_PATHS,
    FusedSemiHardTriplet,
    fused_path,
    native_bf16,
    pool_before_relu,
)
from dml_core.nets import build_net, macs_per_sample
from dml_core.probe import ProbeMeter, collapse_advice
from dml_core.sampling import PKSampler, SeededSampler, ViewSampler
from dml_core.seeding import seeded
from dml_core.snapshot import Snapshot
from dml_core.step_stats import StepStats, mean_stats

__all__ = [
    "BF16_MIN_MACS",
    "EXACT_PATHS",
    "FAST_PATHS",
    "FusedSemiHardTriplet",
    "StepStats",
    "Trainer",
    "TrainingDivergedError",
    "collapse_advice",
    "embed",
    "mean_stats",
    "pool_before_relu",
    "resolve_device",
]


class TrainingDivergedError(RuntimeError):
    """The loss, the embeddings or the gradients became NaN or infinite."""

    def __init__(self, step: int, what: str) -> None:
        self.step = step
        super().__init__(
            f"Training diverged at step {step}: the {what} became NaN or infinite. "
            "The last good snapshot and checkpoint are kept. Try a smaller learning rate."
        )


def resolve_device(name: str, threads: int | None = None) -> tuple[torch.device, str]:
    """The device to train on, and a sentence saying what was picked and why.

    ``threads``: the CPU threads to name (default: torch's count in this thread).

    Raises:
        RuntimeError: CUDA was requested but is missing, or a device-side assert broke this
            process's CUDA context (the message says to restart the server).
    """
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise RuntimeError("CUDA was requested, but no CUDA GPU is available here.")
    if name == "cpu" or not has_cuda:
        why = "as requested" if name == "cpu" else "no CUDA GPU found"
        n = torch.get_num_threads() if threads is None else threads
        return torch.device("cpu"), f"CPU ({n} thread{'' if n == 1 else 's'}; {why})"
    device = torch.device("cuda")
    CudaHealth.check(device)
    return device, f"CUDA GPU: {torch.cuda.get_device_name(0)}"


class Trainer:
    """Builds data, net, loss, miner and optimiser from a RunConfig and trains.

    Args:
        cfg: a checked config (``config.make_config``).
        dataset: the loaded dataset (loaded from ``cfg`` when None).
        fast: the speed-ups to apply (see ``FAST_PATHS``; default all). ``EXACT_PATHS``
            change how, not what, is computed; bf16 rounds activations. The benchmark adds
            them one by one.
    """

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset | None = None,
        *,
        fast: tuple[str, ...] = FAST_PATHS,
    ) -> None:
        self.cfg = cfg
        self.device, self.device_note = resolve_device(cfg.device)
        self.data = dataset if dataset is not None else load_for_config(cfg)
        check_against_dataset(cfg, self.data)
        train_x = self.data.train.x
        self.train_x = train_x.to(self.device)  # (N, C, H, W) uint8 or (N, d), on the device
        self.train_y = self.data.train.y.to(self.device)  # (N,)
        pixels = train_x.float()
        context = {
            "num_classes": int(self.data.train.y.max()) + 1,
            "embedding_dim": cfg.embedding_dim,
        }
        # A private generator, not torch.manual_seed: the seed alone sets the initial weights
        # (net, then class proxies or centres), whichever other runs start at the same time.
        with seeded(cfg.seed):
            net = build_net(
                cfg.net,
                self.data.input_shape,
                cfg.embedding_dim,
                cfg.normalize,
                float(pixels.mean()),
                float(pixels.std()),
            )
            self.loss = cfg.loss_entry.create(context, **cfg.loss_params).to(self.device)
            self.miner = cfg.miner_entry.create(context, **cfg.miner_params)
        self.net = net.to(self.device)
        if "channels_last" in fast and cfg.net == "convnet":
            self.net = self.net.to(memory_format=torch.channels_last)
        if "pool_before_relu" in fast:
            pool_before_relu(self.net.trunk)
        self.autocast = (
            "bf16" in fast
            and native_bf16(self.device)
            and macs_per_sample(self.net, self.data.input_shape) >= BF16_MIN_MACS
        )
        params = list(self.net.parameters()) + list(self.loss.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, fused="fused_adam" in fast or None)
        self.fused = fused_path(self.loss, self.miner) if "fused_loss" in fast else None
        self.sampler: SeededSampler
        if cfg.supervision == "views":  # label-free: two views of P*K/2 images, ids as labels
            aug = Augmentation.from_config(cfg)
            count = len(self.train_y)
            self.sampler = ViewSampler(count, cfg.images_per_batch, aug, cfg.seed, self.device)
        else:
            self.sampler = PKSampler(
                self.train_y, cfg.classes_per_batch, cfg.samples_per_class, cfg.seed
            )
        self.probe = ProbeMeter(cfg, self.data.query, context["num_classes"])
        self.step = 0
        self.elapsed = 0.0
        self.resume_note = ""

    @property
    def low_precision(self) -> torch.dtype | None:
        """The autocast type of the net's body in training and snapshots (None: float32)."""
        return torch.bfloat16 if self.autocast else None

    def train_step(self) -> StepStats:
        """One optimiser step on a fresh batch; returns the batch's loss statistics.

        The batch is P x K labelled images, or (``views``) two views of P K / 2 images
        labelled by image id (``sampling.ViewSampler``).

        On the fused path the step reads one number back from the device: a flag folding the
        finite checks of the embeddings, the loss and the gradients, read before the optimiser
        moves, so a NaN never reaches the weights. The statistics stay on the device (read at
        the next snapshot). The plain path also checks the embeddings before mining, as its
        miners and losses may index with values derived from them.
        """
        x, y = self.sampler.batch(self.train_x, self.train_y)  # (P*K, C, H, W), (P*K,)
        emb = self.net(x, low_precision=self.low_precision)  # (P*K, D)
        emb_ok = torch.isfinite(emb).all()
        if self.fused is not None:
            loss, mined, active = self.fused(emb, y)
            kinds = None
        else:
            if not bool(emb_ok):
                raise TrainingDivergedError(self.step + 1, "embeddings")
            out = self.loss(emb, y, self.miner(emb, y))
            loss, kinds = out.loss, out.kinds
            mined = torch.full((), len(out.active), device=emb.device)
            active = out.active.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad.isfinite().all() for p in self.net.parameters() if p.grad is not None]
        grads_ok = torch.stack(grads).all() if grads else emb_ok
        failed = int(~emb_ok * 4 + ~torch.isfinite(loss.detach()) * 2 + ~grads_ok)  # host sync
        if failed:
            what = "embeddings" if failed & 4 else "loss" if failed & 2 else "gradients"
            raise TrainingDivergedError(self.step + 1, what)
        self.optimizer.step()
        self.step += 1
        return StepStats.build(loss, mined, active, kinds, fused=self.fused is not None)

    @property
    def probe_y(self) -> torch.Tensor:
        """The probe set's labels, (n,)."""
        return self.probe.y

    def snapshot(self, stats: dict[str, Any]) -> Snapshot:
        """Embed the probe set and measure it (the cost of a live update)."""
        return self.probe.measure(
            self.net,
            self.loss,
            self.device,
            self.low_precision,
            stats,
            step=self.step,
            samples_seen=self.step * self.cfg.batch_size,
            elapsed=self.elapsed,
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
        window: list[dict[str, Any]] = []  # the steps since the last snapshot
        snapped = -1
        if self.step == 0:
            snapped = self.step
            yield self.snapshot({})
        while self.step < last:
            if control is not None and not control():
                if snapped != self.step:
                    yield self.snapshot(mean_stats(window))
                return
            start = time.perf_counter()
            window.append(self.train_step())
            due = self.step % self.cfg.snapshot_every == 0 or self.step == last
            if due:  # the clock then covers the interval's queued device work
                synchronize(self.device)
            self.elapsed += time.perf_counter() - start
            if due:
                snapped = self.step
                yield self.snapshot(mean_stats(window))
                window = []

    def final_evaluation(self) -> Evaluation:
        """Full retrieval (every query image against every reference image), with embeddings.

        Embedded the way the net trains (bf16 where ``low_precision``: measured on FashionMNIST
        with the ConvNet, MAP@R moves by 3e-5 against float32, P@1 by 0.0008, and the pass
        takes about 0.64x the float32 CPU time).
        """
        return evaluate(self.net, self.data, self.device, low_precision=self.low_precision)

    def final_metrics(self) -> dict[str, float]:
        """The metrics of :meth:`final_evaluation`."""
        return self.final_evaluation().metrics

    def state_dict(self) -> dict[str, Any]:
        """A copy, in host memory, of everything needed to resume.

        Weights, loss, optimiser, step, the sampler's RNG state with its device type, and the
        generator of the pairs each snapshot samples (so a resumed run's histograms match).
        """
        sampler = self.sampler.state()
        return host_copy(
            {
                "net": self.net.state_dict(),
                "loss": self.loss.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "elapsed": self.elapsed,
                "sampler_rng": sampler["state"],
                "sampler_device": sampler["device"],
                **self.probe.state(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`, on whichever device this trainer uses.

        Values are copied onto each parameter's device (a checkpoint is loaded to the CPU).
        A sampler state from another device type cannot be restored: the sampler is reseeded
        and ``resume_note`` says so ("" otherwise).
        """
        self.net.load_state_dict(state["net"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        saved = state["sampler_rng"]
        if "sampler_device" in state:
            saved = {"device": state["sampler_device"], "state": saved}
        self.resume_note = self.sampler.restore(saved, self.step)
        self.probe.restore(state)
