"""The loss statistics of training steps: kept on the device, read once per snapshot.

Reading a number off a GPU waits for its queue to drain (a host sync). A step's loss, tuple
count and active count are therefore packed into one small device tensor (:class:`StepStats`)
and read, for all the steps of a snapshot interval at once, by :meth:`StepStats.read`; then
:func:`mean_stats` pools them for the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dml_core.tuples import TRIPLET_KINDS

# One step, on the device: loss, tuples mined, tuples with a non-zero term, then the number of
# triplets of each kind in TRIPLET_KINDS (plain path; zeros on the fused path).
ROW = ("loss", "tuples", "active", *TRIPLET_KINDS)


class StepStats(Mapping[str, Any]):
    """One step's loss statistics, as a read-only mapping whose values stay on the device.

    The keys are those of the old per-step dict: ``loss``, ``tuples``, ``active``,
    ``active_fraction`` and, where known, ``kind_shares``. The first read copies the values
    to the host (one host sync); :meth:`read` does it for many steps with one copy.

    Args:
        row: (len(ROW),) float64 on the training device.
        fused: the fused semi-hard path made it (its kinds follow from the counts: semi-hard
            mining leaves no hard triplet, and the zero-loss ones are the easy ones).
    """

    def __init__(self, row: Tensor, fused: bool) -> None:
        self._row, self._fused = row, fused
        self._values: dict[str, Any] | None = None

    @classmethod
    def build(
        cls, loss: Tensor, mined: Tensor, active: Tensor, kinds: Tensor | None, fused: bool
    ) -> StepStats:
        """Pack one step without reading anything (0-d tensors; ``kinds`` (T,) or None)."""
        counts = (
            torch.zeros(len(TRIPLET_KINDS), dtype=torch.float64, device=loss.device)
            if kinds is None
            else torch.bincount(kinds, minlength=len(TRIPLET_KINDS)).double()
        )
        head = torch.stack([loss.detach().double(), mined.double(), active.double()])  # (3,)
        return cls(torch.cat([head, counts]), fused)

    @staticmethod
    def read(steps: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Copy the values of all unread ``steps`` to the host at once; returns ``steps``."""
        pending = [s for s in steps if isinstance(s, StepStats) and s._values is None]
        if pending:
            rows = torch.stack([s._row for s in pending]).cpu().tolist()  # (steps, len(ROW))
            for step, row in zip(pending, rows, strict=True):
                step._values = step._decode(row)
        return list(steps)

    def _decode(self, row: list[float]) -> dict[str, Any]:
        loss, mined, active, *counts = row
        mined, active = int(mined), int(active)
        out: dict[str, Any] = {
            "loss": loss,
            "tuples": mined,
            "active": active,
            "active_fraction": active / mined if mined else float("nan"),
        }
        if self._fused and mined:
            semi = active / mined
            out["kind_shares"] = dict(zip(TRIPLET_KINDS, (1.0 - semi, semi, 0.0), strict=True))
        elif not self._fused and sum(counts):
            total = sum(counts)
            out["kind_shares"] = {k: c / total for k, c in zip(TRIPLET_KINDS, counts, strict=True)}
        return out

    def _host(self) -> dict[str, Any]:
        if self._values is None:
            StepStats.read([self])
        assert self._values is not None
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._host()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._host())

    def __len__(self) -> int:
        return len(self._host())


def mean_stats(window: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool the per-step statistics of the steps since the last snapshot.

    One batch's loss is noisy (with semi-hard mining a batch may have no triplet at all), so
    snapshots record the interval. Shares are pooled over the tuples, not averaged over steps:
    a step whose miner found nothing adds no tuple, instead of an "active fraction" of 0; how
    often that happens is ``empty_batches``, and ``tuples_per_batch`` how much mining found.
    """
    if not window:
        return {}
    window = StepStats.read(window)
    out: dict[str, Any] = {"loss": float(np.mean([w["loss"] for w in window]))}
    tuples = np.array([w["tuples"] for w in window], dtype=np.float64)  # (steps,)
    total = tuples.sum()
    out["active_fraction"] = sum(w["active"] for w in window) / total if total else float("nan")
    out["mining"] = {
        "tuples_per_batch": float(tuples.mean()),
        "empty_batches": float(np.mean(tuples == 0)),
    }
    counted = [
        (w["kind_shares"], n) for w, n in zip(window, tuples, strict=True) if "kind_shares" in w
    ]
    weight = sum(n for _, n in counted)
    if counted and weight:
        kinds = counted[0][0]
        out["kind_shares"] = {k: sum(s[k] * n for s, n in counted) / weight for k in kinds}
    return out
