"""Task-head plugins: entry-point discovery of built-in and third-party heads, head maths and metrics."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import DATA_ARGS

from ichor.cli import main
from ichor.downstream import HeadError, TaskHead, installed_heads, resolve_head
from ichor_heads.classification import ClassificationHead
from ichor_heads.regression import RegressionHead

EXTERNAL_HEAD = '''
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MetricCollection

from ichor.downstream import TaskHead


class AgeHead(TaskHead):
    """Brain age from pooled features, with a small MLP and an L1 loss."""

    monitor = "mae"
    mode = "min"

    def __init__(self, in_features: int, hidden: int = 32):
        super().__init__(in_features)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features):
        return self.mlp(features).squeeze(-1)

    def prepare_targets(self, values):
        return torch.as_tensor(values, dtype=torch.float32)

    def loss(self, outputs, targets):
        return nn.functional.l1_loss(outputs, targets)

    def metrics(self):
        return MetricCollection({"mae": MeanAbsoluteError()})

    def predictions(self, outputs):
        return {"prediction": outputs.tolist()}
'''


def test_builtin_heads_are_entry_points(capsys):
    heads = installed_heads()
    assert heads["classification"].value == "ichor_heads.classification:ClassificationHead"
    assert heads["regression"].value == "ichor_heads.regression:RegressionHead"
    assert heads["classification"].distribution.startswith("ichor ")
    assert resolve_head("classification") is ClassificationHead
    assert resolve_head("ichor_heads.regression.RegressionHead") is RegressionHead
    assert main(["heads"]) == 0
    out = capsys.readouterr().out
    assert "classification  (ichor_heads.classification:ClassificationHead; from ichor" in out
    assert "class_weights: Literal['balanced'] | list[float] | None = None" in out
    assert "monitor: val/mae (min)" in out


def test_unknown_or_wrong_heads_are_refused():
    with pytest.raises(HeadError, match="installed heads are classification, regression"):
        resolve_head("survival")
    with pytest.raises(HeadError, match="not a subclass of ichor.downstream.TaskHead"):
        resolve_head("torch.nn.Linear")
    with pytest.raises(HeadError, match="cannot import"):
        resolve_head("no_such_package.Head")


def external_package(root):
    """A head package outside the repo, 'installed' by a dist-info folder on PYTHONPATH."""
    (root / "agehead").mkdir(parents=True)
    (root / "agehead" / "__init__.py").write_text(EXTERNAL_HEAD)
    info = root / "agehead-0.1.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text("Metadata-Version: 2.1\nName: agehead\nVersion: 0.1\n")
    info.joinpath("entry_points.txt").write_text("[ichor.heads]\nage = agehead:AgeHead\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_external_head_is_found_and_trains(tmp_path, downstream_manifests, tiny_encoder):
    """`ichor heads` lists a head installed outside the repo and `ichor fit` trains it (one subprocess)."""
    env = external_package(tmp_path / "site")
    manifests, encoder = downstream_manifests, tiny_encoder
    data = [
        f"--data.{key}={str(value).replace('(', '[').replace(')', ']') if value is not None else 'null'}"
        for key, value in DATA_ARGS.items()
    ]
    fit = [
        "fit",
        "--model=ichor.downstream.DownstreamTask",
        f"--model.encoder={encoder}",
        "--model.head=age",
        "--model.head_args={hidden: 8}",
        "--data=ichor.data.CBFDataModule",
        "--data.target=age",
        f"--data.manifests=[{','.join(manifests)}]",
        f"--data.cache_dir={tmp_path / 'cache'}",
        *data,
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={tmp_path / 'logs'}",
        "--trainer.enable_progress_bar=false",
    ]
    script = f"import sys; from ichor.cli import main; main(['heads']); sys.exit(main({fit!r}))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "age  (agehead:AgeHead; from agehead 0.1)" in run.stdout and "hidden: int = 32" in run.stdout
    saved = torch.load(next((tmp_path / "logs").rglob("*.ckpt")), weights_only=True)
    assert saved["hyper_parameters"]["head"] == "age"
    assert any(key.startswith("head.mlp.") for key in saved["state_dict"])


def test_classification_head_metrics_on_known_inputs():
    args = ClassificationHead.complete_args({"class_weights": "balanced"}, ["CN", "CN", "CN", "AD", ""])
    assert args["classes"] == ["AD", "CN"]
    assert args["class_weights"] == pytest.approx([2.0, 2 / 3])  # n / (k * n_class), missing labels ignored
    head = ClassificationHead(4, **args)
    targets = head.prepare_targets(["CN", "CN", "CN", "AD"])
    assert targets.tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match=r"labels \['FTD'\] are not among the classes \['AD', 'CN'\]"):
        head.prepare_targets(["FTD"])
    # predicted classes: CN, CN, AD, AD -> recall CN 2/3, AD 1 -> balanced accuracy 5/6
    logits = torch.tensor([[0.0, 3.0], [0.0, 2.0], [1.0, 0.0], [2.0, 0.0]])
    metrics = head.metrics()
    metrics.update(*head.metric_inputs(logits, targets))
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["balanced_accuracy"] == pytest.approx(5 / 6)
    assert values["auroc"] == pytest.approx(1.0)  # a ranking: the AD scan has the highest AD probability
    assert values["f1"] == pytest.approx((0.8 + 2 / 3) / 2)  # per-class F1: CN 0.8, AD 2/3
    rows = head.predictions(logits)
    assert rows["prediction"] == ["CN", "CN", "AD", "AD"]
    assert torch.allclose(torch.tensor(rows["prob_AD"]) + torch.tensor(rows["prob_CN"]), torch.ones(4))
    # class weights change the loss: the lone AD scan counts 3x as much as each CN scan
    unweighted = ClassificationHead(4, classes=["AD", "CN"])
    assert not torch.isclose(head.loss(logits, targets), unweighted.loss(logits, targets))
    assert "confusion_matrix" in head.figures(logits, targets)
    assert ClassificationHead.complete_args({}, [1.0, 0.0, 1.0])["classes"] == ["0", "1"]


def test_regression_head_standardises_and_reports_original_units():
    args = RegressionHead.complete_args({}, [1.0, 2.0, 3.0, 5.0, float("nan")])
    assert args["target_mean"] == pytest.approx(2.75) and args["target_std"] == pytest.approx(1.707825, rel=1e-5)
    head = RegressionHead(4, **args)
    targets = head.prepare_targets(torch.tensor([1.0, 2.0, 3.0, 5.0]))
    outputs = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.75) / args["target_std"]  # predicts 1, 2, 3, 4
    assert head.predictions(outputs)["prediction"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert float(head.loss((targets - 2.75) / args["target_std"], targets)) == pytest.approx(0.0, abs=1e-10)
    metrics = head.metrics()
    metrics.update(*head.metric_inputs(outputs, targets))
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["mae"] == pytest.approx(0.25) and values["rmse"] == pytest.approx(0.5)
    assert values["spearman"] == pytest.approx(1.0) and values["pearson"] == pytest.approx(0.9827076, rel=1e-5)
    assert values["r2"] == pytest.approx(1 - 1 / 8.75)
    assert "predicted_vs_true" in head.figures(outputs, targets)
    with pytest.raises(ValueError, match="missing target"):
        head.prepare_targets(torch.tensor([1.0, float("nan")]))
    assert issubclass(RegressionHead, TaskHead) and RegressionHead.monitor == "mae"
