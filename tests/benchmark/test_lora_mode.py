"""`modes: [..., lora]` in a benchmark config: accepted, and run as the task's config in LoRA mode."""

from pathlib import Path

import pytest
import yaml

from ichor.benchmark import load_config
from ichor.benchmark.run import task_run

TASK = {"name": "dx", "target": "diagnosis", "head": "classification", "metric": "auroc", "config": "task.yaml"}


def test_lora_mode_runs_the_task_config_in_lora_mode_for_the_finetuning_epochs(tmp_path):
    path = tmp_path / "benchmark.yaml"
    raw = {"pretrain": {"mae": "x.yaml"}, "tasks": [TASK], "modes": ["linear_probe", "lora"], "epochs": {"finetune": 7}}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run = task_run(cfg.tasks[0], "lora", Path("encoder"), cfg)
    model = next(overrides["model"]["init_args"] for overrides in run.overrides if "model" in overrides)
    assert (model["mode"], model["encoder"]) == ("lora", "encoder")
    assert {"trainer": {"max_epochs": 7}} in run.overrides
    path.write_text(yaml.safe_dump({**raw, "modes": ["lora_probe"]}))
    with pytest.raises(ValueError, match="mode.s. lora_probe not one of linear_probe, attentive_probe, finetune, lora"):
        load_config(path)
