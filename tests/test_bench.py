"""The benchmark runs end to end (tiny and quick) and reports what it promises."""

from __future__ import annotations

import json

import pytest

from dml_core.bench.report import huge_pages_text
from dml_core.bench.timing import huge_pages
from dml_core.cli import main


def test_quick_bench_prints_one_json_object_with_the_promised_keys(capsys, tmp_path) -> None:
    out = tmp_path / "assets" / "bench.json"
    args = ["bench", "--quick", "--json", "--dataset", "digits", "--samples", "512", "--seeds", "2"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ratio"] > 0
    assert json.loads(out.read_text()) == result
    assert result["seeds"] == 2
    for name in ("pml", "dml_core"):
        variant = result["variants"][name]
        assert variant["samples"] == 512
        for key in ("samples_per_s", "seconds_per_60k", "precision_at_1", "map_at_r"):
            assert variant[key] >= 0
        assert len(variant["map_at_r_per_seed"]) == 2
        assert variant["map_at_r"] == pytest.approx(sum(variant["map_at_r_per_seed"]) / 2, abs=1e-4)
    pml, ours = result["variants"]["pml"], result["variants"]["dml_core"]
    diffs = [
        b - a for a, b in zip(pml["map_at_r_per_seed"], ours["map_at_r_per_seed"], strict=True)
    ]
    assert result["map_at_r_delta"]["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-4)
    assert result["map_at_r_delta"]["sd"] >= 0
    # B in float32 is a variant exactly where B uses bf16; elsewhere B is the float32 path
    if "dml_core_float32" not in result["variants"]:
        assert result["ratio_float32"] == result["ratio"]
        assert result["map_at_r_delta_float32"] == result["map_at_r_delta"]
    for kind in ("real_batch", "random_embeddings"):
        row = result["mining_loss_ms"][kind]
        assert {"pml", "dml_core_fused", "dml_core_band_miner"} <= row.keys()
    assert result["snapshot_s"] > 0
    defaults = result["snapshot_share_at_defaults"]
    assert defaults["snapshots"] >= 2
    assert defaults["share"] == pytest.approx(
        defaults["snapshot_s"] / defaults["training_s"], abs=0.01
    )
    assert "none" in result["ablation_ms_per_step"]
    assert {"cpu_count", "torch_threads", "device", "device_name"} <= result["machine"].keys()
    assert result["machine"]["huge_pages"] == huge_pages()
    assert result["date"]
    assert result["command"].startswith("python -m dml_core")
    cli = result["time_to_verdict"]["cli"]  # a real `train --json` process, 30 steps
    assert cli["command"].startswith("python -m dml_core train --dataset digits")
    assert sum(cli["parts_s"].values()) == pytest.approx(cli["total_s"], abs=0.05)
    assert cli["parts_s"]["eval"] > 0
    assert cli["parts_s"]["train"] > 0


@pytest.fixture
def no_verdict(monkeypatch):
    """Benchmarks in tests that look at other figures skip the CLI run (a process each)."""
    from dml_core.bench.verdict import verdict_entry

    stub = verdict_entry("not run in this test", 1.0, {"train": 1.0})
    monkeypatch.setattr("dml_core.bench.run.cli_time_to_verdict", lambda *a, **k: stub)


def test_cli_time_splits_into_setup_train_eval_and_the_rest() -> None:
    """Catches a part taken from the wrong figure (e.g. setup = wall - train - eval)."""
    from dml_core.bench.verdict import cli_parts, verdict_entry

    printed = {"seconds": 30.0, "train_seconds": 10.0, "eval_seconds": 8.0}
    parts = cli_parts(40.0, printed)
    assert parts == {"setup": 10.0, "train": 10.0, "eval": 8.0, "other": 12.0}
    entry = verdict_entry("python -m dml_core train --json", 40.0, parts, map_at_r=0.5)
    assert entry["shares"] == {"setup": 0.25, "train": 0.25, "eval": 0.2, "other": 0.3}
    assert entry["map_at_r"] == 0.5
    assert cli_parts(40.0, {**printed, "eval_seconds": None})["eval"] == 0.0  # no final eval


def test_time_to_verdict_lines_render_where_measured() -> None:
    """The CLI's and an app's lines appear in the table and the README block; a file
    without them renders as before (the committed README stays valid)."""
    from pathlib import Path

    from dml_core.bench.report import format_markdown, format_table
    from dml_core.bench.verdict import verdict_entry

    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "assets" / "bench-cpu.json").read_text())
    result.pop("time_to_verdict", None)
    before = format_markdown(result)
    parts = {"setup": 2.0, "train": 5.5, "eval": 2.5, "other": 1.0}
    result["time_to_verdict"] = {
        "cli": verdict_entry("python -m dml_core train --json", 11.0, parts),
        "app": verdict_entry("Train pressed in the app", 22.0, {**parts, "other": 12.0}),
    }
    after = format_markdown(result)
    assert after.startswith(before)
    added = after[len(before) :].strip().splitlines()
    assert added[0].startswith("- Train pressed to final metrics, CLI")
    assert "11.0 s = setup 2.0 s (18%), training 5.5 s (50%), final evaluation 2.5 s" in added[0]
    assert added[1].startswith("- Train pressed to final metrics, app")
    assert "22.0 s" in added[1]
    assert "Train pressed to final metrics, CLI" in format_table(result)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--seeds", "0"], "'seeds'"),
        (["--batch", "7"], "'batch'"),
        (["--samples", "10"], "'samples'"),
    ],
)
def test_bad_bench_arguments_exit_with_one_line_naming_the_field(capsys, args, field) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--dataset", "digits", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert field in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_readme_performance_blocks_are_rendered_from_the_committed_files() -> None:
    """Every README block marked ``<!-- bench: FILE -->`` is exactly bench-report of FILE."""
    import re
    from pathlib import Path

    from dml_core.bench.report import format_markdown

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"<!-- bench: (\S+) -->\n(.*?)\n<!-- /bench -->", readme, re.DOTALL)
    assert blocks, "the README has no generated benchmark block"
    for file, text in blocks:
        result = json.loads((root / file).read_text())
        assert text == format_markdown(result), f"README block of {file} is stale: re-render it"


def test_bench_report_of_a_missing_file_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-report", "no/such/bench.json"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no/such/bench.json" in err
    assert len(err.splitlines()) == 1


def test_bench_reports_b_in_float32_beside_b_where_b_uses_bf16(monkeypatch, no_verdict) -> None:
    from dml_core.bench import report, run_bench

    # emulated bfloat16 runs on any CPU: pretend it is native and the small net big enough
    monkeypatch.setattr("dml_core.train.native_bf16", lambda device: True)
    monkeypatch.setattr("dml_core.train.BF16_MIN_MACS", 0)
    result = run_bench("digits", "cpu", 64, samples=128, quick=True, seeds=2)
    assert set(result["variants"]) == {"pml", "dml_core", "dml_core_float32"}
    assert "bf16" in result["variants"]["dml_core"]["what"]
    assert "bf16" not in result["variants"]["dml_core_float32"]["what"]
    assert result["ratio_float32"] > 0
    assert result["map_at_r_delta_float32"]["sd"] is not None
    assert "+bf16" in result["ablation_ms_per_step"]
    assert "B float32" in report.format_table(result)
    assert "B float32" in report.format_markdown(result).splitlines()[0]


NO_CUDA = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message given without a GPU"
)


@NO_CUDA
def test_bench_on_cuda_without_a_gpu_is_one_line_with_status_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--device", "cuda", "--dataset", "digits"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU" in err
    assert len(err.splitlines()) == 1


DIGITS_SEED = {"dataset": "digits", "device": "cpu", "batch": 64, "steps": 4, "seed": 0}


def start_of_race(monkeypatch, before_race=dict) -> dict:
    """Run one digits seed of the benchmark (``DIGITS_SEED``) up to its timed race, and return
    what the race would start from: each variant's trainer or loop by name, plus
    ``before_race()``'s entries, taken at that moment."""
    import torch

    from dml_core.bench import run
    from dml_core.data import load_dataset

    started: dict[str, object] = {}

    def timed(steppers, steps, device):
        started.update(before_race())
        started.update({n: s.__self__ for n, s in steppers.items()})
        return dict.fromkeys(steppers, 1.0)

    monkeypatch.setattr(run, "train_interleaved", timed)
    every = torch.arange(50)
    run._one_seed(load_dataset("digits"), DIGITS_SEED, torch.device("cpu"), every, every)
    return started


def test_each_variant_warms_up_on_a_throwaway_copy_before_timing(monkeypatch, no_verdict) -> None:
    """First-call costs (CUDA: lazy kernels, cuDNN's search) must not fall in timed steps."""
    import torch

    from dml_core.bench import run
    from dml_core.bench.pml_loop import PMLLoop
    from dml_core.data import load_dataset
    from dml_core.train import Trainer

    calls: dict[type, int] = {Trainer: 0, PMLLoop: 0}
    for cls in calls:
        step = cls.train_step

        def counted(self, step=step, cls=cls):
            calls[cls] += 1
            return step(self)

        monkeypatch.setattr(cls, "train_step", counted)
    started = start_of_race(
        monkeypatch, lambda: {"calls": {k.__name__: v for k, v in calls.items()}}
    )
    assert started["calls"] == {"Trainer": run.WARM_UP_STEPS, "PMLLoop": run.WARM_UP_STEPS}
    assert started["dml_core"].step == 0  # the timed trainer itself starts untouched
    fresh = run._make_trainer(load_dataset("digits"), **DIGITS_SEED)
    for p, q in zip(started["pml"].net.parameters(), fresh.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_the_default_run_snapshot_share_is_measured_on_the_bench_device(monkeypatch) -> None:
    import torch

    from dml_core.bench import timing

    devices: list[str] = []

    class Recorder:
        def __init__(self, cfg) -> None:
            devices.append(cfg.device)
            self.elapsed = 1.0

        def run(self):
            yield from ()

    monkeypatch.setattr(timing, "Trainer", Recorder)
    share = timing.snapshot_share_at_defaults(torch.device("cuda"))
    assert devices == ["cuda"]  # printed under the GPU's name: measured there too
    assert share["device"] == "cuda"


def test_the_app_block_puts_each_figure_under_its_own_column() -> None:
    """``bench app``'s README block: CLI first, app second, each with its own figures.

    Catches: the columns swapped, or a part's seconds taken from the other entry.
    """
    from pathlib import Path

    from dml_core.bench.report import format_markdown

    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "assets" / "bench-app.json").read_text())
    result["time_to_verdict"]["cli"]["total_s"] = 11.0
    result["time_to_verdict"]["app"]["total_s"] = 22.0
    result["time_to_verdict"]["cli"]["parts_s"]["eval"] = 3.0
    result["time_to_verdict"]["app"]["parts_s"]["eval"] = 4.0
    lines = format_markdown(result).splitlines()
    assert lines[0] == "| | CLI | app |"
    assert "| Train pressed to final metrics | **11.0 s** | **22.0 s** |" in lines
    assert any(
        line.startswith("| ↳ final evaluation | 3.0 s (") and "| 4.0 s (" in line for line in lines
    )
    assert f"**{result['ratio']}**" in format_markdown(result)


def test_the_app_block_of_repeated_runs_gives_the_median_and_every_run() -> None:
    """``bench app --repeats``: the block says how many runs, their median and each ratio.

    Catches: a repeated file described as one run between two CLI runs, or its median shown
    without the spread of the runs behind it.
    """
    from pathlib import Path

    from dml_core.bench.report import format_markdown

    root = Path(__file__).resolve().parents[1]
    result = json.loads((root / "assets" / "bench-app.json").read_text())
    result.update(repeats=3, ratios=[0.7, 0.81, 0.9], ratio=0.81, app_training_window_s=7.1)
    result["app_cpu_s_training"] = {"server": 9.5, "umap_worker": 0.4, "browser": 1.6}
    text = format_markdown(result)
    assert "while the app's run trained (7.1 s from its first step to its last)" in text
    assert "server 9.5, UMAP worker 0.4, browser 1.6." in text
    assert "**0.81** (median; each run: 0.7, 0.81, 0.9)" in text
    assert "The app ran 3 times, each between two CLI runs" in text
    assert "once before and once after" not in text


def test_a_trains_the_net_as_built_from_b_s_initial_weights(monkeypatch, no_verdict) -> None:
    """A, the pytorch-metric-learning loop, runs the ConvNet as ``build_net`` makes it: ReLU
    before max-pool, NCHW, with B's initial weights; none of B's speed-ups.

    Catches: A's net copied from B's trainer (the trunk reordered by ``pool_before_relu``, or
    left channels_last), or A starting from other weights than B.
    """
    import torch

    from dml_core.data import load_dataset
    from dml_core.nets import build_net

    started = start_of_race(monkeypatch)
    a_net, b_net = started["pml"].net, started["dml_core"].net
    shape = load_dataset("digits").input_shape
    as_built = build_net("convnet", shape, b_net.trunk[-1].out_features)
    assert [type(m) for m in a_net.trunk] == [type(m) for m in as_built.trunk]
    assert [type(m) for m in b_net.trunk] != [type(m) for m in as_built.trunk]  # B's swap
    for name, weight in a_net.named_parameters():
        assert weight.is_contiguous(), name
    a_state, b_state = a_net.state_dict(), b_net.state_dict()
    assert a_state.keys() == b_state.keys()
    for key, value in a_state.items():
        torch.testing.assert_close(value, b_state[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("modes", "variable", "kernel", "text"),
    [
        (
            "always [madvise] never\n",
            None,
            "madvise",
            "; huge pages: madvise (torch's allocation off)",
        ),
        ("[always] madvise never\n", "1", "always", "; huge pages: always (torch's allocation on)"),
        ("always madvise [never]\n", "0", "never", "; huge pages: never (torch's allocation off)"),
        (None, "1", None, "; huge pages: none (torch's allocation on)"),
    ],
)
def test_the_machine_says_whether_large_tensors_get_huge_pages(
    monkeypatch, tmp_path, modes, variable, kernel, text
) -> None:
    """The kernel's mode is the bracketed word; torch's switch is on only for "1".

    Catches: the first word read as the mode ("always" where the kernel says madvise), a
    machine without the file failing the benchmark, and "0" reported as on. B / A moved from
    1.63 to 1.35 with the switch on, so a result must say which way it was measured.
    """
    mode_file = tmp_path / "enabled"
    if modes is not None:
        mode_file.write_text(modes)
    if variable is None:
        monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    else:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", variable)
    pages = huge_pages(mode_file)
    assert pages == {"kernel": kernel, "torch_thp_alloc": variable}
    assert huge_pages_text({"huge_pages": pages}) == text
    assert huge_pages_text({}) == ""  # results saved before the benchmark reported them
