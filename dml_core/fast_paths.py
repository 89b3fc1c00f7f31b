"""The speed-ups the Trainer applies, each one switchable so the benchmark can add them one by one.

``FAST_PATHS`` names them; ``EXACT_PATHS`` are those that change how, not what, is computed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dml_core.geometry import pairwise_distances
from dml_core.losses.triplet import TripletLoss
from dml_core.miners import SemiHardMiner, SortedNegatives

__all__ = [
    "BF16_MIN_MACS",
    "EXACT_PATHS",
    "FAST_PATHS",
    "FusedSemiHardTriplet",
    "fused_path",
    "native_bf16",
    "pool_before_relu",
]

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
