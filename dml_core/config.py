"""The run configuration: the one place where input is checked.

``RunConfig`` is a frozen pydantic model with reasoned defaults (digits, an MLP, triplet loss
with semi-hard mining: a run that trains in seconds on a laptop CPU). ``make_config`` builds it
from untrusted values and raises :class:`~dml_core.errors.ConfigError` with one sentence naming
the field, the value and what would work. ``check_against_dataset`` adds the checks that need
the loaded data (classes and class sizes).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dml_core.data import DATASETS, OPEN_SET_TRAIN_CLASSES, Dataset
from dml_core.errors import ConfigError, validate
from dml_core.registry import LOSSES, MINERS, Entry

CLASSES_PER_DATASET = 10


class RunConfig(BaseModel):
    """Everything that defines a training run (and nothing that doesn't)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Literal[DATASETS] = Field("digits", description="the images to embed")  # type: ignore[valid-type]
    split: Literal["standard", "open-set"] = Field(
        "standard", description="open-set: train on classes 0-5, retrieve unseen classes 6-9"
    )
    net: Literal["mlp", "convnet"] = Field("mlp", description="the embedding network")
    embedding_dim: int = Field(32, ge=2, le=512, description="D, the embedding dimension")
    normalize: bool = Field(True, description="L2-normalise embeddings onto the unit sphere")
    loss: str = Field("triplet", description="registry name of the loss")
    loss_params: dict[str, Any] = Field(default_factory=dict)
    miner: str = Field("semi_hard", description="registry name of the miner")
    miner_params: dict[str, Any] = Field(default_factory=dict)
    classes_per_batch: int = Field(6, ge=2, le=10, description="P, classes in each batch")
    samples_per_class: int = Field(16, ge=1, le=512, description="K, samples of each class")
    lr: float = Field(1e-3, gt=0, le=10, description="Adam learning rate")
    steps: int = Field(300, ge=1, le=1_000_000, description="optimiser steps")
    snapshot_every: int = Field(
        50,
        ge=1,
        le=100_000,
        description="steps between snapshots (each embeds and measures the probe set)",
    )
    probe_size: int = Field(2000, ge=50, le=10_000, description="points in the live views")
    final_eval: bool = Field(True, description="full test-vs-train retrieval at the end")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of weights, batches, mining")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")

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


def check_against_dataset(cfg: RunConfig, dataset: Dataset) -> None:
    """Checks that need the data: the batch must be fillable without repeating samples."""
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


def apply_margin(cfg_values: dict[str, Any], margin: float) -> dict[str, Any]:
    """Set one margin on the loss and, unless given separately, on the miner.

    The loss's margin is its ``margin`` field, else ``neg_margin``. Users are confused when the
    loss and miner margins differ silently (pytorch-metric-learning issue #466), so ``--margin``
    sets both unless ``miner_params`` already names one.
    """
    values = dict(cfg_values)
    loss_name = values.get("loss", RunConfig.model_fields["loss"].default)
    miner_name = values.get("miner", RunConfig.model_fields["miner"].default)
    loss_fields = LOSSES[loss_name].params.model_fields
    field = next((f for f in ("margin", "neg_margin") if f in loss_fields), None)
    if field is None:
        raise ConfigError(
            f"The {loss_name} loss has no margin; its parameters are: "
            f"{', '.join(loss_fields) or 'none'}. Use --loss-param NAME=VALUE."
        )
    values["loss_params"] = {**values.get("loss_params", {}), field: margin}
    miner_params = dict(values.get("miner_params", {}))
    if "margin" in MINERS[miner_name].params.model_fields:
        miner_params.setdefault("margin", margin)
    values["miner_params"] = miner_params
    return values
