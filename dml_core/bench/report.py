"""Benchmark reports: the table ``python -m dml_core bench`` prints, and the README's Markdown.

``format_markdown`` renders the README's "Performance" block from a benchmark JSON file
(``python -m dml_core bench-report FILE``); a test checks the README holds exactly that text,
so no figure there is typed by hand. Columns: A (the pytorch-metric-learning loop), B
(``dml_core``'s ``Trainer``) and, where B uses bf16, B float32; below them the timings, the
time from Train pressed to the final metrics among them (``bench.verdict``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dml_core.errors import ConfigError
from dml_core.metrics import METRIC_LABELS

RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r")

COLUMNS = {"pml": "A: PML loop", "dml_core": "B: dml_core", "dml_core_float32": "B float32"}
DELTA_KEYS = {"dml_core": "map_at_r_delta", "dml_core_float32": "map_at_r_delta_float32"}


PART_NAMES = {
    "setup": "setup",
    "train": "training",
    "eval": "final evaluation",
    "other": "snapshots and saving",
}
VERDICT_NAMES = {"cli": "CLI", "app": "app"}


def verdict_lines(result: dict[str, Any]) -> list[str]:
    """Train pressed to final metrics, one line per entry (CLI, app): total and its parts."""
    lines = []
    for key, entry in result.get("time_to_verdict", {}).items():
        parts = ", ".join(
            f"{PART_NAMES[name]} {seconds} s ({100 * entry['shares'][name]:.0f}%)"
            for name, seconds in entry["parts_s"].items()
        )
        lines.append(
            f"Train pressed to final metrics, {VERDICT_NAMES.get(key, key)} "
            f"(`{entry['command']}`): {entry['total_s']} s = {parts}"
        )
    return lines


def huge_pages_text(machine: dict[str, Any]) -> str:
    """The machine's ``timing.huge_pages`` as text for its line, or "" for older results.

    E.g. "; huge pages: madvise (torch's allocation off)".
    """
    pages = machine.get("huge_pages")
    if pages is None:  # a result from before the benchmark reported them
        return ""
    torch_on = "on" if pages["torch_thp_alloc"] == "1" else "off"
    return f"; huge pages: {pages['kernel'] or 'none'} (torch's allocation {torch_on})"


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary printed by ``python -m dml_core bench``."""
    variants = result["variants"]
    a = variants["pml"]
    m = result["machine"]
    names = [n for n in COLUMNS if n in variants]
    others = names[1:]
    header = "".join(f"{COLUMNS[n]:>14}" for n in names)
    header += "".join(f"{'B / A' if n == 'dml_core' else 'B32 / A':>9}" for n in others)
    lines = [
        f"{result['command']}  ({result['date']}; {m['device_note']}, "
        f"{m['cpu_count']} CPUs, load {m['load_average_before'][0]}{huge_pages_text(m)})",
        "",
        f"{'':<26}{header}",
    ]
    rows = [
        ("samples/s", "samples_per_s", "{:.0f}"),
        ("seconds per 60k samples", "seconds_per_60k", "{:.1f}"),
        *(
            (METRIC_LABELS[key], key, "{:.4f}")
            for key in ("precision_at_1", "r_precision", "map_at_r")
        ),
    ]
    for label, key, fmt in rows:
        cells = "".join(f"{fmt.format(variants[n][key]):>14}" for n in names)
        ratios = "".join(
            f"{variants[n][key] / a[key] if a[key] else float('nan'):>9.2f}" for n in others
        )
        lines.append(f"{label:<26}{cells}{ratios}")
    for name in others:
        delta = result[DELTA_KEYS[name]]
        spread = f" (sd {delta['sd']})" if delta["sd"] is not None else ""
        lines.append(
            f"MAP@R {COLUMNS[name]} - A, paired over {result['seeds']} seed(s): "
            f"{delta['mean']:+.4f}{spread}"
        )
    s = result["settings"]
    lines.append(
        f"(after {s['samples']} samples each; {s['eval_queries']} test queries vs "
        f"{s['eval_references']} train references)"
    )
    lines.append("")
    lines.append("mining + loss + backward, ms per batch:")
    for kind, row in result["mining_loss_ms"].items():
        cells = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("ratio_pml_over_fused",))
        lines.append(f"  {kind}: {cells}; PML / fused = {row['ratio_pml_over_fused']}")
    lines.append("B ms per step, speed-ups added one at a time:")
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in result["ablation_ms_per_step"].items()))
    lines.append(
        f"snapshot ({result['snapshot_probe_size']} probe points): {result['snapshot_s']} s"
    )
    if "snapshot_share_at_defaults" in result:
        d = result["snapshot_share_at_defaults"]
        lines.append(
            f"default run (digits): {d['snapshots']} snapshots take {d['snapshot_s']} s, "
            f"{100 * d['share']:.1f}% of its {d['training_s']} s of training"
        )
    if result["layouts"]:
        lines.append("layouts, s: " + ", ".join(f"{k} {v}" for k, v in result["layouts"].items()))
    lines += verdict_lines(result)
    lines.append(f"ratio B / A (samples/s): {result['ratio']}")
    if "dml_core_float32" in result["variants"]:
        lines.append(f"ratio B float32 / A (samples/s): {result['ratio_float32']}")
    return "\n".join(lines)


def format_app_markdown(result: dict[str, Any]) -> str:
    """The README block for a ``bench app`` file: the CLI against the app, Train to verdict."""
    entries = result["time_to_verdict"]
    names = [key for key in VERDICT_NAMES if entries.get(key)]
    lines = [
        "| | " + " | ".join(VERDICT_NAMES[key] for key in names) + " |",
        "| --- |" + " --- |" * len(names),
        "| training samples/s | "
        + " | ".join(f"{entries[key]['samples_per_s']:.0f}" for key in names)
        + " |",
        "| Train pressed to final metrics | "
        + " | ".join(f"**{entries[key]['total_s']:.1f} s**" for key in names)
        + " |",
    ]
    for part, label in PART_NAMES.items():
        cells = (
            f"{entries[key]['parts_s'][part]:.1f} s ({100 * entries[key]['shares'][part]:.0f}%)"
            for key in names
        )
        lines.append(f"| ↳ {label} | " + " | ".join(cells) + " |")
    config, cpu = result["config"], result["app_cpu_s_click_to_verdict"]
    map_at_r = result["map_at_r"]
    cli_rates = " and ".join(f"{rate:.0f}" for rate in result["cli_samples_per_s"])
    repeats = result.get("repeats", 1)
    if repeats == 1:
        runs = f"The CLI ran once before and once after the app: {cli_rates} samples/s."
        ratio = f"**{result['ratio']}**"
    else:
        runs = (
            f"The app ran {repeats} times, each between two CLI runs; the figures here are "
            f"those of the median run, whose CLI runs gave {cli_rates} samples/s."
        )
        ratio = f"**{result['ratio']}** (median; each run: {', '.join(map(str, result['ratios']))})"
    lines += [
        "",
        f"`{result['command']}` on {result['cpu_name']} ({result['cpus']} CPUs), "
        f"{result['date']}: {config['dataset']}, {config['net']}, {config['steps']} steps at the "
        f"Train page's other defaults. {runs}",
        "",
        f"- In-app training speed / CLI: {ratio}, with the browser (headless "
        f"Chromium) drawing the live view on the same {result['cpus']} cores.",
        "- CPU seconds from Train pressed to the final metrics: "
        f"{_server(cpu, ALL_IN_SERVER)}, UMAP worker {cpu['umap_worker']}, "
        f"browser {cpu['browser']}; the CLI's whole command: "
        f"{' and '.join(str(c) for c in result['cli_cpu_s'])}.",
        f"- Final MAP@R: CLI {map_at_r['cli']:.4f}, app {map_at_r['app']:.4f} (the same seed).",
    ]
    if training := result.get("app_cpu_s_training"):
        lines.insert(
            -1,
            f"- CPU seconds while the app's run trained ({result['app_training_window_s']} s "
            f"from its first step to its last): {_server(training, work='training')}, UMAP worker "
            f"{training['umap_worker']}, browser {training['browser']}.",
        )
    return "\n".join(lines)


ALL_IN_SERVER = " (training, final evaluation, page reruns)"


def _server(
    cpu: dict[str, float], before: str = "", work: str = "training, final evaluation"
) -> str:
    """The server's CPU seconds, its run's child process apart when it had one.

    ``before``: what the server's figure held when the runs trained in the server (before
    2026-12-01, no ``training_process``).
    """
    if "training_process" not in cpu:
        return f"server {cpu['server']}{before}"
    return (
        f"the run's training process {cpu['training_process']} ({work}), "
        f"server {cpu['server']} (page reruns)"
    )


def format_markdown(result: dict[str, Any]) -> str:
    """The README's "Performance" block for one benchmark file: a table and the timings.

    ``python -m dml_core bench-report FILE`` prints it; a test checks that the README holds
    exactly this text for the committed file, so no figure there is typed by hand. A
    ``bench app`` file (no training variants) gets ``format_app_markdown``.
    """
    if "variants" not in result and "app_samples_per_s" in result:
        return format_app_markdown(result)
    variants = result["variants"]
    names = [n for n in COLUMNS if n in variants]
    seeds = result["seeds"]
    lines = [
        "| | " + " | ".join(COLUMNS[n] for n in names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    rows = [
        ("samples/s", "samples_per_s", "{:.0f}"),
        ("seconds per 60k samples", "seconds_per_60k", "{:.1f}"),
        (f"{METRIC_LABELS['precision_at_1']}, mean of {seeds} seed(s)", "precision_at_1", "{:.4f}"),
        (f"{METRIC_LABELS['r_precision']}, mean of {seeds}", "r_precision", "{:.4f}"),
        (f"{METRIC_LABELS['map_at_r']}, mean of {seeds}", "map_at_r", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        lines.append(
            f"| {label} | " + " | ".join(fmt.format(variants[n][key]) for n in names) + " |"
        )
    a = variants["pml"]["samples_per_s"]
    lines.append(
        "| speed vs A | 1 | "
        + " | ".join(f"**{variants[n]['samples_per_s'] / a:.2f}x**" for n in names[1:])
        + " |"
    )
    cells = []
    for n in names[1:]:
        delta = result[DELTA_KEYS[n]]
        sd = f" ± {delta['sd']:.4f}" if delta["sd"] is not None else ""
        cells.append(f"{delta['mean']:+.4f}{sd}")
    lines.append("| MAP@R - A, paired by seed (mean ± sd) | | " + " | ".join(cells) + " |")
    settings, machine = result["settings"], result["machine"]
    lines += [
        "",
        f"`{result['command']}` on {machine['device_name']} ({machine['device']}; "
        f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads"
        f"{huge_pages_text(machine)}), "
        f"{result['date'][:10]}: {settings['dataset']}, "
        f"{settings['net']} D={settings['embedding_dim']}, {settings['samples']} training "
        f"samples per variant and seed, {settings['eval_queries']} test queries against "
        f"{settings['eval_references']} training references.",
        "",
        "- B's speed-ups added one at a time, ms per step: "
        + ", ".join(f"{k} {v}" for k, v in result["ablation_ms_per_step"].items())
        + ".",
    ]
    real = result["mining_loss_ms"]["real_batch"]
    lines.append(
        f"- Semi-hard mining + triplet loss + backward on a real batch: PML {real['pml']} ms, "
        f"ours fused {real['dml_core_fused']} ms ({real['ratio_pml_over_fused']}x)."
    )
    lines.append(
        f"- One snapshot ({result['snapshot_probe_size']} probe points: embed, distances, "
        f"metrics): {result['snapshot_s']} s."
    )
    if "snapshot_share_at_defaults" in result:
        d = result["snapshot_share_at_defaults"]
        lines.append(
            f"- A run at the default settings (digits, MLP, 300 steps): its {d['snapshots']} "
            f"snapshots take {d['snapshot_s']} s, {100 * d['share']:.1f}% of its "
            f"{d['training_s']} s of training."
        )
    layouts = result["layouts"]
    if layouts.get("umap_warm_2000_s") is not None:  # None: fewer than 2000 test images
        lines.append(
            f"- UMAP, 2000 points: first fit in a process {layouts['umap_first_fit_s']} s "
            f"(numba), cold {layouts['umap_cold_2000_s']} s, first warm start "
            f"{layouts['umap_warm_first_s']} s, then **{layouts['umap_warm_2000_s']} s** per "
            f"warm-started update; 10,000 points: cold {layouts['umap_cold_10000_s']} s, warm "
            f"{layouts['umap_warm_10000_s']} s. PCA: {layouts['pca_2000_s']} s / "
            f"{layouts['pca_10000_s']} s."
        )
    lines += [f"- {line}." for line in verdict_lines(result)]
    return "\n".join(lines)


def report_main(file: str) -> int:
    """Print ``format_markdown`` of a benchmark file; a missing or bad file is one clear line."""
    try:
        text = format_markdown(json.loads(Path(file).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"The benchmark file {file!r} could not be read as the output of "
            f"'python -m dml_core bench --out' or 'bench app --out': {type(err).__name__}: {err}"
        ) from err
    print(text)
    return 0
