"""The run configuration: the one place where input is checked.

``RunConfig`` is a frozen pydantic model with reasoned defaults (digits, an MLP, triplet loss
with semi-hard mining: a run that trains in seconds on a laptop CPU). ``make_config`` builds it
from untrusted values and raises :class:`~dml_core.errors.ConfigError` with one sentence naming
the field, the value and what would work. ``check_against_dataset`` adds the checks that need
the loaded data (classes and class sizes).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from dml_core import budgets
from dml_core.data import DATASETS, OPEN_SET_TRAIN_CLASSES, Dataset
from dml_core.errors import ConfigError, field_bounds, validate
from dml_core.registry import LOSSES, MINERS, Entry

CLASSES_PER_DATASET = 10


EMBEDDING_DIMS = (2, 3, 4, 8, 16, 32, 64, 128, 256, 512)
"""The embedding dimensions offered in the app (any D in [2, 512] is valid)."""

SECTIONS = ("data", "batch", "more")
"""Groups of run settings, in the order the Train sidebar shows them (loss and miner between)."""


def _ui(section: str, **hints: Any) -> dict[str, Any]:
    """Display hints of a field: its sidebar section and widget choices (no limits: pydantic)."""
    return {"section": section, **hints}


class RunConfig(BaseModel):
    """Everything that defines a training run (and nothing that doesn't).

    Each field declares its label (``title``), limits and help; ``json_schema_extra`` says where
    the Train sidebar shows it, so the page generates its widgets and retypes no bounds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Literal[DATASETS] = Field(  # type: ignore[valid-type]
        "digits", title="Dataset", description="the images to embed", json_schema_extra=_ui("data")
    )
    split: Literal["standard", "open-set"] = Field(
        "standard",
        title="Split",
        description="open-set: train on classes 0-5, retrieve unseen classes 6-9",
        json_schema_extra=_ui("data", horizontal=True),
    )
    net: Literal["mlp", "convnet"] = Field(
        "mlp",
        title="Net",
        description="the embedding network",
        json_schema_extra=_ui("data", horizontal=True),
    )
    embedding_dim: int = Field(
        32,
        ge=2,
        le=512,
        title="Embedding dim",
        description="D, the embedding dimension",
        json_schema_extra=_ui("data", choices=EMBEDDING_DIMS),
    )
    normalize: bool = Field(
        True,
        title="L2-normalise (unit sphere)",
        description="L2-normalise embeddings onto the unit sphere",
        json_schema_extra=_ui("data"),
    )
    loss: str = Field("triplet", title="Loss", description="registry name of the loss")
    loss_params: dict[str, Any] = Field(default_factory=dict)
    miner: str = Field("semi_hard", title="Miner", description="registry name of the miner")
    miner_params: dict[str, Any] = Field(default_factory=dict)
    classes_per_batch: int = Field(
        6,
        ge=2,
        le=10,
        title="P classes",
        description="P, classes in each batch",
        json_schema_extra=_ui("batch", column=0),
    )
    samples_per_class: int = Field(
        16,
        ge=1,
        le=512,
        title="K per class",
        description="K, samples of each class",
        json_schema_extra=_ui("batch", column=1),
    )
    lr: float = Field(
        1e-3,
        gt=0,
        le=10,
        title="Learning rate",
        description="Adam learning rate",
        json_schema_extra=_ui("batch", widget="number", step=1e-4),
    )
    steps: int = Field(
        300,
        ge=1,
        le=1_000_000,
        title="Steps",
        description="optimiser steps",
        json_schema_extra=_ui("batch", step=50),
    )
    snapshot_every: int = Field(
        50,
        ge=1,
        le=100_000,
        title="Snapshot every (steps)",
        description="steps between snapshots (each embeds and measures the probe set)",
        json_schema_extra=_ui("more"),
    )
    probe_size: int = Field(
        2000,
        ge=50,
        le=10_000,
        title="Probe points",
        description="test images shown in the live views",
        json_schema_extra=_ui("more", step=100),
    )
    final_eval: bool = Field(
        True,
        title="Final evaluation",
        description="full test-vs-train retrieval at the end",
        json_schema_extra=_ui("more"),
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        title="Seed",
        description="seed of weights, batches, mining",
        json_schema_extra=_ui("more"),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        title="Device",
        description="where to train",
        json_schema_extra=_ui("more", horizontal=True),
    )

    @property
    def batch_size(self) -> int:
        """P * K."""
        return self.classes_per_batch * self.samples_per_class

    @property
    def loss_entry(self) -> Entry:
        """The registry entry of the loss."""
        return LOSSES[self.loss]

    @property
    def miner_entry(self) -> Entry:
        """The registry entry of the miner."""
        return MINERS[self.miner]


def train_class_count(dataset: str, split: str) -> int:
    """How many classes the training part of a split has (all datasets have 10)."""
    return len(OPEN_SET_TRAIN_CLASSES) if split == "open-set" else CLASSES_PER_DATASET


def make_config(**values: Any) -> RunConfig:
    """Build a RunConfig from untrusted values; every problem is a one-sentence ConfigError."""
    cfg: RunConfig = validate(RunConfig, values, "the run config")
    loss_params = dict(cfg.loss_entry.validate(**cfg.loss_params).model_dump())
    miner_params = dict(cfg.miner_entry.validate(**cfg.miner_params).model_dump())
    classes = train_class_count(cfg.dataset, cfg.split)
    if cfg.classes_per_batch > classes:
        raise ConfigError(
            f"The 'classes_per_batch' (P) parameter must be at most {classes}: the {cfg.split} "
            f"split of {cfg.dataset} trains on {classes} classes. Got {cfg.classes_per_batch}."
        )
    if cfg.samples_per_class < 2 and cfg.loss_entry.kind != "classes":
        raise ConfigError(
            f"The 'samples_per_class' (K) parameter must be at least 2 for the {cfg.loss} loss: "
            f"with K = 1 a batch has no positive pairs. Got {cfg.samples_per_class}."
        )
    return cfg.model_copy(update={"loss_params": loss_params, "miner_params": miner_params})


TRAINING_MEMORY = 4 * budgets.GB
"""What one training job may hold for mining a batch (two jobs run at once on a CPU server)."""


def check_budget(cfg: RunConfig) -> None:
    """Refuse, in one sentence, a run whose batches or probe set would not fit in memory.

    A miner that enumerates every triplet (``Miner.enumerates_triplets``), or a triplet loss fed
    all pairs (joined into every triplet by ``to_triplets``), holds ~B^3 / P triplets per step:
    P = 10, K = 128 would need tens of GB and take the server down with every other job.
    """
    miner_class = cfg.miner_entry.build
    joined = cfg.loss_entry.kind == "triplets" and cfg.miner_entry.kind == "pairs"
    sizes = {"P": cfg.classes_per_batch, "K": cfg.samples_per_class, "dim": cfg.embedding_dim}
    if miner_class.enumerates_triplets or joined:
        budgets.check("batch", memory=TRAINING_MEMORY, **sizes)
    budgets.check("probe_size", probe_size=cfg.probe_size, dim=cfg.embedding_dim)


def check_against_dataset(cfg: RunConfig, dataset: Dataset) -> None:
    """Checks that need the data, then the memory budget (``check_budget``).

    The batch must be fillable without repeating samples, and its mining must fit in memory.
    """
    counts = dataset.train.y.bincount()
    counts = counts[counts > 0]
    if cfg.classes_per_batch > len(counts):
        raise ConfigError(
            f"The 'classes_per_batch' (P) parameter must be at most {len(counts)} for "
            f"{dataset.name} ({cfg.split}). Got {cfg.classes_per_batch}."
        )
    smallest = int(counts.min())
    if cfg.samples_per_class > smallest:
        raise ConfigError(
            f"The 'samples_per_class' (K) parameter must be at most {smallest}, the size of the "
            f"smallest class of {dataset.name} ({cfg.split}). Got {cfg.samples_per_class}."
        )
    check_budget(cfg)


LOSS_MARGIN_FIELDS = ("margin", "neg_margin")
"""Where a loss keeps its margin α, in order of preference."""
MINER_MARGIN_FIELD = "margin"


def loss_margin_field(loss: str) -> str | None:
    """The name of the loss's margin parameter (``margin``, else ``neg_margin``), or None."""
    fields = LOSSES[loss].params.model_fields
    return next((f for f in LOSS_MARGIN_FIELDS if f in fields), None)


class MarginLink(NamedTuple):
    """One margin α shared by a loss and its miner: the parameters it sets and its range.

    Attributes:
        loss_field: the loss parameter it sets (``margin`` or ``neg_margin``).
        low: the lowest value both accept (exclusive when ``low_open``).
        high: the highest value both accept (inclusive).
        low_open: whether ``low`` itself is excluded.
        default: the loss's default margin.
    """

    loss_field: str
    low: float
    high: float
    low_open: bool
    default: float


def margin_link(loss: str, miner: str) -> MarginLink | None:
    """The shared margin of ``loss`` and ``miner``, or None when one of them has no margin.

    A triplet loss with margin 0.5 mined by a semi-hard miner with margin 0.2 trains exactly like
    margin 0.2 would on the hard cases and differently elsewhere; users rarely mean that
    (pytorch-metric-learning issue #466). So the app and the CLI drive both with one value
    unless the user unlinks them. The range is the intersection of both declared ranges.
    """
    field = loss_margin_field(loss)
    miner_params = MINERS[miner].params
    if field is None or MINER_MARGIN_FIELD not in miner_params.model_fields:
        return None
    loss_params = LOSSES[loss].params
    bounds = [field_bounds(loss_params, field), field_bounds(miner_params, MINER_MARGIN_FIELD)]
    lows = [(b.get("gt", b.get("ge", -math.inf)), "gt" in b) for b in bounds]
    low, low_open = max(lows)
    high = min(b.get("le", b.get("lt", math.inf)) for b in bounds)
    default = float(loss_params.model_fields[field].default)
    return MarginLink(field, float(low), float(high), low_open, default)


def apply_margin(cfg_values: dict[str, Any], margin: float) -> dict[str, Any]:
    """Set one margin on the loss and, unless given separately, on the miner.

    The loss's margin is its ``margin`` field, else ``neg_margin``. Users are confused when the
    loss and miner margins differ silently (pytorch-metric-learning issue #466), so ``--margin``
    sets both unless ``miner_params`` already names one.
    """
    values = dict(cfg_values)
    loss_name = values.get("loss", RunConfig.model_fields["loss"].default)
    miner_name = values.get("miner", RunConfig.model_fields["miner"].default)
    field = loss_margin_field(loss_name)
    if field is None:
        loss_fields = LOSSES[loss_name].params.model_fields
        raise ConfigError(
            f"The {loss_name} loss has no margin; its parameters are: "
            f"{', '.join(loss_fields) or 'none'}. Use --loss-param NAME=VALUE."
        )
    values["loss_params"] = {**values.get("loss_params", {}), field: margin}
    miner_params = dict(values.get("miner_params", {}))
    if MINER_MARGIN_FIELD in MINERS[miner_name].params.model_fields:
        miner_params.setdefault(MINER_MARGIN_FIELD, margin)
    values["miner_params"] = miner_params
    return values


def params_text(params: dict[str, Any]) -> str:
    """``{"margin": 0.1, "soft": False}`` -> ``"margin=0.1, soft=False"``."""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def describe_config(cfg: RunConfig) -> str:
    """A run's settings in one line: data, net, D, sphere, loss, miner, batch, optimiser, seed."""
    sphere = "unit sphere" if cfg.normalize else "not normalised"
    return " · ".join(
        [
            f"{cfg.dataset} ({cfg.split})",
            f"{cfg.net}, D = {cfg.embedding_dim}, {sphere}",
            f"loss {cfg.loss} ({params_text(cfg.loss_params) or 'no parameters'})",
            f"miner {cfg.miner} ({params_text(cfg.miner_params) or 'no parameters'})",
            f"P×K = {cfg.classes_per_batch}×{cfg.samples_per_class}",
            f"lr {cfg.lr:g}",
            f"{cfg.steps} steps",
            f"seed {cfg.seed}",
        ]
    )


def flat_settings(cfg: RunConfig) -> dict[str, Any]:
    """Every setting as one flat mapping: fields, then ``loss.NAME`` and ``miner.NAME``."""
    flat = cfg.model_dump(exclude={"loss_params", "miner_params"})
    flat |= {f"loss.{k}": v for k, v in cfg.loss_params.items()}
    return flat | {f"miner.{k}": v for k, v in cfg.miner_params.items()}


def differing_labels(configs: dict[str, RunConfig]) -> dict[str, str]:
    """Name each run by the settings in which the runs differ: ``{"run-a": "margin = 0.1"}``.

    A setting a run does not have (another loss's parameter) is left out of its name; when the
    loss itself differs, its parameters are named only where they leave the loss's default. A
    miner margin equal to the loss margin is not named twice. Runs with identical settings keep
    their id as their name.
    """
    flats = {run_id: flat_settings(cfg) for run_id, cfg in configs.items()}
    keys = sorted({k for flat in flats.values() for k in flat}, key=_setting_order)
    differing = [k for k in keys if len({repr(flat.get(k)) for flat in flats.values()}) > 1]
    if "miner.margin" in differing and "loss.margin" in differing:
        linked = all(f.get("miner.margin") == f.get("loss.margin") for f in flats.values())
        if linked:
            differing.remove("miner.margin")
    labels = {}
    for run_id, flat in flats.items():
        defaults = {f"loss.{k}": v for k, v in configs[run_id].loss_entry.defaults().items()} | {
            f"miner.{k}": v for k, v in configs[run_id].miner_entry.defaults().items()
        }
        parts = [
            f"{_setting_name(k)} = {_value_text(flat[k])}"
            for k in differing
            if k in flat and not (_owner_differs(k, differing) and flat[k] == defaults.get(k))
        ]
        labels[run_id] = ", ".join(parts) if parts else run_id
    return labels


def _owner_differs(key: str, differing: list[str]) -> bool:
    """Whether ``loss.X`` / ``miner.X`` belongs to a loss / miner that itself differs."""
    owner = key.split(".", 1)[0]
    return "." in key and owner in differing


def _setting_order(key: str) -> tuple[int, str]:
    fields = list(RunConfig.model_fields)
    base = key.split(".", 1)[0]
    return (fields.index(base) if base in fields else fields.index(f"{base}_params"), key)


def _setting_name(key: str) -> str:
    short = {"embedding_dim": "D", "classes_per_batch": "P", "samples_per_class": "K"}
    if key.startswith("loss."):
        return key.removeprefix("loss.")
    if key.startswith("miner."):
        return f"miner {key.removeprefix('miner.')}"
    return short.get(key, key)


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def widget_values(cfg: RunConfig) -> dict[str, Any]:
    """The Train sidebar's widget keys and values that reproduce ``cfg`` ("Load these settings").

    Keys follow the page's convention: ``cfg.FIELD`` for run fields, ``loss.LOSS.PARAM`` and
    ``miner.MINER.PARAM`` for registry parameters.
    """
    values = {f"cfg.{k}": v for k, v in cfg.model_dump().items() if not k.endswith("_params")}
    values |= {f"loss.{cfg.loss}.{k}": v for k, v in cfg.loss_params.items()}
    return values | {f"miner.{cfg.miner}.{k}": v for k, v in cfg.miner_params.items()}
