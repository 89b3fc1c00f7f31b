import json
import subprocess
import sys
from pathlib import Path

import pytest

from dml_core.cli import main
from dml_core.registry import LOSSES, MINERS

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dml_core", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
]


@pytest.mark.parametrize(("args", "names", "allowed"), BAD_ARGS)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], names: str, allowed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
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
    text = capsys.readouterr().out
    assert all(f"{name}:" in text for name in registry)


def test_resume_continues_a_stopped_run_to_its_last_step(tmp_path: Path) -> None:
    flags = ["--steps", "30", "--snapshot-every", "10", "--probe-size", "100", "--no-final-eval"]
    first = json.loads(cli("train", *flags, "--out", str(tmp_path), "--json").stdout)
    run_dir = Path(first["run_dir"])
    status = json.loads((run_dir / "status.json").read_text())
    status["state"] = "stopped"  # as if Stop had been pressed at step 30 of a longer run
    (run_dir / "status.json").write_text(json.dumps(status))
    config = json.loads((run_dir / "config.json").read_text())
    config["steps"] = 50
    (run_dir / "config.json").write_text(json.dumps(config))
    out = cli("train", "--resume", str(run_dir), "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["state"] == "finished"
    assert result["steps"] == 50
    steps = sorted(int(p.stem) for p in (run_dir / "snapshots").glob("*.npz"))
    assert steps == [0, 10, 20, 30, 40, 50]


def test_resume_refuses_finished_runs_and_extra_settings(tmp_path: Path) -> None:
    flags = ["--steps", "5", "--probe-size", "100", "--no-final-eval"]
    first = json.loads(cli("train", *flags, "--out", str(tmp_path), "--json").stdout)
    out = cli("train", "--resume", first["run_id"], "--out", str(tmp_path))
    assert out.returncode == 2
    assert "Only interrupted or stopped runs can be resumed" in out.stderr
    out = cli("train", "--resume", first["run_id"], "--steps", "9", "--out", str(tmp_path))
    assert out.returncode == 2
    assert "drop --steps" in out.stderr


def test_export_writes_projector_files(tmp_path: Path) -> None:
    flags = ["--steps", "10", "--snapshot-every", "5", "--probe-size", "100", "--no-final-eval"]
    run = json.loads(cli("train", *flags, "--out", str(tmp_path), "--json").stdout)
    out = cli("export", run["run_id"], "--format", "projector", "--out", str(tmp_path / "p"),
              "--runs", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "p" / "tensors.tsv").read_text().strip().splitlines()
    assert len(rows) == 100
    assert len(rows[0].split("\t")) == run["config"]["embedding_dim"]
    bad = cli("export", "no-such-run", "--format", "csv", "--out", str(tmp_path / "q"),
              "--runs", str(tmp_path))  # fmt: skip
    assert bad.returncode == 2
    assert "no-such-run" in bad.stderr
