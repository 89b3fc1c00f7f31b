"""Links that carry a page's settings: a URL query <-> settings, teacher locks, lesson presets.

A teacher sends one link; students open exactly that setup (TensorFlow Playground's idea). The
query names are the settings' own names: ``RunConfig`` fields on the Train page
(``steps=123``), ``loss.X`` and ``miner.X`` for the chosen loss's and miner's parameters
(``loss.neg_margin=0.7``). Each value is checked against the range its model declares; a bad one
gives one sentence naming the field and falls back to its default while the others are kept.
``lock=`` and ``hide=`` list settings the page shows disabled or leaves out; ``lesson=KEY``
starts from a lesson's first run (``lesson_catalogue``), which the link's other settings change.

One "Margin α" drives the loss's and the miner's margin (``config.margin_link``), so a link with
``loss.margin`` alone sets both; a ``miner.margin`` that differs opens "Separate miner margin".
Floats are written to 12 significant digits (a slider's 0.7000000000000001 reads 0.7).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dml_core.config import EMBEDDING_DIMS, RunConfig, margin_link
from dml_core.data import DATASETS
from dml_core.errors import ConfigError, validate
from dml_core.registry import LOSSES, MINERS, Entry, Registry
from dml_core.services.lesson_catalogue import LESSONS
from dml_core.services.lessons import lesson_configs

LOCK, HIDE, LESSON = "lock", "hide", "lesson"


@dataclass(frozen=True)
class LinkForm:
    """The settings one page carries in its link.

    Attributes:
        model: declares the plain settings (defaults, limits, ``choices`` hints).
        names: the plain settings, in the order links list them.
        registries: plain settings whose value names a registry entry, and that registry.
        entries: ``entries(values)`` -> {prefix: the entry whose parameters ``prefix.X`` set}.
        param_keys: every ``prefix.X`` a link may name (for ``lock=`` and ``hide=``).
        owner: how messages name the model (``"the run config"``).
        always: settings a link names even at their default.
        keep: other query keys the page owns (Train's ``run``), left alone.
        locks: whether the page honours ``lock=``, ``hide=`` and ``lesson=``.
        param_hint: how messages name the parameters (``"loss.NAME or miner.NAME"``).
    """

    model: type[BaseModel]
    names: tuple[str, ...]
    registries: Mapping[str, Registry]
    entries: Callable[[Mapping[str, Any]], dict[str, Entry]]
    param_keys: frozenset[str]
    owner: str
    always: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    locks: bool = False
    param_hint: str = "PREFIX.NAME parameters"


@dataclass(frozen=True)
class Link:
    """What a link asks for: every plain setting, each entry's parameters, locks and problems.

    ``values`` and ``params`` hold defaults where the link names nothing, so they are complete.
    """

    values: dict[str, Any]
    params: dict[str, dict[str, Any]]
    lock: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())
    used: frozenset[str] = frozenset()


def _param_keys(prefixes: Mapping[str, Registry]) -> frozenset[str]:
    return frozenset(
        f"{prefix}.{name}"
        for prefix, registry in prefixes.items()
        for entry in registry.values()
        for name in entry.params.model_fields
    )


def text(value: Any) -> str:
    """A setting as link text.

    Booleans are ``true``/``false``, floats keep 12 significant digits, lists join by commas.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(f"{value:.12g}"))
    if isinstance(value, list | tuple):
        return ",".join(text(v) for v in value)
    return str(value)


def _number(raw: str) -> Any:
    """``"5"`` -> 5, ``"0.7"`` -> 0.7, anything else unchanged (messages then say ``Got -5``)."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _fallback(message: str, default: Any) -> str:
    """One sentence: the problem, then which default replaces the link's value."""
    return f"{message.rstrip('.')}; the default {text(default)} is used."


def parse_value(model: type[BaseModel], name: str, raw: str, owner: str) -> Any:
    """One link value checked against the field's declared type, range and ``choices``.

    Raises:
        ConfigError: one sentence naming the field and what it accepts.
    """
    value = getattr(validate(model, {name: _number(raw)}, owner), name)
    info = model.model_fields[name]
    hints = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "choices" in hints and value not in hints["choices"]:
        options = ", ".join(text(c) for c in hints["choices"])
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be one of {options}. Got {text(value)}."
        )
    return value


def _name_list(form: LinkForm, key: str, raw: str, problems: list[str]) -> tuple[str, ...]:
    """``lock=loss,miner`` -> ("loss", "miner"); unknown names get a message and are dropped."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    known = set(form.names) | form.param_keys
    for name in names:
        if name not in known:
            problems.append(
                f"The link's '{key}' names '{name}', which is no setting of this page; it "
                f"takes {', '.join(form.names)}, and {form.param_hint}."
            )
    return tuple(dict.fromkeys(n for n in names if n in known))


def read_link(form: LinkForm, query: Mapping[str, str], base: Link | None = None) -> Link:
    """Parse ``query`` for ``form`` on top of ``base`` (defaults when None).

    Every bad value, unknown name or unknown entry is one message in ``problems``; that setting
    keeps its base value and every other setting the link names is still used. Parameters are
    reset to the entry's defaults when the link picks another entry than the base's.
    """
    problems: list[str] = []
    used: set[str] = set()
    defaults = form.model().model_dump()
    values = dict(base.values if base else defaults)
    for name in form.names:
        if name not in query:
            continue
        registry = form.registries.get(name)
        try:
            if registry is not None and isinstance(defaults[name], tuple):  # a comma list
                names = [n.strip() for n in query[name].split(",") if n.strip()]
                values[name] = tuple(registry[n].name for n in names)
            elif registry is not None:
                values[name] = registry[query[name]].name  # ConfigError names the known ones
            else:
                values[name] = parse_value(form.model, name, query[name], form.owner)
            used.add(name)
        except ConfigError as err:
            problems.append(_fallback(str(err), values[name]))
    old = form.entries(base.values) if base else {}
    params = {}
    for prefix, entry in form.entries(values).items():
        same = base is not None and prefix in old and old[prefix].name == entry.name
        params[prefix] = dict(base.params[prefix]) if same else entry.defaults()
        for key in [k for k in query if k.startswith(f"{prefix}.")]:
            name = key.removeprefix(f"{prefix}.")
            if name not in entry.params.model_fields:
                known = ", ".join(entry.params.model_fields) or "none"
                problems.append(
                    f"The link's '{key}' is no parameter of {entry.name}; its parameters are: "
                    f"{known}."
                )
                continue
            try:
                params[prefix][name] = parse_value(entry.params, name, query[key], entry.name)
                used.add(key)
            except ConfigError as err:
                problems.append(_fallback(str(err), params[prefix][name]))
    lock = _name_list(form, LOCK, query.get(LOCK, ""), problems) if form.locks else ()
    hide = _name_list(form, HIDE, query.get(HIDE, ""), problems) if form.locks else ()
    known = {*form.names, *form.keep, LOCK, HIDE, LESSON} | {
        k for p in params for k in query if k.startswith(f"{p}.")
    }
    for key in query:
        if key in known:
            continue
        if key.split(".", 1)[0] in form.entries(values) or key in form.param_keys:
            continue  # a parameter of an entry this link does not pick: harmless
        problems.append(
            f"The link's '{key}' is no setting of this page; its settings are: "
            f"{', '.join(form.names)}."
        )
    if not form.locks and any(k in query for k in (LOCK, HIDE, LESSON)):
        problems.append("This page ignores 'lock', 'hide' and 'lesson': the Train page uses them.")
    return Link(values, params, lock, hide, tuple(problems), frozenset(used))


def write_query(
    form: LinkForm,
    values: Mapping[str, Any],
    params: Mapping[str, Mapping[str, Any]],
    lock: Collection[str] = (),
    hide: Collection[str] = (),
    param_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """The query of these settings: what differs from the defaults, then ``lock``, ``hide``.

    ``form.always`` are written even at their default; each entry's parameters follow the
    setting that picks it.
    """
    defaults = form.model().model_dump()
    entries = form.entries(values)
    query: dict[str, str] = {}
    for name in form.names:
        if name in form.always or text(values[name]) != text(defaults[name]):
            query[name] = text(values[name])
        for prefix, entry in entries.items():
            if _picked_by(form, prefix) != name:
                continue
            own = (param_defaults or {}).get(prefix) or entry.defaults()
            for key, value in params.get(prefix, {}).items():
                if key in own and text(value) != text(own[key]):
                    query[f"{prefix}.{key}"] = text(value)
    if lock:
        query[LOCK] = ",".join(lock)
    if hide:
        query[HIDE] = ",".join(hide)
    return query


def _picked_by(form: LinkForm, prefix: str) -> str:
    """The plain setting after which a prefix's parameters are written."""
    return prefix if prefix in form.names else form.names[-1]


# ------------------------------------------------------------------ the Train page

TRAIN_NAMES = tuple(n for n in RunConfig.model_fields if not n.endswith("_params"))
TRAIN = LinkForm(
    model=RunConfig,
    names=TRAIN_NAMES,
    registries={"loss": LOSSES, "miner": MINERS},
    entries=lambda v: {"loss": LOSSES[v["loss"]], "miner": MINERS[v["miner"]]},
    param_keys=_param_keys({"loss": LOSSES, "miner": MINERS}),
    owner="the run config",
    always=("dataset", "loss", "miner"),
    keep=("run",),
    locks=True,
    param_hint="loss.NAME or miner.NAME for a parameter",
)


def _train_link(values: Mapping[str, Any]) -> Link:
    """A Link of the Train form from RunConfig-style values.

    A parameter ``loss_params`` or ``miner_params`` leaves out has its default.
    """
    plain = {n: values[n] for n in TRAIN_NAMES}
    params = {
        prefix: registry[values[prefix]].defaults() | dict(values[f"{prefix}_params"])
        for prefix, registry in (("loss", LOSSES), ("miner", MINERS))
    }
    return Link(plain, params)


def _is_linked(values: Mapping[str, Any], params: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether one "Margin α" drives both margins of these settings."""
    link = margin_link(values["loss"], values["miner"])
    if link is None:
        return False
    return params["miner"].get("margin") == params["loss"].get(link.loss_field)


def read_train_link(query: Mapping[str, str]) -> Link:
    """The Train page's link: ``values`` are ``make_config`` keyword arguments (every field).

    ``lesson=KEY`` starts from the lesson's first run. With a shared margin
    (``config.margin_link``), the miner's margin follows the loss's unless the link names
    ``miner.margin`` or the lesson keeps them apart. A bad ``miner.margin`` falls back to the
    miner's default, as its message says, not to the loss's margin.
    """
    problems: list[str] = []
    base = None
    if LESSON in query:
        lesson = LESSONS.get(query[LESSON])
        if lesson is None:
            problems.append(
                f"The link's 'lesson' must be one of {', '.join(LESSONS)}. "
                f"Got {query[LESSON]!r}; the default settings are used."
            )
        else:
            cfg = lesson_configs(lesson)[0]
            base = _train_link(cfg.model_dump())
    read = read_link(TRAIN, query, base)
    params = read.params
    link = margin_link(read.values["loss"], read.values["miner"])
    linked = base is None or _is_linked(read.values, base.params)
    if link is not None and linked and "miner.margin" not in query:
        params["miner"]["margin"] = params["loss"][link.loss_field]
    values = read.values | {"loss_params": params["loss"], "miner_params": params["miner"]}
    return Link(values, {}, read.lock, read.hide, (*problems, *read.problems), read.used)


def query_to_settings(query: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """``make_config`` keyword arguments from a Train link, and one message per bad setting."""
    read = read_train_link(query)
    return read.values, list(read.problems)


def settings_to_query(
    settings: RunConfig | Mapping[str, Any], lock: Collection[str] = (), hide: Collection[str] = ()
) -> dict[str, str]:
    """The Train link of a run config (or of the sidebar's values).

    It names dataset, loss and miner, and every other setting that differs from its default;
    a miner margin only when it differs from a shared loss margin.
    """
    values = settings.model_dump() if isinstance(settings, BaseModel) else dict(settings)
    read = _train_link(values)
    param_defaults = {}
    link = margin_link(values["loss"], values["miner"])
    if link is not None:
        miner_defaults = MINERS[values["miner"]].defaults()
        param_defaults["miner"] = miner_defaults | {"margin": read.params["loss"][link.loss_field]}
    return write_query(TRAIN, read.values, read.params, lock, hide, param_defaults)


# ------------------------------------------------------------------ Loss explorer and Miner view

HELD = {
    "distance": {"negative": (0.0, 2.0, 1.0), "positive": (0.0, 2.0, 0.5)},
    "similarity": {"negative": (-1.0, 1.0, 0.5), "positive": (-1.0, 1.0, 0.875)},
}
"""The Loss explorer's held coordinate per axis: (low, high, default)."""


class ExplorerControls(BaseModel):
    """The Loss explorer's controls a link carries; ``None`` held values: the axis's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: str = "triplet"
    compare: bool = False
    loss2: str = "triplet"
    axis: Literal["distance", "similarity"] = "distance"
    held_negative: float | None = Field(None, ge=-1, le=2)
    held_positive: float | None = Field(None, ge=-1, le=2)
    show: Literal["value", "gradient"] = "value"
    normalize: bool = False


EXPLORER = LinkForm(
    model=ExplorerControls,
    names=tuple(ExplorerControls.model_fields),
    registries={"loss": LOSSES, "loss2": LOSSES},
    entries=lambda v: {"loss": LOSSES[v["loss"]], "loss2": LOSSES[v["loss2"]]},
    param_keys=_param_keys({"loss": LOSSES, "loss2": LOSSES}),
    owner="the Loss explorer",
    always=("loss",),
    param_hint="loss.NAME or loss2.NAME for a parameter",
)


def read_explorer_link(query: Mapping[str, str]) -> Link:
    """The Loss explorer's link; the second loss is the first unless named.

    Each held coordinate must lie in its axis's range (``HELD``).
    """
    if "loss2" not in query and "loss" in query:
        query = {**query, "loss2": query["loss"]}
    read = read_link(EXPLORER, query)
    values, problems = dict(read.values), list(dict.fromkeys(read.problems))
    for which in ("negative", "positive"):
        held = values[f"held_{which}"]
        low, high, _ = HELD[values["axis"]][which]
        if held is not None and not low <= held <= high:
            problems.append(
                f"The 'held_{which}' parameter of the Loss explorer must be in [{low:g}, "
                f"{high:g}] on the {values['axis']} axis. Got {held:g}; the default is used."
            )
            values[f"held_{which}"] = None
    return Link(values, read.params, problems=tuple(problems), used=read.used)


def explorer_query(values: Mapping[str, Any], params: Mapping[str, Mapping[str, Any]]) -> dict:
    """The Loss explorer's link of its controls (the second loss only while comparing)."""
    shown = dict(values)
    for which in ("negative", "positive"):
        if shown[f"held_{which}"] == HELD[shown["axis"]][which][2]:
            shown[f"held_{which}"] = None
    if not shown["compare"]:
        shown["loss2"] = ExplorerControls().loss2
        return write_query(EXPLORER, shown, {"loss": params["loss"]})
    return write_query(replace(EXPLORER, always=("loss", "loss2")), shown, params)


class MinerViewControls(BaseModel):
    """The Miner view's controls a link carries; ``run`` names a saved run's net."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str | None = None
    net: Literal["mlp", "convnet"] = Field("mlp", title="Architecture")
    dim: int = Field(
        32, ge=2, le=512, title="Embedding dim", json_schema_extra={"choices": EMBEDDING_DIMS}
    )
    dataset: Literal[DATASETS] = Field("digits", title="Dataset")  # type: ignore[valid-type]
    P: int = Field(6, ge=1, le=16, title="P classes")
    K: int = Field(8, ge=1, le=64, title="K per class")
    seed: int = Field(0, ge=0, le=2**31 - 1, title="Seed")
    margin: float = Field(0.2, ge=0.01, le=2, title="Margin α")
    anchor: int = Field(0, ge=0, le=16 * 64 - 1, title="Anchor (batch index)")
    miners: tuple[str, ...] = Field(default_factory=lambda: tuple(MINERS), title="Miners")


def _own_params(name: str) -> bool:
    """Whether a miner has parameters besides the margin (the Miner view's slider sets that)."""
    return set(MINERS[name].params.model_fields) - {"margin"} != set()


MINER_VIEW = LinkForm(
    model=MinerViewControls,
    names=tuple(MinerViewControls.model_fields),
    registries={"miners": MINERS},
    entries=lambda v: {m: MINERS[m] for m in v["miners"] if _own_params(m)},
    param_keys=frozenset(f"{m}.{p}" for m, e in MINERS.items() for p in e.params.model_fields),
    owner="the Miner view",
    param_hint="MINER.NAME for a miner's parameter",
)
