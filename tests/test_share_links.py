"""Links that carry every setting (share_links): round trips, bad values, locks, lessons.

Each test names the wrong implementation it catches; each was tried once (edit, see it fail,
revert).
"""

from __future__ import annotations

import typing
from urllib.parse import parse_qsl, urlencode

import pytest
from pydantic import BaseModel

from dml_core.config import RunConfig, make_config, margin_link
from dml_core.errors import field_bounds
from dml_core.registry import LOSSES, MINERS
from dml_core.services.lessons import LESSONS, lesson_configs
from dml_core.services.share_links import (
    MINER_VIEW,
    MinerViewControls,
    explorer_query,
    query_to_settings,
    read_explorer_link,
    read_link,
    read_train_link,
    settings_to_query,
    text,
    write_query,
)

EXAMPLE = "dataset=digits&loss=contrastive&loss.neg_margin=0.7&miner=batch_hard&steps=123&seed=7"


def through_url(query: dict[str, str]) -> dict[str, str]:
    """The query as a browser hands it back: encoded into a URL and decoded again."""
    return dict(parse_qsl(urlencode(query, safe=","), keep_blank_values=True))


def non_default(model: type[BaseModel], name: str) -> typing.Any:
    """A valid value other than the default, with 10 significant digits for floats (a writer
    that keeps 6, like ``:g``, loses them)."""
    field = model.model_fields[name]
    default = field.default
    if field.annotation is bool:
        return not default
    if typing.get_origin(field.annotation) is typing.Literal:
        return next(v for v in typing.get_args(field.annotation) if v != default)
    bounds = field_bounds(model, name)
    low = bounds.get("ge", bounds.get("gt", 0))
    high = bounds.get("le", bounds.get("lt", default * 4 + 10))
    if field.annotation is int:
        return default + 1 if default + 1 <= high else default - 1
    return float(f"{low + (high - low) * 0.3141592653:.10g}")


def params_of(entry) -> dict[str, typing.Any]:
    return {n: non_default(entry.params, n) for n in entry.params.model_fields}


FIELDS = {"steps": 123, "seed": 7, "lr": 0.0031415926, "embedding_dim": 16, "normalize": False}


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_with_non_default_parameters_round_trips(loss: str) -> None:
    """Catches a writer that rounds floats to 6 digits (``:g``) or writes parameters at their
    default; the miner is one without parameters."""
    cfg = make_config(loss=loss, loss_params=params_of(LOSSES[loss]), miner="all", **FIELDS)
    values, problems = query_to_settings(through_url(settings_to_query(cfg)))
    assert problems == []
    assert make_config(**values) == cfg


@pytest.mark.parametrize("miner", list(MINERS))
def test_every_miner_with_non_default_parameters_round_trips(miner: str) -> None:
    """Catches a lost miner parameter; with triplet's margin 0.2 a miner margin of 0.63 is a
    separate margin, which must survive (a reader that always links them loses it)."""
    cfg = make_config(loss="triplet", miner=miner, miner_params=params_of(MINERS[miner]), **FIELDS)
    query = settings_to_query(cfg)
    values, problems = query_to_settings(through_url(query))
    assert problems == []
    assert make_config(**values) == cfg


def test_a_link_names_only_what_differs_and_always_dataset_loss_miner() -> None:
    """Catches a writer that lists every setting (links hundreds of characters long)."""
    assert settings_to_query(RunConfig()) == {
        "dataset": "digits",
        "loss": "triplet",
        "miner": "semi_hard",
    }


def test_the_issue_example_opens_exactly_those_settings_and_is_written_back_the_same() -> None:
    """Catches a reader that ignores ``loss.X`` or a writer that reorders or reformats."""
    values, problems = query_to_settings(dict(parse_qsl(EXAMPLE)))
    cfg = make_config(**values)
    assert problems == []
    assert (cfg.loss, cfg.miner, cfg.steps, cfg.seed) == ("contrastive", "batch_hard", 123, 7)
    assert cfg.loss_params == {"pos_margin": 0.0, "neg_margin": 0.7}
    assert urlencode(settings_to_query(cfg)) == EXAMPLE


@pytest.mark.parametrize(
    ("key", "bad", "named", "setting", "default"),
    [
        ("loss.margin", "-5", "'margin' parameter of triplet must be in (0, 2]. Got -5;", None,
         0.2),
        ("steps", "abc", "'steps' parameter of the run config must be in [1, 1000000]", "steps",
         300),
        ("lr", "0", "'lr' parameter of the run config must be in (0, 10]", "lr", 0.001),
        ("embedding_dim", "5", "'embedding_dim' parameter of the run config must be one of 2,",
         "embedding_dim", 32),
        ("normalize", "maybe", "'normalize' parameter of the run config must be true or false",
         "normalize", True),
        ("split", "closed", "'split' parameter of the run config must be one of 'standard'",
         "split", "standard"),
        ("loss", "nope", "Unknown loss 'nope'", "loss", "triplet"),
        ("miner", "nope", "Unknown miner 'nope'", "miner", "semi_hard"),
        ("miner.margin", "3", "'margin' parameter of semi_hard must be in (0, 2]", None, 0.2),
        ("loss.nope", "1", "'loss.nope' is no parameter of triplet", None, None),
        ("stepz", "5", "'stepz' is no setting of this page", None, None),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_message_naming_the_field_and_the_default_is_used(
    key: str, bad: str, named: str, setting: str | None, default: typing.Any
) -> None:
    """Catches a reader that raises (a traceback on the page), drops the whole link on one bad
    value (``steps=123`` must stay), or keeps the bad value."""
    values, problems = query_to_settings({key: bad, "seed": "7"})
    assert len(problems) == 1, problems
    assert named in problems[0]
    if default is not None:
        assert f"the default {text(default)} is used" in problems[0]
    assert values["seed"] == 7
    if setting is not None:
        assert values[setting] == default
    cfg = make_config(**values)  # everything else is still a valid config
    assert cfg.loss_params.get("margin", 0.2) == 0.2
    assert cfg.miner_params.get("margin", 0.2) == 0.2


def test_a_bad_miner_margin_beside_a_loss_margin_falls_back_to_what_its_message_says() -> None:
    """Catches: the miner's margin silently following the loss's (0.5) while the message says
    that the default 0.2 is used."""
    values, problems = query_to_settings({"loss.margin": "0.5", "miner.margin": "3"})
    assert len(problems) == 1
    assert "the default 0.2 is used" in problems[0]
    assert (values["loss_params"]["margin"], values["miner_params"]["margin"]) == (0.5, 0.2)


def test_a_bad_value_under_a_lesson_falls_back_to_the_lessons_value() -> None:
    """The lesson's first run has 200 steps. Catches: a message naming the page's default
    (300) while the lesson's 200 is used, or the run config's default used instead."""
    assert lesson_configs(LESSONS["contrastive_vs_triplet"])[0].steps == 200
    values, problems = query_to_settings({"lesson": "contrastive_vs_triplet", "steps": "abc"})
    assert values["steps"] == 200
    assert len(problems) == 1
    assert "the default 200 is used" in problems[0]


def test_both_bad_values_of_the_done_when_are_named() -> None:
    """Catches a reader that stops at the first bad value."""
    _, problems = query_to_settings({"loss.margin": "-5", "steps": "abc"})
    assert len(problems) == 2
    assert any("'margin'" in p for p in problems)
    assert any("'steps'" in p for p in problems)


def test_loss_margin_alone_sets_the_shared_margin() -> None:
    """Catches a reader that leaves the miner at its own default (PML issue #466)."""
    values, _ = query_to_settings({"loss.margin": "0.5"})
    assert values["loss_params"]["margin"] == 0.5
    assert values["miner_params"]["margin"] == 0.5
    assert "miner.margin" not in settings_to_query(make_config(**values))


def test_a_different_miner_margin_stays_separate_both_ways() -> None:
    """Catches a reader that overwrites a given miner margin, or a writer that omits it."""
    values, _ = query_to_settings({"loss.margin": "0.5", "miner.margin": "0.3"})
    assert (values["loss_params"]["margin"], values["miner_params"]["margin"]) == (0.5, 0.3)
    query = settings_to_query(make_config(**values))
    assert (query["loss.margin"], query["miner.margin"]) == ("0.5", "0.3")


def test_the_shared_margin_follows_a_loss_whose_default_differs_from_the_miners() -> None:
    """contrastive (neg_margin 1.0) with semi_hard (0.2): the page links them, so must a link.
    Catches a reader that compares the miner margin with the miner's own default."""
    assert margin_link("contrastive", "semi_hard") is not None
    values, _ = query_to_settings({"loss": "contrastive"})
    assert values["miner_params"]["margin"] == 1.0
    cfg = make_config(loss="contrastive", miner="semi_hard", miner_params={"margin": 0.2})
    values, _ = query_to_settings(through_url(settings_to_query(cfg)))
    assert make_config(**values) == cfg


def test_lock_and_hide_lists_are_parsed_and_unknown_names_named() -> None:
    """Catches a parser that keeps unknown names (the page would look for a missing widget),
    keeps spaces, or repeats a name."""
    link = read_train_link(
        {"lock": "loss, miner,loss.margin,loss", "hide": "seed,bogus,miner.nope", "steps": "9"}
    )
    assert link.lock == ("loss", "miner", "loss.margin")
    assert link.hide == ("seed",)
    assert len(link.problems) == 2
    assert "'bogus'" in link.problems[0]
    assert "'miner.nope'" in link.problems[1]
    assert link.values["steps"] == 9
    assert read_train_link({"lock": ""}).lock == ()
    query = settings_to_query(RunConfig(), lock=link.lock, hide=link.hide)
    assert (query["lock"], query["hide"]) == ("loss,miner,loss.margin", "seed")


def test_a_lesson_opens_its_first_run_and_the_link_changes_it() -> None:
    """Catches a reader that ignores ``lesson=`` or lets the lesson override the link."""
    lesson = LESSONS["contrastive_vs_triplet"]
    first = lesson_configs(lesson)[0]
    values, problems = query_to_settings({"lesson": lesson.key})
    assert problems == []
    assert make_config(**values) == first
    values, _ = query_to_settings({"lesson": lesson.key, "steps": "50", "loss.neg_margin": "0.8"})
    assert make_config(**values) == first.model_copy(
        update={"steps": 50, "loss_params": {"pos_margin": 0.0, "neg_margin": 0.8}}
    )


def test_a_lesson_with_another_loss_starts_that_loss_from_its_defaults() -> None:
    """Catches a reader that carries the lesson's contrastive parameters to the triplet loss
    (make_config would refuse 'neg_margin' for triplet)."""
    values, problems = query_to_settings({"lesson": "contrastive_vs_triplet", "loss": "triplet"})
    assert problems == []
    assert make_config(**values).loss_params == LOSSES["triplet"].defaults()


def test_an_unknown_lesson_is_named_and_the_defaults_are_used() -> None:
    values, problems = query_to_settings({"lesson": "nope", "seed": "3"})
    assert len(problems) == 1
    assert "'lesson'" in problems[0]
    assert "'nope'" in problems[0]
    assert make_config(**values) == RunConfig(seed=3).model_copy(
        update={"loss_params": LOSSES["triplet"].defaults(), "miner_params": {"margin": 0.2}}
    )


def test_the_page_owned_run_key_is_no_problem() -> None:
    """Catches a reader that flags Train's own ``run=`` as an unknown setting."""
    assert query_to_settings({"run": "20261129-x"})[1] == []


def test_floats_are_written_short_and_exact_to_12_digits() -> None:
    """Catches repr (0.7000000000000001 from a slider) and ``:g`` (6 digits)."""
    assert text(0.7000000000000001) == "0.7"
    assert text(0.1234567891) == "0.1234567891"
    assert text(1e-05) == "1e-05"
    assert (text(True), text(False)) == ("true", "false")


# ------------------------------------------------------------------ Loss explorer, Miner view


@pytest.mark.parametrize("loss", list(LOSSES))
def test_explorer_controls_round_trip_for_every_loss(loss: str) -> None:
    """Catches a lost second loss or its parameters (``loss2.X``), or held values dropped."""
    params = {"loss": params_of(LOSSES[loss]), "loss2": params_of(LOSSES["contrastive"])}
    values = {
        "loss": loss, "compare": True, "loss2": "contrastive", "axis": "similarity",
        "held_negative": -0.25, "held_positive": 0.5, "show": "gradient", "normalize": True,
    }  # fmt: skip
    read = read_explorer_link(through_url(explorer_query(values, params)))
    assert read.problems == ()
    assert (read.values, read.params) == (values, params)


def test_explorer_defaults_give_a_short_link_and_the_second_loss_follows_the_first() -> None:
    """Catches held values written at their axis's default, or loss2 left at triplet."""
    read = read_explorer_link({})
    assert explorer_query(
        read.values | {"held_negative": 1.0, "held_positive": 0.5}, read.params
    ) == {"loss": "triplet"}
    assert read_explorer_link({"loss": "circle", "compare": "true"}).values["loss2"] == "circle"


def test_explorer_held_values_are_checked_against_their_axis() -> None:
    """1.5 is valid on the distance axis, not on the similarity axis [-1, 1]; catches a
    check against the union of both ranges (the slider would raise)."""
    assert read_explorer_link({"held_negative": "1.5"}).problems == ()
    read = read_explorer_link({"axis": "similarity", "held_negative": "1.5"})
    assert len(read.problems) == 1
    assert "'held_negative'" in read.problems[0]
    assert read.values["held_negative"] is None


@pytest.mark.parametrize(
    "miner", [m for m in MINERS if set(MINERS[m].params.model_fields) - {"margin"}]
)
def test_miner_view_controls_round_trip(miner: str) -> None:
    """Catches a lost miners list or miner parameter (``random.fraction``)."""
    values = MinerViewControls().model_dump() | {
        "P": 4, "K": 5, "dim": 16, "margin": 0.35, "anchor": 7, "miners": ("all", miner),
        "net": "convnet", "seed": 3,
    }  # fmt: skip
    params = {miner: params_of(MINERS[miner])}
    read = read_link(MINER_VIEW, through_url(write_query(MINER_VIEW, values, params)))
    assert read.problems == ()
    assert (read.values, read.params) == (values, params)


def test_miner_view_bad_values_are_named_and_others_kept() -> None:
    """Catches a miners list that keeps an unknown name, and locks accepted silently."""
    read = read_link(MINER_VIEW, {"miners": "all,bogus", "P": "40", "K": "3", "lock": "P"})
    assert read.values["K"] == 3
    assert read.values["P"] == 6
    assert read.values["miners"] == tuple(MINERS)
    assert [p.split(" ")[1] for p in read.problems] == ["'P'", "miner", "page"]
