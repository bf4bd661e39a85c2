"""``ichor benchmark``: pre-training methods compared on downstream tasks, label budgets and folds."""

from ichor.benchmark.config import BenchmarkConfig, PretrainSpec, TaskSpec, load_config
from ichor.benchmark.run import run_benchmark

__all__ = ["BenchmarkConfig", "PretrainSpec", "TaskSpec", "load_config", "run_benchmark"]
