"""`mmccd benchmark`: plan (plan.py) -> train and evaluate, in parallel where asked (jobs.py) -> pool the folds
and compare the methods (results.py) -> results.md / .csv / .json, report.html, figures/ (report.py)."""

from mmccd.pipeline.benchmark.plan import DEFAULT_METHODS, DEFAULT_PAIRS, RunSpec, parse_pair, run_name
from mmccd.pipeline.benchmark.run import (
    EXTERNAL,
    INTERNAL,
    NO_POSTPROCESS,
    PROTOCOLS,
    benchmark_command,
    run_benchmark,
)
from mmccd.pipeline.evaluate import prepare_test_store

__all__ = ["DEFAULT_METHODS", "DEFAULT_PAIRS", "EXTERNAL", "INTERNAL", "NO_POSTPROCESS", "PROTOCOLS", "RunSpec",
           "benchmark_command", "parse_pair", "prepare_test_store", "run_benchmark", "run_name"]
