"""The declared loss interface (dml_core.losses.base): what every loss offers the views."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from dml_core import LOSSES
from dml_core.losses import CurveUnavailableError, Loss, LossOutput, PairLoss, TripletLossBase
from dml_core.tuples import Tuples, all_pairs

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = {"num_classes": 3, "embedding_dim": 5}


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_declares_the_interface(name: str) -> None:
    loss = LOSSES.create(name, CONTEXT)
    assert isinstance(loss, Loss)
    for lines in (loss.distance_lines(), loss.histogram_lines(np.array([0.5, 0.7]))):
        assert isinstance(lines, dict)
        assert all(isinstance(v, float) for v in lines.values()), lines
    assert isinstance(loss.extras(), dict)
    weights = loss.class_weights()
    if LOSSES[name].kind == "classes":
        assert isinstance(weights, Tensor)
        C, D = CONTEXT["num_classes"], CONTEXT["embedding_dim"]
        assert weights.shape[1] == D
        assert weights.shape[0] % C == 0  # (C K, D), class by class
        assert not weights.requires_grad
        torch.testing.assert_close(weights, loss.proxies.detach())
    else:
        assert weights is None


class Minimal(Loss):
    """A loss that writes only ``forward``: everything else is the base's default."""

    def forward(self, emb: Tensor, labels: Tensor, tuples: Tuples | None = None) -> LossOutput:
        zero = emb.sum() * 0
        return LossOutput(zero, zero[None], all_pairs(labels), zero[None] > 0, zero, zero)


def test_the_base_is_abstract_and_its_defaults_show_nothing() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Loss()

    class NoForward(Loss):
        pass

    class NoTerms(PairLoss):
        pass

    for cls in (NoForward, NoTerms):
        with pytest.raises(TypeError, match="abstract"):
            cls()
    loss = Minimal()
    assert loss.distance_lines() == {}
    assert loss.histogram_lines(np.array([0.3, 0.4])) == {}
    assert loss.extras() == {}
    assert loss.class_weights() is None
    with pytest.raises(CurveUnavailableError, match="The Minimal loss defines no curve"):
        loss.curve(torch.tensor(0.5), torch.tensor(1.0))


class SignedPair(PairLoss):
    """Toy pair loss: a positive pair costs d, a negative pair -3 d (signs tell them apart)."""

    def pair_terms(self, d: Tensor, positive: bool) -> Tensor:
        return d if positive else -3 * d


class SignedTriplet(TripletLossBase):
    """Toy triplet loss: d(a,p) - 3 d(a,n)."""

    def triplet_terms(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        return d_ap - 3 * d_an


def test_family_curves_put_the_positive_distance_in_the_positive_slot() -> None:
    d_ap = torch.tensor([0.1, 0.5, 1.9])
    d_an = torch.tensor([[1.0], [0.2]])  # (2, 1): broadcast to (2, 3)
    expected = d_ap - 3 * d_an
    torch.testing.assert_close(SignedPair().curve(d_ap, d_an), expected)
    torch.testing.assert_close(SignedTriplet().curve(d_ap, d_an), expected)


# Sampled positive distances: even count, so the median interpolates (0.2 + 0.4) / 2 = 0.3.
POS = np.array([0.9, 0.1, 0.4, 0.2], dtype=np.float32)


def test_histogram_lines_add_the_relative_margin_at_the_median_positive() -> None:
    triplet = LOSSES.create("triplet", margin=0.35)
    assert triplet.histogram_lines(POS) == pytest.approx({"median d+ + margin": 0.3 + 0.35})
    assert triplet.histogram_lines(torch.from_numpy(POS)) == triplet.histogram_lines(POS)
    assert triplet.histogram_lines(np.array([])) == {}
    # quadruplet's margin is on squared distances: d(a,n)^2 = median^2 + alpha1
    quadruplet = LOSSES.create("quadruplet", alpha1=0.8)
    assert quadruplet.histogram_lines(POS) == pytest.approx(
        {"median d+ + margin": math.sqrt(0.3**2 + 0.8)}
    )
    assert LOSSES.create("triplet_network").histogram_lines(POS) == {}  # no margin
    memory = LOSSES.create("cross_batch_memory", CONTEXT, loss="triplet")
    assert memory.histogram_lines(POS) == pytest.approx({"median d+ + margin": 0.3 + 0.2})
    contrastive = LOSSES.create("contrastive", pos_margin=0.1)
    assert contrastive.histogram_lines(POS) == contrastive.distance_lines()
    margin = LOSSES.create("margin", beta=1.1)
    assert margin.histogram_lines(POS) == pytest.approx(
        {"beta - alpha": 0.9, "beta": 1.1, "beta + alpha": 1.3}
    )
    assert margin.extras() == pytest.approx({"beta": 1.1})


def probes(path: Path) -> list[str]:
    """``hasattr``/``getattr`` calls whose object is a loss (its source names a loss)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"hasattr", "getattr"}
            and node.args
            and "loss" in ast.unparse(node.args[0]).lower()
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_nothing_probes_a_loss_with_hasattr_or_getattr() -> None:
    files = [*sorted((ROOT / "dml_core").rglob("*.py")), *sorted((ROOT / "pages").glob("*.py"))]
    found = [hit for path in files for hit in probes(path)]
    assert not found, "\n".join(found)
