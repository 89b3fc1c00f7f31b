"""Run settings as text: one-line descriptions, names of runs by how they differ, widget keys.

Moved out of ``config`` (which re-exports every name, so ``dml_core.config.describe_config``
keeps working); nothing here validates. Functions take the ``RunConfig`` they describe and read
its field order from it, so this module does not import ``config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dml_core.config import RunConfig


def params_text(params: dict[str, Any]) -> str:
    """``{"margin": 0.1, "soft": False}`` -> ``"margin=0.1, soft=False"``."""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def views_text(cfg: RunConfig) -> str:
    """The label-free setting in words: ``"label-free: 2 views (crop >= 0.5, ...)"``."""
    return (
        f"label-free: 2 views (crop area >= {cfg.crop_scale:g}, rotation <= {cfg.rotation:g}°, "
        f"shift <= {cfg.translate:g}, noise {cfg.noise:g})"
    )


def describe_config(cfg: RunConfig) -> str:
    """A run's settings in one line: data, net, D, sphere, loss, miner, batch, optimiser, seed."""
    sphere = "unit sphere" if cfg.normalize else "not normalised"
    return " · ".join(
        [
            f"{cfg.dataset} ({cfg.split})",
            f"{cfg.net}, D = {cfg.embedding_dim}, {sphere}",
            *([views_text(cfg)] if cfg.supervision == "views" else []),
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
    fields = list(type(next(iter(configs.values()))).model_fields) if configs else []
    keys = sorted(
        {k for flat in flats.values() for k in flat}, key=lambda k: _setting_order(k, fields)
    )
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


def _setting_order(key: str, fields: list[str]) -> tuple[int, str]:
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
