"""The benchmark's YAML schema: which encoders to pre-train, which tasks, modes, label budgets and folds.

One file describes a whole comparison (MAE vs SimCLR vs Genesis vs scratch vs a regional-mean
baseline), so that the paper's table is re-made by one command. Config paths are relative to
the current directory, like ``ichor fit --config``; a method's or a task's Lightning config may be
one file or a list composed in order (``[lightning_configs/common/demo.yaml, lightning_configs/pretrain_demo.yaml]``,
as ``ichor fit --config a --config b``). Overrides are nested mappings of config keys, merged the
way a later config file is (``{model: {init_args: {backbone: {overrides: {decoder_depth: 4}}}}}``).
``tasks`` may be the path of a YAML list of tasks, so that benchmarks share their task definitions.

``linear_probe`` is the classic linear evaluation of frozen features: each encoder embeds every
scan once, and the same standardised logistic (ridge) regression as the regional-mean baseline
is fitted on each fold's training scans - only the features differ, so the comparison is of
representations, not of optimisers. ``finetune`` trains the task's Lightning config end to end;
``lora`` trains it with the encoder frozen and LoRA adapters on its attention (the paper's adaptation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

MODES = ("linear_probe", "attentive_probe", "finetune", "lora")
TRAINED_MODES = ("attentive_probe", "finetune", "lora", "scratch")  # Lightning runs; the linear probe is a linear model
CLASSIFICATION_METRICS = ("balanced_accuracy", "auroc")
REGRESSION_METRICS = ("mae", "rmse", "pearson", "spearman", "r2")
STAGES = ("pretrain", "pretrain_time_cap", "finetune", "scratch")
COMPUTE = (
    "equal_time",
    "equal_epochs",
)  # how pre-training methods are made comparable; the first listed is the main table
PROBE_KEYS = ("pooling", "blocks", "regions")


def config_files(value: str | list[str], what: str) -> list[str]:
    """One Lightning config path, or several composed in order, as a list."""
    files = [value] if isinstance(value, str) else value
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{what}: a config path or a list of them, got {value!r}")
    return files


def overrides_mapping(value: Any, what: str) -> dict[str, Any]:
    """Overrides as a nested mapping of config keys (``{trainer: {max_epochs: 5}}``)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ValueError(
            f"{what}: overrides are a mapping of config keys, e.g. {{trainer: {{max_epochs: 5}}}}, "
            f"not --key=value strings; got {value!r}"
        )
    return value


@dataclass
class TaskSpec:
    """One downstream task: the manifest column it predicts and the config that trains it.

    ``config`` is a ``DownstreamTask`` config (one file or several composed in order) run as
    ``finetune`` and as ``scratch`` (its monitor, lr and head settings are the task's own); its
    data section also says which scans the linear probe embeds (manifests, cache, pooling). Left
    out, it is the benchmark's ``task_configs`` entry for the task's head. ``target_values`` keeps
    only scans with one of these values, e.g. ``[CN, AD]`` for AD against controls out of a 4-class column.
    """

    name: str
    target: str
    head: str
    metric: str
    config: list[str] = field(default_factory=list)
    target_values: list[str] | None = None

    def __post_init__(self) -> None:
        self.config = config_files(self.config, f"task {self.name!r}: config") if self.config else []
        known = CLASSIFICATION_METRICS if self.head == "classification" else REGRESSION_METRICS
        if self.head in ("classification", "regression") and self.metric not in known:
            raise ValueError(
                f"task {self.name!r}: metric {self.metric!r} is not one of {', '.join(known)} "
                f"(the {self.head} head's test metrics)"
            )

    @property
    def is_classification(self) -> bool:
        return self.head == "classification"


@dataclass
class PretrainSpec:
    """One pre-training method: its config (one file or several composed in order) and overrides for it alone."""

    config: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = config_files(self.config, "pretrain: config")
        self.overrides = overrides_mapping(self.overrides, f"pretrain {self.config[-1]}: overrides")


@dataclass
class BenchmarkConfig:
    """Everything ``ichor benchmark`` runs.

    Args:
        pretrain: method name -> pre-training config(s) (``mae: lightning_configs/pretrain_demo.yaml``, or a
            list composed in order), or -> ``{config: ..., overrides: {...}}`` for overrides of that method alone.
        encoders: method name -> an encoder used as it is, beside the pre-trained ones: an export
            folder (``ichor export-encoder``, ``ichor import-encoder``) or a pinned URL.
        tasks: the downstream tasks, or the path of a YAML file listing them.
        task_configs: head (``classification``, ``regression``) -> the config(s) of a task that names none.
        modes: adaptation modes run for every pre-trained encoder (``lora`` and ``attentive_probe``
            run as long as ``finetune``: ``epochs.finetune``).
        scratch: also train the finetune architecture from random weights, once per task.
        baseline: also fit logistic/linear regression on regional mean CBF (GM, WM, brain halves).
        budgets: label budgets of each fold's training subjects: a fraction in (0, 1] of them, or a
            whole number >= 2 of labelled subjects per class (10, 25: the few-label regime).
        trained_budgets: the budgets at which Lightning modes (attentive probe, fine-tuning,
            scratch) run; default: all. Linear probes are cheap and run at every budget.
        seeds: the label draws (budget draws and probe seeds) of the linear models: a list of seeds, or
            a count N for seeds ``seed .. seed + N - 1``. Default: ``[seed]``.
        trained_draws: how many of those draws (the first) the Lightning modes run.
        probe: features of the linear probe: ``pooling`` (brain_mean | region | mean | max),
            ``blocks`` (last blocks concatenated), ``regions`` (per axis, for region pooling); a list
            of such mappings makes each a candidate, chosen on the selection cohort like a mode.
        selection: the cohort on which each method's mode and probe features are chosen, by the
            same protocol (tasks, budgets, draws, folds), never a benchmark cohort:
            ``{manifests: [data_manifests/probe]}``. Without it each method keeps its first mode
            in ``modes`` order (declared, not measured).
        oracle: also fit the linear model on the oracle features ``ichor synth`` records (the ceiling).
        global_cbf: give every model (probes, floor, ceiling, Lightning heads) the same global CBF
            scalars (log brain mean and spread) beside its features.
        compute: how pre-training methods are made comparable, the main table first: ``equal_time``
            (every method pre-trains for ``pretrain_budget_minutes`` of wall-clock time, Trainer
            ``max_time``; its schedule spans ``epochs.pretrain_time_cap`` epochs, which no method should
            reach) and ``equal_epochs`` (``epochs.pretrain``). A second entry pre-trains every method
            again and runs the linear models on it (the second table).
        linear_workers: processes that fit the linear models (0: the benchmark's own process); each
            fits with one BLAS thread.
        reference: the method whose paired differences against every other the report shows.
        folds: number of subject-grouped folds; ignored with ``by_study`` (each study held out).
        epochs: max_epochs per Lightning stage (``pretrain``: equal epochs; ``pretrain_time_cap``: the
            schedule's length under equal time; ``finetune``, ``scratch``).
        overrides: config overrides for every run (data, trainer), e.g. manifests, as a nested mapping.
        pretrain_overrides / task_overrides: overrides for pre-training runs / downstream runs only.
    """

    pretrain: dict[str, PretrainSpec]
    tasks: list[TaskSpec]
    task_configs: dict[str, list[str]] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    scratch: bool = True
    baseline: bool = True
    budgets: list[float] = field(default_factory=lambda: [0.1, 1.0])
    trained_budgets: list[float] | None = None
    seeds: list[int] | int | None = None
    trained_draws: int = 1
    probe: list[dict] | dict = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    oracle: bool = False
    global_cbf: bool = True
    compute: list[str] = field(default_factory=lambda: ["equal_epochs"])
    pretrain_budget_minutes: float | None = None
    linear_workers: int = 0
    reference: str = "mae"
    folds: int = 5
    by_study: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    epochs: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    task_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("overrides", "pretrain_overrides", "task_overrides"):
            setattr(self, key, overrides_mapping(getattr(self, key), f"benchmark config: {key}"))
        if not self.pretrain and not self.encoders:
            raise ValueError("benchmark config: neither `pretrain` nor `encoders` names a method")
        self.pretrain = {
            method: spec
            if isinstance(spec, PretrainSpec)
            else PretrainSpec(**spec)
            if isinstance(spec, dict)
            else PretrainSpec(spec)
            for method, spec in self.pretrain.items()
        }
        if {"scratch", "regional_mean", "oracle"} & (set(self.pretrain) | set(self.encoders)):
            raise ValueError(
                "benchmark config: `scratch`, `regional_mean` and `oracle` are reserved names, not pre-training methods"
            )
        if both := sorted(set(self.pretrain) & set(self.encoders)):
            raise ValueError(f"benchmark config: {', '.join(both)} named under both `pretrain` and `encoders`")
        if not self.tasks:
            raise ValueError("benchmark config: `tasks` is empty")
        self.task_configs = {
            head: config_files(files, f"benchmark config: task_configs.{head}")
            for head, files in self.task_configs.items()
        }
        for task in self.tasks:
            task.config = task.config or self.task_configs.get(task.head, [])
            if not task.config:
                raise ValueError(
                    f"benchmark config: task {task.name!r} names no config, nor does task_configs.{task.head}"
                )
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"benchmark config: mode(s) {', '.join(bad)} not one of {', '.join(MODES)}")
        bad = [b for b in self.budgets if not (0 < b <= 1 or (b >= 2 and float(b).is_integer()))]
        if bad:
            raise ValueError(
                f"benchmark config: label budgets are fractions in (0, 1] or whole numbers >= 2 of "
                f"subjects per class, got {bad}"
            )
        self.trained_budgets = self.budgets if self.trained_budgets is None else self.trained_budgets
        if missing := [b for b in self.trained_budgets if b not in self.budgets]:
            raise ValueError(f"benchmark config: trained_budgets {missing} are not in budgets {self.budgets}")
        self.seeds = list(range(self.seed, self.seed + self.seeds)) if isinstance(self.seeds, int) else self.seeds
        self.seeds = self.seeds or [self.seed]
        if not 1 <= self.trained_draws <= len(self.seeds):
            raise ValueError(
                f"benchmark config: trained_draws {self.trained_draws} not in 1..{len(self.seeds)} (seeds)"
            )
        self.probe = [self.probe] if isinstance(self.probe, dict) else self.probe
        for probe in self.probe:
            if unknown := set(probe) - set(PROBE_KEYS):
                raise ValueError(f"benchmark config: probe has unknown key(s) {', '.join(sorted(unknown))}")
        if self.selection is not None and not self.selection.get("manifests"):
            raise ValueError("benchmark config: selection names no manifests, e.g. {manifests: [data_manifests/probe]}")
        self._check_compute()
        unknown = set(self.epochs) - set(STAGES)
        if unknown:
            raise ValueError(f"benchmark config: epochs has unknown stage(s) {', '.join(sorted(unknown))}")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark config: task names repeat: {names}")

    def _check_compute(self) -> None:
        if not self.compute or set(self.compute) - set(COMPUTE) or len(set(self.compute)) != len(self.compute):
            raise ValueError(f"benchmark config: compute is a list of {', '.join(COMPUTE)}, got {self.compute}")
        if "equal_time" in self.compute and not (self.pretrain_budget_minutes or 0) > 0:
            raise ValueError("benchmark config: compute equal_time needs pretrain_budget_minutes (> 0)")
        if "equal_time" in self.compute and "pretrain_time_cap" not in self.epochs:
            raise ValueError(
                "benchmark config: compute equal_time needs epochs.pretrain_time_cap (the schedule's length)"
            )

    def probe_mode(self, probe: dict) -> str:
        """The mode name of one linear-probe candidate: ``linear_probe``, or its features when there are several."""
        if len(self.probe) == 1:
            return "linear_probe"
        return "linear_probe (" + ", ".join(f"{key} {probe[key]}" for key in PROBE_KEYS if key in probe) + ")"


def load_config(path: str | os.PathLike, extra: dict | None = None) -> BenchmarkConfig:
    """Read and check a benchmark YAML; ``extra`` keys replace the file's (tests, command-line options)."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a benchmark config is a mapping, got {type(raw).__name__}")
    raw.update(extra or {})
    allowed = {f.name for f in fields(BenchmarkConfig)}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    tasks = raw.get("tasks", [])
    if isinstance(tasks, str):  # the path of a shared list of tasks
        tasks = yaml.safe_load(Path(tasks).read_text()) or []
    try:
        tasks = [TaskSpec(**task) for task in tasks]
        return BenchmarkConfig(**{**raw, "tasks": tasks})
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
