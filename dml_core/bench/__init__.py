"""The benchmark: dml_core's training path against a pytorch-metric-learning loop, one process.

``run`` races A against B (``run_bench``, ``main``); ``pml_loop`` is A; ``timing`` holds the
clocks and the side timings; ``report`` formats a result (``report_main``: the README block).
"""

from dml_core.bench.report import report_main
from dml_core.bench.run import main, run_bench

__all__ = ["main", "report_main", "run_bench"]
