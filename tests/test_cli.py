"""The `ichor` command itself: version, and trainer commands that fail in one line."""

from __future__ import annotations

import pytest
from helpers import CONFIGS

import ichor
from ichor.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ichor {ichor.__version__} (torch ") and "lightning" in out


def test_a_config_error_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.csv"
    args = ["fit", "--config", str(CONFIGS / "pretrain_demo.yaml"), f"--data.init_args.manifests=[{missing}]",
            "--trainer.accelerator=cpu"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    first = err.index("ichor fit: 1 problem in manifests:")  # after Lightning's own info lines
    assert err[first + 1].strip() == f"{missing}: manifest not found"
    assert "Traceback" not in "\n".join(err) and "--traceback" in err[-1]
    with pytest.raises(ValueError, match="manifest not found"):
        main([*args, "--traceback"])


def test_predict_needs_a_trained_checkpoint(tmp_path, monkeypatch, capsys, downstream_manifests, tiny_encoder):
    monkeypatch.chdir(tmp_path)
    args = ["predict", "--config", str(CONFIGS / "probe_diagnosis.yaml"), f"--model.init_args.encoder={tiny_encoder}",
            f"--data.init_args.manifests=[{','.join(downstream_manifests)}]", "--trainer.accelerator=cpu"]  # fmt: skip
    assert main(args) == 1
    assert "predict needs --ckpt_path, a trained checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "probe_diagnosis" / "predictions.csv").exists()
