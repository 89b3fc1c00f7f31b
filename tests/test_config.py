import pytest
import torch

from dml_core import budgets
from dml_core.config import (
    apply_margin,
    check_against_dataset,
    describe_config,
    differing_labels,
    make_config,
)
from dml_core.data import load_dataset
from dml_core.errors import ConfigError
from dml_core.registry import LOSSES, MINERS

GEN = torch.Generator().manual_seed(0)

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
    check_against_dataset(make_config(samples_per_class=smallest, miner="batch_hard"), data)
    with pytest.raises(ConfigError, match=f"at most {smallest}"):
        check_against_dataset(make_config(samples_per_class=smallest + 1), data)


def test_a_batch_whose_mining_would_not_fit_is_refused_in_one_sentence() -> None:
    """Catches: P = 10, K = 120 with semi-hard mining accepted (about 23 GB per step)."""
    data = load_dataset("digits", "standard")
    big = {"classes_per_batch": 10, "samples_per_class": 120}
    with pytest.raises(ConfigError, match=r"^P = 10, K = 120, D = 32 would need about \d+ GB"):
        check_against_dataset(make_config(**big), data)
    with pytest.raises(ConfigError, match="mining all triplets"):  # all pairs joined into triplets
        check_against_dataset(make_config(**big, miner="all"), data)
    # batch-hard mining keeps one triplet per anchor: the same batch is fine
    check_against_dataset(make_config(**big, miner="batch_hard"), data)


@pytest.mark.parametrize("name", list(MINERS))
def test_enumerates_triplets_is_declared_where_memory_grows_like_the_cube(name: str) -> None:
    """The declaration the budget relies on matches what each miner allocates.

    Doubling K at fixed P doubles B: an all-triplet miner's peak grows about 8x, a pair-level
    one about 4x. Catches a miner that materialises every triplet without declaring it.
    """
    peaks = []
    for K in (16, 32):
        labels = torch.arange(4).repeat_interleave(K)  # (B,)
        emb = torch.nn.functional.normalize(torch.randn(len(labels), 8, generator=GEN), dim=1)
        miner = MINERS.create(name)
        _, used = budgets.measure(miner, emb, labels)
        peaks.append(used.torch_bytes)
    cubic = peaks[1] / max(peaks[0], 1) > 6
    assert MINERS[name].build.enumerates_triplets == cubic, peaks


def test_runs_are_named_by_the_settings_that_differ() -> None:
    """Catches: names with "x = None" for another loss's parameter, or every default listed."""
    configs = {
        "a": make_config(loss_params={"margin": 0.1}),
        "b": make_config(loss_params={"margin": 0.5}),
    }
    assert differing_labels(configs) == {"a": "margin = 0.1", "b": "margin = 0.5"}
    dims = {f"d{d}": make_config(embedding_dim=d) for d in (2, 128)}
    assert differing_labels(dims) == {"d2": "D = 2", "d128": "D = 128"}
    losses = {
        "t": make_config(),
        "c": make_config(loss="contrastive", loss_params={"neg_margin": 0.8}, miner="all"),
    }
    names = differing_labels(losses)
    assert names["t"].startswith("loss = triplet")
    assert "None" not in names["t"]
    assert "soft" not in names["t"]  # triplet's default
    assert "pos_margin" not in names["c"]  # contrastive's default
    assert "neg_margin = 0.8" in names["c"]
    assert differing_labels({"x": make_config(), "y": make_config()}) == {"x": "x", "y": "y"}


CLASS_LEVEL_LOSSES = [name for name, entry in LOSSES.items() if entry.kind == "classes"]


@pytest.mark.parametrize("loss", CLASS_LEVEL_LOSSES)
def test_a_class_level_loss_is_refused_without_labels(loss: str) -> None:
    """Catches a proxy / ArcFace / SoftTriple loss accepted with views (its class weights would
    be indexed by image ids: an index error mid-run, or a device assert on CUDA)."""
    with pytest.raises(ConfigError) as err:
        make_config(supervision="views", loss=loss)
    message = str(err.value)
    assert f"The {loss} loss learns one weight per class" in message
    assert "'supervision' = 'labels'" in message
    assert message.count(". ") == 0  # one sentence
    make_config(supervision="labels", loss=loss)


def test_a_per_class_parameter_is_refused_without_labels() -> None:
    """The margin loss's per_class_beta indexes beta by label: with views it must be refused."""
    with pytest.raises(ConfigError, match="'per_class_beta' parameter of margin"):
        make_config(supervision="views", loss="margin", loss_params={"per_class_beta": True})


VIEWS_BAD = [
    ({"crop_scale": 0}, "The 'crop_scale' parameter of the run config must be in (0, 1]. Got 0."),
    ({"rotation": 91}, "The 'rotation' parameter of the run config must be in [0, 90]. Got 91."),
    ({"translate": 0.6}, "'translate' parameter of the run config must be in [0, 0.5]. Got 0.6"),
    ({"noise": -0.1}, "The 'noise' parameter of the run config must be in [0, 1]. Got -0.1."),
    ({"supervision": "none"}, "'supervision' parameter of the run config must be one of"),
    (
        {"classes_per_batch": 3, "samples_per_class": 5},
        "'classes_per_batch' (P) x 'samples_per_class' (K) must be even. Got 3 x 5.",
    ),
]


@pytest.mark.parametrize(("values", "message"), VIEWS_BAD)
def test_bad_views_settings_name_the_field(values: dict, message: str) -> None:
    """Catches an odd batch accepted (one view without its pair) and undeclared limits."""
    with pytest.raises(ConfigError) as err:
        make_config(**{"supervision": "views", "loss": "ntxent", **values})
    assert message in str(err.value)


def test_views_batches_need_no_classes_but_enough_distinct_images() -> None:
    """With views P and K only size the batch: K = 1 and P = 10 on the open-set split (6
    training classes) are fine, an odd P K is not, and P K / 2 images must exist. Catches the
    label-mode class checks applied to views, and a batch drawing more images than exist."""
    cfg = make_config(supervision="views", loss="ntxent", classes_per_batch=10, split="open-set",
                      samples_per_class=2)  # fmt: skip
    assert (cfg.batch_size, cfg.images_per_batch) == (20, 10)
    check_against_dataset(cfg, load_dataset("digits", "open-set"))
    make_config(supervision="views", loss="contrastive", classes_per_batch=2, samples_per_class=1)
    data = load_dataset("digits")
    many = make_config(supervision="views", loss="ntxent", miner="all", classes_per_batch=10,
                       samples_per_class=300)  # fmt: skip
    with pytest.raises(ConfigError, match=f"more than the {len(data.train)} training images"):
        check_against_dataset(many, data)


def test_a_views_run_says_so_in_its_description_and_name() -> None:
    """Catches a label-free run described like a labelled one (Compare and lessons names)."""
    views = make_config(supervision="views", loss="ntxent", rotation=5)
    assert "label-free: 2 views" in describe_config(views)
    assert "rotation <= 5°" in describe_config(views)
    assert "label-free" not in describe_config(make_config(loss="ntxent"))
    names = differing_labels({"v": views, "l": make_config(loss="ntxent")})
    assert names["v"].startswith("supervision = views")
    assert names["l"].startswith("supervision = labels")
