"""The `ichor` command itself: version, and trainer commands that fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, REPO, composition, config_args

import ichor
from ichor.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ichor {ichor.__version__} (torch ") and "lightning" in out


def test_a_config_error_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.csv"
    args = ["fit", *config_args("pretrain_demo.yaml"), f"--data.init_args.manifests=[{missing}]",
            "--trainer.accelerator=cpu"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert f"ichor fit: {missing}: manifest not found" in err  # one line, after Lightning's own info lines
    assert "Traceback" not in "\n".join(err) and "--traceback" in err[-1]
    with pytest.raises(ValueError, match="manifest not found"):
        main([*args, "--traceback"])


def test_predict_needs_a_trained_checkpoint(tmp_path, monkeypatch, capsys, downstream_manifests, tiny_encoder):
    monkeypatch.chdir(tmp_path)
    args = ["predict", *config_args("probe_diagnosis.yaml"), f"--model.init_args.encoder={tiny_encoder}",
            f"--data.init_args.manifests=[{','.join(downstream_manifests)}]", "--trainer.accelerator=cpu"]  # fmt: skip
    assert main(args) == 1
    assert "predict needs --ckpt_path, a trained checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "probe_diagnosis" / "predictions.csv").exists()


def cli(*args: str):
    from ichor.training.runs import IchorCLI

    return IchorCLI(args=list(args), run=False)


@pytest.mark.parametrize(
    ("config", "monitor", "mode"),
    [("pretrain_demo.yaml", "val/loss", "min"), ("probe_diagnosis.yaml", "val/auroc", "max"),
     ("finetune_quality.yaml", "val/mae", "min")],
)  # fmt: skip
def test_ichor_adds_logger_lr_monitor_and_a_checkpoint_on_the_models_metric(
    tmp_path, monkeypatch, config, monitor, mode
):
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    monkeypatch.chdir(tmp_path)
    trainer = cli(*config_args(config), "--trainer.accelerator=cpu").trainer
    name = config.removesuffix(".yaml")
    checkpoint = trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode) == (monitor, mode)
    # built in Python, not by `ichor fit`: no folder claimed, Lightning checkpoints into the logger's next version
    assert checkpoint.dirpath is None and checkpoint.save_last and not (tmp_path / "runs").exists()
    assert isinstance(trainer.logger, TensorBoardLogger) and trainer.logger.name == name
    assert sum(isinstance(c, LearningRateMonitor) for c in trainer.callbacks) == 1


def test_no_logger_drops_the_lr_monitor_and_no_checkpointing_the_checkpoint(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    monkeypatch.chdir(tmp_path)
    trainer = cli(
        *config_args("pretrain_demo.yaml"), "--trainer.logger=false", "--trainer.enable_checkpointing=false"
    ).trainer
    assert not any(isinstance(c, (LearningRateMonitor, ModelCheckpoint)) for c in trainer.callbacks)


def test_a_config_listing_its_own_checkpoint_callback_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((CONFIGS / "pretrain_demo.yaml").read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}]  # as before 0.1
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    assert main(["fit", *config_args("pretrain_demo.yaml")[:-1], str(old)]) == 1
    assert "trainer.callbacks lists a ModelCheckpoint, which ichor fit adds itself" in capsys.readouterr().err


def test_test_needs_a_checkpoint_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["test", *config_args("pretrain_demo.yaml")]) == 1
    assert "test needs --ckpt_path" in capsys.readouterr().err


def test_every_module_imports_first():
    """A user's plugin or YAML may import any ichor module first (the CI once broke on a cycle)."""
    script = """
import importlib, pkgutil, sys
import ichor
names = [m.name for m in pkgutil.walk_packages(ichor.__path__, "ichor.") if not m.name.endswith("__main__")]
for name in names:
    for loaded in [m for m in sys.modules if m == "ichor" or m.startswith("ichor.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print(len(names))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) > 30


def test_a_run_built_from_python_says_nothing_of_the_callers_command_line(tmp_path, monkeypatch, recwarn):
    """`ichor benchmark` and `ichor cv` build their runs in Python (a Run): no warning about the caller's argv."""
    from ichor.training.runs import Run, build_run

    monkeypatch.setattr(sys, "argv", ["ichor", "benchmark", "--config", "benchmark.yaml"])
    cli = build_run(Run.of(composition("pretrain_demo.yaml"), {"trainer": {"accelerator": "cpu"}}), tmp_path)
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


def test_a_run_composes_files_then_mappings_as_ichor_fit_composes_its_command_line():
    """Config files in order, then overrides as mappings (later wins, the class kept): the same parsed
    config as the command line `ichor fit --config ... --key value`, and named after its last file."""
    from ichor.training.runs import Run, parse_run

    files = composition("probe_diagnosis.yaml")
    run = Run.of(files, {"trainer": {"max_epochs": 3}}, {"model": {"init_args": {"optim": {"lr": 0.5}}}})
    config = parse_run(run.override({"trainer": {"max_epochs": 4}}))
    typed = Run(tuple(map(str, files)), command_line=("--trainer.max_epochs=4", "--model.init_args.optim.lr=0.5"))
    assert config == parse_run(typed)
    assert config.trainer.max_epochs == 4 and config.model.init_args.optim.lr == 0.5
    assert config.model.class_path == "ichor.downstream.DownstreamTask"  # the file's class, kept
    assert config.data.init_args.spacing == 4.0 and config.data.init_args.target == "diagnosis"  # fragment + file
    assert [Path(str(f)).name for f in config.config] == ["demo.yaml", "probe_diagnosis.yaml"]


def test_preprocess_reads_the_data_of_a_composed_config_and_options_win():
    """`ichor preprocess --config a --config b` caches the data the same files give `ichor fit`."""
    import argparse

    from ichor.cli import preprocess

    parser = argparse.ArgumentParser()
    preprocess.add_arguments(parser)
    args = parser.parse_args([*config_args("probe_diagnosis.yaml"), "--shape", "32", "48", "32"])
    settings = preprocess._settings(args)
    assert settings["manifests"] == ["data_manifests/demo"] and settings["spacing"] == 4.0  # from the fragment
    assert settings["shape"] == (32, 48, 32) and settings["cache_dir"] == ".ichor_cache"  # the option wins


def test_a_config_given_without_its_fragment_says_which_to_add(monkeypatch, capsys):
    """The demo configs list only what differs from lightning_configs/common/demo.yaml: alone, they name it."""
    monkeypatch.chdir(REPO)
    alone = ["fit", "--config", "lightning_configs/probe_diagnosis.yaml", "--print_config"]
    with pytest.raises(SystemExit):  # jsonargparse: no data class without the fragment
        main(alone)
    assert "add --config lightning_configs/common/demo.yaml first" in capsys.readouterr().err
    with pytest.raises(SystemExit) as printed:  # --print_config exits 0 once the config is whole
        main(["fit", "--config", "lightning_configs/common/demo.yaml", *alone[1:]])
    assert printed.value.code in (0, None) and "add --config" not in capsys.readouterr().err
