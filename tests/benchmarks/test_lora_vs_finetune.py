"""benchmarks/lora_vs_finetune.py: the narrowed config runs what it says, and the comparison pairs and counts right."""

import importlib.util

import pandas as pd
import torch
from helpers import REPO

spec = importlib.util.spec_from_file_location("lora_vs_finetune", REPO / "benchmarks" / "lora_vs_finetune.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_the_demo_config_narrows_to_the_mae_with_lora_and_finetuning_at_its_lightning_budget():
    cfg = script.narrowed(str(REPO / "lightning_configs" / "benchmark_demo.yaml"))
    assert list(cfg.pretrain) == ["mae"] and cfg.modes == ["lora", "finetune"]
    assert cfg.budgets == cfg.trained_budgets == [10] and cfg.compute == ["equal_time"]
    assert not (cfg.scratch or cfg.baseline or cfg.oracle or cfg.selection)


def test_lora_minus_finetuning_is_paired_by_study_and_draw_and_counts_what_each_mode_trains(tmp_path):
    cfg = script.narrowed(str(REPO / "lightning_configs" / "benchmark_demo.yaml"))
    state = {
        "encoder.blocks.0.attn.qkv.weight": torch.zeros(6, 2),  # frozen under LoRA
        "encoder.blocks.0.attn.qkv.lora_A.query": torch.zeros(1, 2),
        "head.fc.weight": torch.zeros(2, 3),
        "head.norm.running_mean": torch.zeros(3),  # a buffer: trained by nobody
    }
    for mode in script.MODES:
        folder = tmp_path / "AD" / "mae" / mode / "budget-10" / "draw-0" / "study-01" / "checkpoints"
        folder.mkdir(parents=True)
        torch.save({"state_dict": state}, folder / "best.ckpt")
    pairs = [(fold, seed) for fold in ("study-01", "study-02") for seed in (0, 1)]
    lora = [0.7, 0.8, 0.6, 0.9]
    finetune = [0.6, 0.7, 0.5, 0.8]  # LoRA better by 0.1 on every pair: the interval excludes 0
    results = pd.DataFrame(
        [
            {"task": "AD", "fold": fold, "seed": seed, "mode": mode, "test/auroc": score}
            for mode, scores in (("lora", lora), ("finetune", finetune))
            for (fold, seed), score in zip(pairs, scores)
        ]
    )
    (row,) = script.compare(results, cfg, tmp_path).to_dict("records")
    assert row["pairs"] == 4 and abs(row["difference"] - 0.1) < 1e-9 and row["verdict"] == "wins"
    assert row["lora_trainable"] == 2 + 6 and row["finetune_trainable"] == 12 + 2 + 6
