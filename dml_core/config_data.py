"""Run settings that depend on the data: a user's path, its image settings, P, K, the net.

``RunConfig.dataset`` is a built-in name or the path of a user's image folder or feature
table (issue 17). What can be said from the path alone is checked with the other settings
(:func:`dataset_value`, :func:`check_data_settings`); what needs the data is checked once it
is loaded, before a run directory exists (:func:`check_user_dataset`). P, K and the net that
the user did not give adapt to the data (:func:`fit_to_data`): P = min(6, classes), K =
min(16, smallest class), the ConvNet for images and the MLP for a table, so ``--dataset PATH``
alone works; an explicit P or K the data cannot fill is refused by
``user_data.check_user_data`` with a K that works. :func:`check_views` says what label-free
training (``supervision = views``) refuses.
"""

from __future__ import annotations

from typing import Any

from dml_core.data import DATASETS, Dataset
from dml_core.errors import ConfigError
from dml_core.user_data import (
    DATA_SUFFIXES,
    check_user_data,
    data_path_problem,
    default_batch,
    is_table,
)
from dml_core.user_data.for_runs import absolute_data_path, is_table_path

IMAGE_SETTINGS = ("image_size", "color")
"""Fields that say how a user's images are read; a built-in dataset has its own."""
BATCH_FIELDS = ("classes_per_batch", "samples_per_class")


def is_builtin(dataset: str) -> bool:
    """Whether ``dataset`` names a built-in dataset rather than a user's path."""
    return dataset in DATASETS


def _dataset_sentence(problem: str) -> str:
    names = ", ".join(repr(d) for d in DATASETS)
    suffixes = ", ".join(DATA_SUFFIXES[:-1]) + f" or {DATA_SUFFIXES[-1]}"
    return (
        f"The 'dataset' parameter of the run config must be one of {names} or the path of an "
        f"image folder or a {suffixes} file; {problem}."
    )


def dataset_value(value: Any) -> str:
    """A valid ``dataset`` value: a built-in name as it is, a user's path made absolute.

    Raises:
        ConfigError: neither a built-in name nor an existing folder or data file (one sentence
            naming what is wrong and what works).
    """
    if isinstance(value, str) and is_builtin(value):
        return value
    if (problem := data_path_problem(value)) is not None:
        raise ConfigError(_dataset_sentence(problem))
    return absolute_data_path(value)


def check_data_settings(cfg: Any) -> None:
    """What the config's data settings refuse before any data is read.

    An image size or colour other than the default only applies to a user's images; a
    feature table (known by its suffix) trains an MLP on its vectors with labels.

    Raises:
        ConfigError: one sentence naming the field and what works.
    """
    fields = type(cfg).model_fields
    if is_builtin(cfg.dataset):
        for name in IMAGE_SETTINGS:
            if getattr(cfg, name) != fields[name].default:
                raise ConfigError(
                    f"The '{name}' parameter applies only to your own image folder; the "
                    f"{cfg.dataset} images have their own, so leave it at "
                    f"{fields[name].default!r}. Got {getattr(cfg, name)!r}."
                )
        return
    if is_table_path(cfg.dataset):
        check_table_settings(cfg)


def check_table_settings(cfg: Any) -> None:
    """Refuse a ConvNet or label-free views on a feature table (one sentence each)."""
    if cfg.supervision == "views":
        raise ConfigError(
            f"The 'supervision' parameter must be 'labels' for the feature table "
            f"{cfg.dataset}: views are augmented images, and a table holds vectors."
        )
    if cfg.net != "mlp":
        raise ConfigError(
            f"The 'net' parameter must be 'mlp' for the feature table {cfg.dataset}: a "
            f"ConvNet needs images, and a table's rows are feature vectors."
        )


def fit_to_data(cfg: Any, dataset: Dataset) -> Any:
    """``cfg`` with the settings the user did not give adapted to a user's data.

    - P = min(6, training classes), K = min(16, smallest training class)
      (``user_data.default_batch``), with labels (with views P x K only sizes the batch);
    - the net: the ConvNet for images (shapes anywhere in the picture: on the issue's noisy
      shapes an MLP reaches P@1 0.85 in 300 steps, the ConvNet 0.94), the MLP for a table.

    A value the user gave (in ``cfg.model_fields_set``) is kept, and checked by
    :func:`check_user_dataset`. Built-in data keep the config as it is.
    """
    if is_builtin(cfg.dataset):
        return cfg
    fitted: dict[str, Any] = {"net": "mlp" if is_table(dataset) else "convnet"}
    if cfg.supervision == "labels":
        fitted |= dict(zip(BATCH_FIELDS, default_batch(dataset), strict=True))
    given = cfg.model_fields_set
    update = {k: v for k, v in fitted.items() if k not in given and getattr(cfg, k) != v}
    return cfg.model_copy(update=update) if update else cfg


def check_user_dataset(cfg: Any, dataset: Dataset) -> None:
    """The checks a user's loaded data needs: table settings, then P x K (with labels).

    Raises:
        ConfigError: a ConvNet or views on a table (a ``.zip`` is known as one only here).
        DatasetError: fewer than 2 classes, P above the classes, a class smaller than K
            (``user_data.check_user_data``: the class is named, with a K that works).
    """
    if is_table(dataset):
        check_table_settings(cfg)
    if cfg.supervision == "labels":
        pairs = cfg.loss_entry.kind != "classes"  # K = 1 leaves a pair loss no positive
        k = max(cfg.samples_per_class, 2 if pairs else 1)
        check_user_data(dataset, cfg.classes_per_batch, k)


CLASS_LEVEL_HINT = "per_class"
"""A loss parameter whose field declares ``json_schema_extra={"per_class": True}`` makes the
loss learn something per class when true (the margin loss's ``per_class_beta``)."""


def check_views(cfg: Any, loss_params: dict[str, Any]) -> None:
    """Refuse, in one sentence, what label-free (``views``) training cannot do.

    Each batch holds P * K / 2 images x 2 views, whose labels are image ids: a loss that
    learns one weight per class (``Entry.kind == "classes"``, or a parameter declared
    per-class and switched on) has no classes to learn, and the views must pair up.
    """
    entry = cfg.loss_entry
    if entry.kind == "classes":
        raise ConfigError(
            f"The {cfg.loss} loss learns one weight per class, so it needs 'supervision' = "
            "'labels'; with 'views' use a pair or triplet loss such as ntxent."
        )
    for name, field in entry.params.model_fields.items():
        hints = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if hints.get(CLASS_LEVEL_HINT) and loss_params.get(name):
            raise ConfigError(
                f"The '{name}' parameter of {cfg.loss} learns a value per class, so it must be "
                "off with 'supervision' = 'views' (no classes). Got True."
            )
    if cfg.batch_size % 2:
        raise ConfigError(
            "With 'supervision' = 'views' a batch is P x K / 2 images x 2 views, so "
            "'classes_per_batch' (P) x 'samples_per_class' (K) must be even. "
            f"Got {cfg.classes_per_batch} x {cfg.samples_per_class}."
        )
