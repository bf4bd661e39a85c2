"""benchmarks/probe_power.py: the encoder's two ends are the weights its recorded run started from and ended with."""

import importlib.util
import json

import torch
import yaml
from helpers import REPO
from lightning.pytorch.callbacks import Callback

from ichor.training.runs import Run, build_run

spec = importlib.util.spec_from_file_location("probe_power", REPO / "benchmarks" / "probe_power.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


class FirstWeights(Callback):
    """The pre-trainer's weights as training starts: what the online probe reads first."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {name: value.clone() for name, value in pl_module.state_dict().items()}


def test_the_initial_weights_are_rebuilt_from_the_recorded_run_and_the_final_read_from_its_last_checkpoint(
    tmp_path, downstream_manifests
):
    config = {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),  # the split table and config.yaml: not the CWD
        },
        "model": {
            "class_path": "ichor.pretrain.MAEPretrainer",
            "init_args": {"backbone": {"preset": "mae_vit_micro", "patch_size": 8}, "seed": 3},
        },
        "data": {
            "class_path": "ichor.data.CBFDataModule",
            "init_args": {
                "manifests": [str(m) for m in downstream_manifests],
                "cache_dir": str(tmp_path / "cache"),
                "spacing": 4.0,
                "shape": [16, 16, 16],
                "batch_size": 4,
                "num_workers": 0,
                "progress": False,
            },
        },
    }
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    run = Run.of(path, {"model": {"init_args": {"mask_ratio": 0.5}}})  # an override, as the benchmark records them
    folder = tmp_path / "pretrain-equal-time" / "mae"
    cli = build_run(run, folder)
    cli.trainer.callbacks.append(first := FirstWeights())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (folder / "pretrain_args.json").write_text(json.dumps({"run": run.record()}))

    model, data, weights = script.encoder_ends(folder, tmp_path / "scratch")
    assert model.hparams.mask_ratio == 0.5 and tuple(data.harmonisation_settings()["shape"]) == (16, 16, 16)
    final = cli.model.state_dict()
    assert weights["initial"].keys() == first.state.keys() == weights["final"].keys()
    assert all(torch.equal(weights["initial"][name], first.state[name]) for name in first.state)
    assert all(torch.equal(weights["final"][name], final[name]) for name in final)
    assert not all(torch.equal(weights["initial"][name], final[name]) for name in final)  # it trained
