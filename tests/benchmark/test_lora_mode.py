"""`modes: [..., lora]` in a benchmark config: accepted, and run as the task's config in LoRA mode."""

from pathlib import Path

import pytest
import yaml

from ichor.benchmark import load_config
from ichor.benchmark.run import task_args

TASK = {"name": "dx", "target": "diagnosis", "head": "classification", "metric": "auroc", "config": "task.yaml"}


def test_lora_mode_runs_the_task_config_in_lora_mode_for_the_finetuning_epochs(tmp_path):
    path = tmp_path / "benchmark.yaml"
    raw = {"pretrain": {"mae": "x.yaml"}, "tasks": [TASK], "modes": ["linear_probe", "lora"], "epochs": {"finetune": 7}}
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    args = task_args(cfg.tasks[0], "lora", Path("encoder"), cfg)
    assert "--model.init_args.mode=lora" in args and "--trainer.max_epochs=7" in args
    path.write_text(yaml.safe_dump({**raw, "modes": ["lora_probe"]}))
    with pytest.raises(ValueError, match="mode.s. lora_probe not one of linear_probe, attentive_probe, finetune, lora"):
        load_config(path)
