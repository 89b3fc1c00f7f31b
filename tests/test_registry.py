import pytest
import torch
from pydantic import BaseModel, Field

import dml_core
from dml_core.errors import ConfigError
from dml_core.registry import KINDS, LOSSES, MINERS, NoParams, Params, Registry


class DemoParams(BaseModel, frozen=True, extra="forbid"):
    margin: float = Field(0.5, gt=0, le=1, description="a margin")


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    reg = Registry("widget")
    reg.register(name="a", params=DemoParams, paper="p", equation="e", kind="pairs")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(name="a", params=DemoParams, paper="p", equation="e", kind="pairs")(object)
    with pytest.raises(ConfigError, match=r"Unknown widget 'b'\. Known widget names: a\."):
        reg["b"]


def test_create_validates_and_passes_context_only_when_accepted() -> None:
    reg = Registry("widget")

    @reg.register(name="w", params=DemoParams, paper="p", equation="e", kind="pairs")
    class Widget:
        def __init__(self, margin: float, num_classes: int = 0) -> None:
            self.margin, self.num_classes = margin, num_classes

    w = reg.create("w", {"num_classes": 7, "embedding_dim": 3}, margin=0.25)
    assert (w.margin, w.num_classes) == (0.25, 7)
    with pytest.raises(
        ConfigError, match=r"The 'margin' parameter of w must be in \(0, 1\]. Got 2."
    ):
        reg.create("w", margin=2)


ISSUE_LOSSES = [
    "contrastive", "binomial_deviance", "triplet", "triplet_network", "quadruplet",
    "lifted_structure", "n_pair", "histogram", "margin", "multi_similarity", "circle",
    "normalized_softmax", "proxy_nca", "proxy_anchor", "cross_batch_memory",
]  # fmt: skip
ISSUE_MINERS = [
    "all", "random", "hard", "semi_hard", "batch_hard", "distance_weighted", "multi_similarity"
]  # fmt: skip


def test_every_method_of_the_library_is_registered() -> None:
    assert set(ISSUE_LOSSES) <= set(LOSSES)
    assert set(ISSUE_MINERS) <= set(MINERS)


@pytest.mark.parametrize("entry", [*LOSSES.values(), *MINERS.values()], ids=lambda e: e.name)
def test_every_entry_documents_itself(entry: dml_core.Entry) -> None:
    assert entry.summary
    assert entry.paper
    assert entry.equation
    assert entry.kind in ("pairs", "triplets", "classes")
    for name, field in entry.params.model_fields.items():
        assert field.description, f"{entry.name}.{name} has no description"
    entry.validate(**entry.defaults())


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_trains_a_step_with_defaults(name: str) -> None:
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    labels = torch.arange(4).repeat_interleave(4)
    loss = LOSSES.create(name, {"num_classes": 4, "embedding_dim": 8})
    out = loss(emb, labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0


def test_membership_and_get_answer_instead_of_raising() -> None:
    assert "unknown" not in LOSSES
    assert "triplet" in LOSSES
    assert 3 not in MINERS
    assert LOSSES.get("unknown") is None
    assert LOSSES.get("unknown", "fallback") == "fallback"
    assert LOSSES.get("triplet") is LOSSES["triplet"]
    with pytest.raises(ConfigError, match="Unknown loss 'unknown'"):
        LOSSES["unknown"]


def test_kind_is_checked_at_registration() -> None:
    reg = Registry("widget")
    with pytest.raises(ValueError, match=r"'kind' of w must be one of .*Got 'pair'"):
        reg.register(name="w", params=DemoParams, paper="p", equation="e", kind="pair")(object)
    assert "w" not in reg
    assert set(KINDS) == {"pairs", "triplets", "classes"}


def test_one_params_base_and_one_name_per_parameter_model() -> None:
    models = {entry.params for entry in [*LOSSES.values(), *MINERS.values()]}
    assert all(issubclass(model, Params) for model in models)
    assert dml_core.losses.Params is Params
    assert LOSSES["n_pair"].params is MINERS["all"].params is NoParams
    by_name: dict[str, set[type]] = {}
    for model in models:
        by_name.setdefault(model.__name__, set()).add(model)
    assert {k: v for k, v in by_name.items() if len(v) > 1} == {}
