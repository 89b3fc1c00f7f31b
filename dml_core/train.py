"""Training: the optimiser loop, snapshots for the live views, and a divergence guard.

``Trainer(cfg).run()`` yields a :class:`~dml_core.snapshot.Snapshot` at step 0 (the untrained
net), every ``snapshot_every`` steps and at the last step. Snapshots embed a fixed,
class-balanced probe set drawn from the query (test) split; their retrieval metrics are
leave-one-out within that probe set, so they stay cheap. The full test-vs-train evaluation
runs once, at the end (``Trainer.final_metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dml_core import metrics
from dml_core.config import RunConfig, check_against_dataset
from dml_core.data import Dataset, load_dataset
from dml_core.devices import CudaHealth, host_copy, synchronize
from dml_core.geometry import pairwise_distances
from dml_core.losses.triplet import TripletLoss
from dml_core.miners import SemiHardMiner, SortedNegatives
from dml_core.nets import Embedder, build_net, macs_per_sample
from dml_core.sampling import PKSampler
from dml_core.seeding import seeded
from dml_core.snapshot import Snapshot, make_probe_indices
from dml_core.step_stats import StepStats, mean_stats

__all__ = ["StepStats", "Trainer", "TrainingDivergedError", "embed", "mean_stats"]

EMBED_CHUNK = 2048

# The speed-ups Trainer applies by default (``Trainer(cfg, fast=...)`` picks a subset; the
# benchmark measures each one). All but bf16 change only how things are computed, not what:
#   fused_loss: semi-hard mining + hinge triplet loss from one distance matrix, no triplet list
#   channels_last: NHWC convolutions for the ConvNet (oneDNN / cuDNN prefer it)
#   fused_adam: one fused kernel for the Adam update instead of a loop over parameters
#   pool_before_relu: max-pool before the ReLU (same values and gradients, 4x fewer ReLUs)
#   bf16: bfloat16 autocast of the net's layers before the embedding layer (which stays
#         float32), for nets of at least BF16_MIN_MACS per image on hardware with native
#         bfloat16: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX. It rounds
#         activations to 8 mantissa bits, so the benchmark checks that MAP@R stays equal.
FAST_PATHS = ("fused_loss", "channels_last", "fused_adam", "pool_before_relu", "bf16")
EXACT_PATHS = tuple(p for p in FAST_PATHS if p != "bf16")  # those that compute the same thing
# bf16 pays only for nets with enough matmul / convolution work per image to outweigh its casts.
# Measured on 2 CPU cores (AVX512-BF16), ms per step bf16 vs float32: the ConvNet on 28x28
# images (12M MACs) 68 vs 123; the ConvNet on 8x8 digits (0.3M) 23 vs 18; the MLP on 28x28
# (0.27M) 17 vs 13. The same threshold is applied on CUDA (not measured there: no GPU was lent),
# where such small nets are bound by kernel launches rather than arithmetic anyway.
BF16_MIN_MACS = 2_000_000


def pool_before_relu(trunk: nn.Module) -> None:
    """Swap, in place, each ReLU directly followed by a MaxPool2d of a Sequential trunk.

    ReLU is monotone, so max(relu(x)) = relu(max(x)) and the gradient reaches the same input
    (or is zero in both orders): the outputs and gradients are identical, and the ReLU runs on
    the pooled map (4x fewer values for 2x2 pooling). Neither layer has parameters, so the
    state_dict keys do not change.
    """
    if not isinstance(trunk, nn.Sequential):
        return
    layers = list(trunk)
    for i in range(len(layers) - 1):
        if type(layers[i]) is nn.ReLU and type(layers[i + 1]) is nn.MaxPool2d:
            trunk[i], trunk[i + 1] = layers[i + 1], layers[i]


class FusedSemiHardTriplet:
    """Semi-hard mining and the hinge triplet loss in one pass over one distance matrix.

    Computes exactly what ``TripletLoss(loss_margin)(emb, labels, SemiHardMiner(miner_margin)
    (emb, labels))`` computes (the mean of the non-zero hinge terms over the semi-hard
    triplets), without listing the triplets: with each anchor's negatives sorted by distance,
    the semi-hard negatives of a positive pair (a, p) form one contiguous run [lo, hi), so

        sum_n [d(a,p) - d(a,n) + alpha]_+ = count (d(a,p) + alpha) - (S[hi'] - S[lo])

    with S the prefix sums of the sorted negative distances and hi' the end of the part of the
    run where the hinge is non-zero. Work and memory are O(B^2 log B) instead of
    O(B (K - 1) (B - K)) (1.8M triplets for P=8, K=32); the gradient is the same.
    """

    def __init__(self, miner_margin: float, loss_margin: float) -> None:
        self.miner_margin, self.loss_margin = miner_margin, loss_margin

    def __call__(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, number of mined triplets and number with non-zero loss (0-d tensors).

        Args:
            emb: (B, D) embeddings, with gradient; distances are taken in float32 (as the
                Trainer's embeddings are), so mining and loss read the same matrix.
            labels: (B,) labels.
        """
        dist = pairwise_distances(emb.float())  # (B, B), in float32 as the miner measures
        with torch.no_grad():
            d = dist.detach()
            neg = SortedNegatives.build(d, labels)
            lo = neg.count_below(d, inclusive=True)  # (B, B) negatives with d(a,n) <= d(a,p)
            hi = neg.count_below(d + self.miner_margin, inclusive=False)
            hi_active = (
                hi
                if self.loss_margin == self.miner_margin
                else torch.minimum(hi, neg.count_below(d + self.loss_margin, inclusive=False))
            )
            mined = (hi - lo).clamp_min(0) * neg.pos_mask  # (B, B) triplets per pair
            active = (hi_active - lo).clamp_min(0) * neg.pos_mask  # (B, B) non-zero terms
            start = torch.where(active > 0, lo, hi_active)  # empty runs sum to 0
            finite = neg.sorted_dist.isfinite()  # (B, B) real negatives (then +inf padding)
        sorted_d = torch.where(finite, dist.gather(1, neg.order), 0.0).double()  # (B, B)
        prefix = nn.functional.pad(sorted_d.cumsum(dim=1), (1, 0))  # (B, B + 1), S[0] = 0
        run_sum = prefix.gather(1, hi_active) - prefix.gather(1, start)  # (B, B)
        total = (active * (dist.double() + self.loss_margin) - run_sum).sum()
        loss = (total / active.sum().clamp_min(1)).to(dist.dtype)
        return loss, mined.sum(), active.sum()


def fused_path(loss: nn.Module, miner: object) -> FusedSemiHardTriplet | None:
    """The fused computation for this loss and miner, or None where there is none."""
    if type(loss) is TripletLoss and not loss.soft and type(miner) is SemiHardMiner:
        return FusedSemiHardTriplet(miner.margin, loss.margin)
    return None


class TrainingDivergedError(RuntimeError):
    """The loss, the embeddings or the gradients became NaN or infinite."""

    def __init__(self, step: int, what: str) -> None:
        self.step = step
        super().__init__(
            f"Training diverged at step {step}: the {what} became NaN or infinite. "
            "The last good snapshot and checkpoint are kept. Try a smaller learning rate."
        )


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls and convolutions in hardware.

    On a CPU without AVX512-BF16 or AMX, oneDNN emulates bfloat16 and autocast is slower than
    float32, so it is only used where these instructions exist.
    """
    if device.type == "cuda":  # emulated bf16 (pre-Ampere GPUs) would be slower, not faster
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_device(name: str) -> tuple[torch.device, str]:
    """The device to train on, and a sentence saying what was picked and why.

    Raises:
        RuntimeError: CUDA was requested but is missing, or a device-side assert broke this
            process's CUDA context (the message says to restart the server).
    """
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise RuntimeError("CUDA was requested, but no CUDA GPU is available here.")
    if name == "cpu" or not has_cuda:
        why = "as requested" if name == "cpu" else "no CUDA GPU found"
        return torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads; {why})"
    device = torch.device("cuda")
    CudaHealth.check(device)
    return device, f"CUDA GPU: {torch.cuda.get_device_name(0)}"


@torch.no_grad()
def embed(
    net: Embedder,
    images: Tensor,
    device: torch.device,
    low_precision: torch.dtype | None = None,
    *,
    on_device: bool = False,
) -> Tensor:
    """Embed images (N, 1, H, W) in chunks, in eval mode; returns (N, D) float32 on the CPU.

    ``low_precision`` as in ``Embedder.forward``: snapshots embed the probe set the way the
    net trains (bf16: 1.6x faster on the 28x28 ConvNet, measured on 2 cores); final
    evaluations use float32. ``on_device`` keeps the result on ``device`` (for a search there).
    """
    was_training = net.training
    net.eval()
    home = device if on_device else torch.device("cpu")
    out = [
        net(images[i : i + EMBED_CHUNK].to(device), low_precision=low_precision).float().to(home)
        for i in range(0, len(images), EMBED_CHUNK)
    ]
    net.train(was_training)
    return torch.cat(out) if out else torch.empty(0, device=home)


COLLAPSE_SHRINK = 0.25  # collapse: mean probe distance below this share of the untrained one


def collapse_advice(cfg: RunConfig) -> str:
    """What the collapse warning says for this run's own loss and miner."""
    seen = (
        "Collapse: the probe points have crowded together, far closer than at the start (see the "
        "sphere histogram). "
    )
    if cfg.miner in ("hard", "batch_hard"):
        return seen + (
            f"The {cfg.miner} miner feeds the loss only the hardest negatives, and with a margin "
            "the easiest way to satisfy them is to shrink everything; semi-hard mining (FaceNet) "
            "avoids this. Retrieval metrics ignore scale, so they can still look good."
        )
    return seen + (
        f"With {cfg.loss} and the {cfg.miner} miner, try a smaller learning rate or margin. "
        "Retrieval metrics ignore scale, so they can still look good."
    )


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
        self.data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.split)
        check_against_dataset(cfg, self.data)
        train_x = self.data.train.x
        self.train_x = train_x.to(self.device)  # (N, 1, H, W) uint8, resident on the device
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
                self.data.image_shape,
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
            and macs_per_sample(self.net, self.data.image_shape) >= BF16_MIN_MACS
        )
        params = list(self.net.parameters()) + list(self.loss.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, fused="fused_adam" in fast or None)
        self.fused = fused_path(self.loss, self.miner) if "fused_loss" in fast else None
        self.sampler = PKSampler(
            self.train_y, cfg.classes_per_batch, cfg.samples_per_class, cfg.seed
        )
        query = self.data.query
        probe = make_probe_indices(query.y.numpy(), cfg.probe_size, cfg.seed)
        self.probe_x = query.x[probe]  # (n, 1, H, W)
        self.probe_y = query.y[probe]  # (n,)
        self.step = 0
        self.elapsed = 0.0
        self.initial_mean_distance: float | None = None
        self.resume_note = ""
        self._pair_gen = torch.Generator().manual_seed(cfg.seed)

    @property
    def low_precision(self) -> torch.dtype | None:
        """The autocast type of the net's body in training and snapshots (None: float32)."""
        return torch.bfloat16 if self.autocast else None

    def train_step(self) -> StepStats:
        """One optimiser step on a fresh P x K batch; returns the batch's loss statistics.

        On the fused path the step reads one number back from the device: a flag folding the
        finite checks of the embeddings, the loss and the gradients, read before the optimiser
        moves, so a NaN never reaches the weights. The statistics stay on the device (read at
        the next snapshot). The plain path also checks the embeddings before mining, as its
        miners and losses may index with values derived from them.
        """
        idx = self.sampler.sample()  # (P*K,)
        x, y = self.train_x[idx], self.train_y[idx]
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

    def snapshot(self, stats: dict[str, Any]) -> Snapshot:
        """Embed the probe set and measure it (the cost of a live update)."""
        emb = embed(self.net, self.probe_x, self.device, self.low_precision)  # (n, D)
        labels = self.probe_y
        retrieval = metrics.retrieval_metrics(
            emb, labels, emb, labels, same_set=True, with_nmi=False
        )
        pos, neg = metrics.sample_pair_distances(emb, labels, 5000, self._pair_gen)
        collapse = metrics.collapse_signals(emb)
        if self.initial_mean_distance is None:
            self.initial_mean_distance = collapse["mean_distance"]
        collapse["collapsing"] = float(
            collapse["collapsed_fraction"] >= 0.5
            or collapse["mean_distance"] < COLLAPSE_SHRINK * self.initial_mean_distance
        )
        retrieval["pair_overlap"] = metrics.pair_overlap(pos, neg)
        extras = self.loss.extras()
        lines = self.loss.histogram_lines(pos)
        return Snapshot(
            step=self.step,
            samples_seen=self.step * self.cfg.batch_size,
            elapsed=self.elapsed,
            loss=float(stats.get("loss", np.nan)),
            active_fraction=float(stats.get("active_fraction", np.nan)),
            mining=stats.get("mining", {}),
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

    def final_metrics(self) -> dict[str, float]:
        """Full retrieval: every query (test) image against every reference (train) image.

        The search (10k x 60k distances for MNIST) runs on the training device.
        """
        query = embed(self.net, self.data.query.x, self.device, on_device=True)
        ref = embed(self.net, self.data.reference.x, self.device, on_device=True)
        return metrics.retrieval_metrics(query, self.data.query.y, ref, self.data.reference.y)

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
                "initial_mean_distance": self.initial_mean_distance,
                "pair_rng": self._pair_gen.get_state(),  # which pairs snapshots sample
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
        self.initial_mean_distance = state.get("initial_mean_distance")
        if "pair_rng" in state:  # checkpoints from before 2026-11-29 lack it
            self._pair_gen.set_state(state["pair_rng"])
