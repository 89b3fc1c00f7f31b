"""The run configuration: the one place where input is checked.

``RunConfig`` is a frozen pydantic model with reasoned defaults (digits, an MLP, triplet loss
with semi-hard mining: a run that trains in seconds on a laptop CPU). ``make_config`` builds it
from untrusted values and raises :class:`~dml_core.errors.ConfigError` with one sentence naming
the field, the value and what would work. ``check_against_dataset`` adds the checks that need
the loaded data (classes and class sizes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dml_core import budgets
from dml_core.config_data import CLASS_LEVEL_HINT as CLASS_LEVEL_HINT
from dml_core.config_data import (
    check_data_settings,
    check_user_dataset,
    dataset_value,
    fit_to_data,
    is_builtin,
)
from dml_core.config_data import check_views as check_views
from dml_core.config_text import describe_config as describe_config
from dml_core.config_text import differing_labels as differing_labels
from dml_core.config_text import flat_settings as flat_settings
from dml_core.config_text import params_text as params_text
from dml_core.config_text import views_text as views_text
from dml_core.config_text import widget_values as widget_values
from dml_core.data import DATASETS, OPEN_SET_TRAIN_CLASSES, Dataset, load_for_config
from dml_core.errors import ConfigError, field_bounds, validate
from dml_core.registry import LOSSES, MINERS, Entry
from dml_core.user_data import COLORS, IMAGE_SIZES

CLASSES_PER_DATASET = 10


EMBEDDING_DIMS = (2, 3, 4, 8, 16, 32, 64, 128, 256, 512)
"""The embedding dimensions offered in the app (any D in [2, 512] is valid)."""

SECTIONS = ("data", "batch", "more", "views", "your_data")
"""Groups of run settings, in the order the Train sidebar shows them (loss and miner between;
``views``, the augmentation strengths, only when ``supervision`` is ``views``; ``your_data``,
how a user's images are read, drawn by ``pages/your_data.py`` beside its path input)."""


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
    """A built-in name (the Literal: the page's picker and the CLI help list them) or the path
    of a user's image folder or feature table, admitted by :meth:`_dataset_or_path`."""
    split: Literal["standard", "open-set"] = Field(
        "standard",
        title="Split",
        description="open-set: train on classes 0-5, retrieve unseen classes 6-9",
        json_schema_extra=_ui("data", horizontal=True),
    )
    supervision: Literal["labels", "views"] = Field(
        "labels",
        title="Supervision",
        description="labels: positives share a class; views (label-free, SimCLR): positives "
        "are two augmented views of one image, and labels only colour and evaluate",
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
    image_size: Literal[IMAGE_SIZES] = Field(  # type: ignore[valid-type]
        28,
        title="Image size",
        description="your images are centre-cropped to a square and resized to this side",
        json_schema_extra=_ui("your_data", horizontal=True),
    )
    color: Literal[COLORS] = Field(  # type: ignore[valid-type]
        "gray",
        title="Colour",
        description="read your images as grayscale (1 channel) or RGB (3 channels)",
        json_schema_extra=_ui("your_data", horizontal=True),
    )
    skip_bad_files: bool = Field(
        False,
        title="Skip unreadable images",
        description="skip (and count) images that cannot be decoded instead of refusing the folder",
        json_schema_extra=_ui("your_data"),
    )
    crop_scale: float = Field(
        0.5,
        gt=0,
        le=1,
        title="Crop area (min)",
        description="random resized crop: each view keeps a random part of the image with an "
        "area fraction in [this, 1], resized to full size (SimCLR: 0.08)",
        json_schema_extra=_ui("views"),
    )
    rotation: float = Field(
        15.0,
        ge=0,
        le=90,
        title="Rotation (degrees)",
        description="each view is rotated by a random angle in [-this, this] degrees",
        json_schema_extra=_ui("views"),
    )
    translate: float = Field(
        0.1,
        ge=0,
        le=0.5,
        title="Shift (image fraction)",
        description="each view is shifted by up to this fraction of the image side, each axis",
        json_schema_extra=_ui("views"),
    )
    noise: float = Field(
        0.05,
        ge=0,
        le=1,
        title="Pixel noise",
        description="standard deviation of the Gaussian noise added to each pixel, as a "
        "fraction of the pixel range",
        json_schema_extra=_ui("views"),
    )

    @field_validator("dataset", mode="plain")
    @classmethod
    def _dataset_or_path(cls, value: Any) -> str:
        """A built-in name, an existing data path (made absolute), or a saved run's path.

        A saved run holds an absolute path, taken as it is: the run still opens when its data
        has moved (loading the data then says the path does not exist). ``make_config`` checks
        a new run's path.
        """
        if isinstance(value, str) and Path(value).is_absolute() and not is_builtin(value):
            return value
        try:
            return dataset_value(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    @property
    def batch_size(self) -> int:
        """P * K."""
        return self.classes_per_batch * self.samples_per_class

    @property
    def images_per_batch(self) -> int:
        """Training images a batch is made from: P * K, or P * K / 2 with two views of each."""
        return self.batch_size // 2 if self.supervision == "views" else self.batch_size

    @property
    def loss_entry(self) -> Entry:
        """The registry entry of the loss."""
        return LOSSES[self.loss]

    @property
    def miner_entry(self) -> Entry:
        """The registry entry of the miner."""
        return MINERS[self.miner]


def train_class_count(dataset: str, split: str) -> int:
    """How many classes the training part of a split has (all built-in datasets have 10)."""
    return len(OPEN_SET_TRAIN_CLASSES) if split == "open-set" else CLASSES_PER_DATASET


def make_config(**values: Any) -> RunConfig:
    """Build a RunConfig from untrusted values; every problem is a one-sentence ConfigError.

    A user's path is checked for existence and kind only; its data is read by
    :func:`config_for_data`, which also adapts P and K that were not given.
    """
    if "dataset" in values:
        values = {**values, "dataset": dataset_value(values["dataset"])}
    cfg: RunConfig = validate(RunConfig, values, "the run config")
    check_data_settings(cfg)
    loss_params = dict(cfg.loss_entry.validate(**cfg.loss_params).model_dump())
    miner_params = dict(cfg.miner_entry.validate(**cfg.miner_params).model_dump())
    if cfg.supervision == "views":
        check_views(cfg, loss_params)
        return cfg.model_copy(update={"loss_params": loss_params, "miner_params": miner_params})
    classes = train_class_count(cfg.dataset, cfg.split)
    if is_builtin(cfg.dataset) and cfg.classes_per_batch > classes:
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

    The batch must be fillable without repeating samples (with ``views``: P x K / 2 distinct
    images), and its mining must fit in memory. A user's data is checked first by
    ``config_data.check_user_dataset`` (its messages name the class and a K that works).
    """
    if not is_builtin(cfg.dataset):
        check_user_dataset(cfg, dataset)
    if cfg.supervision == "views":
        if cfg.images_per_batch > len(dataset.train):
            raise ConfigError(
                f"With 'supervision' = 'views' a batch draws P x K / 2 = "
                f"{cfg.images_per_batch} distinct images, more than the {len(dataset.train)} "
                f"training images of {dataset.name} ({cfg.split}): lower P or K."
            )
        check_budget(cfg)
        return
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


def config_for_data(cfg: RunConfig) -> tuple[RunConfig, Dataset]:
    """Load the run's data, adapt the P and K not given to it, and check the config against it.

    What every new run goes through before its run directory exists (CLI and Train page).

    Returns:
        the config to run (``config_data.fit_to_data``) and the loaded dataset.

    Raises:
        DatasetError: the data cannot be loaded or cannot fill a batch (one sentence).
        ConfigError: the settings do not fit the data.
    """
    dataset = load_for_config(cfg)
    cfg = fit_to_data(cfg, dataset)
    check_against_dataset(cfg, dataset)
    return cfg, dataset


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
