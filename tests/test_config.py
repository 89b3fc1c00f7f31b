import pytest

from dml_core.config import apply_margin, check_against_dataset, make_config
from dml_core.data import load_dataset
from dml_core.errors import ConfigError

BAD_CONFIGS = [
    (
        {"embedding_dim": 1},
        "'embedding_dim' parameter of the run config must be in [2, 512]. Got 1.",
    ),
    ({"lr": 0}, "'lr' parameter of the run config must be in (0, 10]. Got 0."),
    ({"lr": -1e-3}, "'lr'"),
    ({"steps": 0}, "'steps' parameter of the run config must be in [1, 1000000]. Got 0."),
    ({"dataset": "cifar"}, "must be one of 'digits', 'mnist', 'fashion-mnist'"),
    ({"split": "closed"}, "'split'"),
    ({"loss": "nope"}, "Unknown loss 'nope'"),
    ({"miner": "nope"}, "Unknown miner 'nope'"),
    (
        {"loss_params": {"margin": -1}},
        "The 'margin' parameter of triplet must be in (0, 2]. Got -1.",
    ),
    ({"loss_params": {"bogus": 1}}, "triplet has no parameter 'bogus'"),
    (
        {"miner_params": {"margin": 9}},
        "The 'margin' parameter of semi_hard must be in (0, 2]. Got 9.",
    ),
    ({"classes_per_batch": 11}, "'classes_per_batch'"),
    ({"classes_per_batch": 7, "split": "open-set"}, "at most 6"),
    ({"samples_per_class": 1}, "at least 2 for the triplet loss"),
    ({"unknown_field": 3}, "the run config has no parameter 'unknown_field'"),
]


@pytest.mark.parametrize(("values", "message"), BAD_CONFIGS)
def test_bad_configs_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(**values)
    assert message in str(err.value)


def test_defaults_are_filled_in_and_valid() -> None:
    cfg = make_config()
    assert cfg.loss_params == {"margin": 0.2, "soft": False}
    assert cfg.miner_params == {"margin": 0.2}
    assert cfg.batch_size == cfg.classes_per_batch * cfg.samples_per_class


def test_margin_sets_loss_and_miner_unless_miner_given() -> None:
    values = apply_margin({"loss": "triplet", "miner": "semi_hard"}, 0.3)
    cfg = make_config(**values)
    assert cfg.loss_params["margin"] == cfg.miner_params["margin"] == 0.3
    values = apply_margin({"miner_params": {"margin": 0.1}}, 0.3)
    assert make_config(**values).miner_params["margin"] == 0.1
    assert apply_margin({"loss": "contrastive", "miner": "all"}, 0.7)["loss_params"] == {
        "neg_margin": 0.7
    }


def test_class_size_is_checked_against_the_data() -> None:
    data = load_dataset("digits")
    smallest = int(data.train.y.bincount().min())
    check_against_dataset(make_config(samples_per_class=smallest), data)
    with pytest.raises(ConfigError, match=f"at most {smallest}"):
        check_against_dataset(make_config(samples_per_class=smallest + 1), data)
