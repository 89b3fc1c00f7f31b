"""The app-speed benchmark's wiring: its commands, its CLI runs, its repeats (the process
accounting: ``tests/test_bench_processes.py``; the benchmark itself drives a real server)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name", ["app", "sphere"])
def test_the_benchmarks_that_drive_the_app_are_commands_of_the_cli(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m dml_core bench app`` (and ``bench sphere``) reach their own flags.

    Catches a command not wired (``bench`` then rejects it with exit status 2).
    """
    from dml_core import cli

    with pytest.raises(SystemExit) as leaving:
        cli.main(["bench", name, "--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m dml_core bench {name}")
    assert "--steps" in out


def test_a_failing_cli_run_reports_its_own_error(tmp_path, monkeypatch) -> None:
    """Catches: a CLI run that failed in the benchmark reported as a bare exit status (a
    SIGABRT once came back with nothing to go on): its stderr is in the error."""
    from dml_core.bench import app_speed
    from dml_core.config import make_config

    monkeypatch.setattr(app_speed, "ROOT", tmp_path)  # no dml_core to run there
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with pytest.raises(RuntimeError, match="No module named dml_core"):
        app_speed.cli_run(make_config(), tmp_path / "runs")


def test_repeats_set_each_app_run_against_the_cli_runs_beside_it(tmp_path, monkeypatch) -> None:
    """``--repeats``: CLI, app, CLI, app, CLI...; each app run against the mean of the two
    CLI runs around it, the median of those ratios reported, with the median run's figures.

    Catches: every app run set against the first CLI (a slower machine later reads as a slow
    app), the mean or the best ratio reported instead of the median, and the details of
    another run than the median one.
    """
    from dml_core.bench import app_speed
    from dml_core.config import make_config

    cli_rates, app_rates, calls = iter([100.0, 50.0, 50.0, 100.0]), iter([60.0, 45.0, 80.0]), []

    def fake_cli(cfg, runs):
        calls.append("cli")
        rate = next(cli_rates)
        return {"samples_per_s": rate, "wall_s": 2.0, "cpu_s": 3.0, "train_seconds": 1.0,
                "seconds": 1.5, "eval_seconds": 0.2, "map_at_r": 0.5}  # fmt: skip

    def fake_app(cfg, runs, log, timeout_s):
        calls.append("app")
        rate = next(app_rates)
        return {"samples_per_s": rate, "train_seconds": 1.0, "steps_done": 300,
                "time_to_verdict_s": rate, "parts_s": {"setup": 0.1, "train": 1.0, "eval": 0.2},
                "cpu_s": {"server": 1.0, "umap_worker": 0.1, "browser": 0.2},
                "cpu_s_training": {"server": 0.5, "umap_worker": 0.0, "browser": rate / 100},
                "training_window_s": 0.9,
                "map_at_r": 0.5}  # fmt: skip

    monkeypatch.setattr(app_speed, "cli_run", fake_cli)
    monkeypatch.setattr(app_speed, "app_run", fake_app)
    result = app_speed.run_app_speed(make_config(), tmp_path, repeats=3)
    assert calls == ["cli", "app", "cli", "app", "cli", "app", "cli"]
    assert result["ratios"] == [0.8, 0.9, 1.067]  # 60/75, 45/50, 80/75
    assert result["ratio"] == 0.9
    assert result["app_samples_per_s"] == 45.0  # the median run's
    assert result["app_cpu_s_training"]["browser"] == 0.45
    assert result["cli_samples_per_s"] == [50.0, 50.0]
    assert result["repeats"] == 3
