"""The device check: ``python -m dml_core gpu-check``, everything that needs a real GPU, in one go.

On a machine with a CUDA GPU it runs, in a few minutes:

1. the CUDA tests (``tests/test_gpu_path.py`` and ``tests/test_train.py -k cuda``: a fused
   step's host syncs counted by CUDA's own sync debug mode, training on the GPU then resuming
   on the CPU and back);
2. a run trained on the GPU and stopped, resumed in a process that sees no GPU
   (``CUDA_VISIBLE_DEVICES=""``), and the reverse: its checkpoint loads and its sampler is
   reseeded, saying so;
3. a real out-of-memory in the middle of a run (an allocation larger than the GPU), then
   ``torch.cuda.memory_allocated()``, which must be back where it was before the run;
4. ``bench --quick --device cuda`` (each variant warmed up on throwaway copies first), written
   to ``assets/bench-cuda.json`` (FashionMNIST where present, else digits).

It prints one line per check and a summary (also written to ``assets/gpu-check.json``) and
exits 0 when every check passed, 1 otherwise. Without a CUDA GPU it prints one line and exits 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ("tests/test_gpu_path.py", "tests/test_train.py", "-k", "cuda")
CROSS = {"steps": 40, "snapshot_every": 10, "probe_size": 100, "final_eval": False}


def _child(code: str, *, gpu: bool, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -c code`` from the repository root, with or without the GPU visible."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def train_until(root: str, run_id: str, stop_at: int, resume: bool) -> str:
    """Train (or resume) a run of ``root`` until ``stop_at`` steps; returns the final state."""
    from dml_core.runs import RunStore
    from dml_core.services.jobs import train_and_save

    store = RunStore(root)
    if resume:
        store.set_status(run_id, state="stopped")
    state = train_and_save(
        store.config(run_id), store, run_id, resume=resume, control=lambda s: s < stop_at
    )
    return str(state)


def _step(root: Path, run_id: str, stop_at: int, resume: bool, gpu: bool) -> dict[str, Any]:
    """``train_until`` in a child process; returns the run's status afterwards."""
    from dml_core.runs import RunStore

    code = (
        "from dml_core.gpu_check import train_until; "
        f"print(train_until({str(root)!r}, {run_id!r}, {stop_at}, {resume}))"
    )
    done = _child(code, gpu=gpu)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return RunStore(root).status(run_id)


def check_cross_device(root: Path) -> str:
    """GPU -> CPU and CPU -> GPU: stop half way on one device, finish on the other."""
    from dml_core.config import make_config
    from dml_core.runs import RunStore

    store = RunStore(root)
    lines = []
    for first, then in ((True, False), (False, True)):
        run_id = store.create(make_config(**CROSS, device="auto"))
        half = _step(root, run_id, CROSS["steps"] // 2, resume=False, gpu=first)
        assert half["state"] == "stopped", half
        assert half["device"].startswith("CUDA") == first, half["device"]
        end = _step(root, run_id, CROSS["steps"] + 1, resume=True, gpu=then)
        assert end["state"] == "finished", end
        assert "reseeded" in end.get("message", ""), end
        assert store.load_checkpoint(run_id)["step"] == CROSS["steps"]
        lines.append(f"{half['device']} -> {end['device']}")
    return "; ".join(lines)


def check_out_of_memory(root: Path) -> str:
    """A real allocation failure after 5 steps: the run fails with advice, memory returns."""
    from dml_core.config import make_config
    from dml_core.runs import RunStore
    from dml_core.services.jobs import train_and_save
    from dml_core.train import Trainer

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    original = Trainer.train_step
    total = torch.cuda.get_device_properties(0).total_memory

    def greedy(self: Trainer) -> Any:
        if self.step == 5:
            torch.empty(2 * total, dtype=torch.uint8, device=self.device)  # cannot fit
        return original(self)

    store = RunStore(root)
    cfg = make_config(steps=20, probe_size=100, final_eval=False, device="cuda")
    run_id = store.create(cfg)
    Trainer.train_step = greedy  # type: ignore[method-assign]
    try:
        state = train_and_save(cfg, store, run_id)
    finally:
        Trainer.train_step = original  # type: ignore[method-assign]
    after, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    message = store.status(run_id)["message"]
    assert str(state) == "failed", state
    assert message.startswith("Out of GPU memory"), message
    assert after <= before, f"{after - before} bytes still allocated after the failed run"
    return (
        f"memory_allocated before the run {before} B, after its failure {after} B "
        f"(reserved {reserved} B); {message}"
    )


def check_bench(out: Path) -> str:
    """``bench --quick --device cuda`` to ``out`` (FashionMNIST where present, else digits)."""
    from dml_core.bench import run_bench
    from dml_core.data import DatasetError, load_dataset
    from dml_core.runs import atomic_write_json

    dataset = "fashion-mnist"
    try:
        load_dataset(dataset)
    except DatasetError:
        dataset = "digits"
    command = f"python -m dml_core bench --quick --device cuda --dataset {dataset} --out {out}"
    result = run_bench(dataset, "cuda", quick=True, command=command)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return f"{dataset}: B / A = {result['ratio']} samples/s; written to {out}"


def check_tests() -> str:
    """The CUDA tests, in a child pytest."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    assert done.returncode == 0, done.stdout[-3000:]
    assert "skipped" not in last, last  # on a GPU machine every CUDA test runs
    return last


def main(out_dir: str = "assets") -> int:
    """Run every check; one line each on stdout; exit status 0 all passed, 1 not, 2 no GPU."""
    if not torch.cuda.is_available():
        print(
            "python -m dml_core: error: gpu-check needs a CUDA GPU, and none is available here.",
            file=sys.stderr,
        )
        return 2
    out = Path(out_dir)
    checks: dict[str, Callable[[], str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checks = {
            "cuda tests": check_tests,
            "train, stop, resume across devices": lambda: check_cross_device(Path(tmp, "x")),
            "out of memory": lambda: check_out_of_memory(Path(tmp, "oom")),
            "bench --quick --device cuda": lambda: check_bench(out / "bench-cuda.json"),
        }
        results: dict[str, dict[str, Any]] = {}
        for name, check in checks.items():
            start = time.perf_counter()
            try:
                results[name] = {"ok": True, "detail": check()}
            except Exception as err:  # report every check, whatever one of them raised
                results[name] = {"ok": False, "detail": f"{type(err).__name__}: {err}"[:3000]}
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            mark = "PASS" if results[name]["ok"] else "FAIL"
            print(f"{mark} {name} ({results[name]['seconds']} s): {results[name]['detail']}")
            sys.stdout.flush()
    summary = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "checks": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1
