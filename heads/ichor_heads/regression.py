"""Regression head: a CBF-quality rating, age, or any numeric manifest column."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import (
    MeanAbsoluteError,
    MeanSquaredError,
    MetricCollection,
    PearsonCorrCoef,
    R2Score,
    SpearmanCorrCoef,
)

from ichor.downstream.plugins import TaskHead

LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.smooth_l1_loss}


class RegressionHead(TaskHead):
    """Linear regressor on pooled features.

    With ``standardize`` the head learns the z-scored target (mean/std of the training
    scans, saved with the checkpoint): the loss then has the same scale for a 0-1 quality
    index and for age in years. Metrics and predictions are in the target's own units.

    Args:
        in_features: width of the pooled features.
        standardize: learn (target - target_mean) / target_std.
        target_mean, target_std: the standardisation; None takes them from the training scans.
        loss: "mse", "l1" or "huber" (on the standardised target).
        dropout: dropout on the features before the linear layer.
    """

    monitor = "mae"
    mode = "min"

    def __init__(
        self,
        in_features: int,
        standardize: bool = True,
        target_mean: float | None = None,
        target_std: float | None = None,
        loss: Literal["mse", "l1", "huber"] = "mse",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if standardize and (target_mean is None or not target_std):
            raise ValueError("standardize needs target_mean and a non-zero target_std (complete_args fills them)")
        self.shift, self.scale = (float(target_mean), float(target_std)) if standardize else (0.0, 1.0)
        self.loss_fn = LOSSES[loss]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, 1)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    @classmethod
    def complete_args(cls, args: dict[str, Any], train_targets: list) -> dict[str, Any]:
        args = dict(args)
        if args.get("standardize", True) and (args.get("target_mean") is None or args.get("target_std") is None):
            values = torch.tensor([float(v) for v in train_targets], dtype=torch.float64)
            values = values[~values.isnan()]
            if len(values) < 2:
                raise ValueError(f"standardize needs at least 2 training targets, got {len(values)}")
            if args.get("target_mean") is None:
                args["target_mean"] = float(values.mean())
            if args.get("target_std") is None:
                args["target_std"] = float(values.std()) or 1.0
        return args

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features)).squeeze(-1)

    def prepare_targets(self, values: list | torch.Tensor) -> torch.Tensor:
        targets = torch.as_tensor(
            [float(v) for v in values] if isinstance(values, list) else values, dtype=torch.float32
        )
        if targets.isnan().any():
            raise ValueError("missing target values in a training/evaluation batch (leave unlabelled scans out)")
        return targets

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs in the target's units."""
        return outputs.float() * self.scale + self.shift

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(outputs.float(), (targets.to(outputs.device).float() - self.shift) / self.scale)

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {
                "mae": MeanAbsoluteError(),
                "rmse": MeanSquaredError(squared=False),
                "pearson": PearsonCorrCoef(),
                "spearman": SpearmanCorrCoef(),
                "r2": R2Score(),
            }
        )

    def metric_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(outputs), targets.float()

    def predictions(self, outputs: torch.Tensor) -> dict[str, list]:
        return {"prediction": self.decode(outputs).cpu().tolist()}

    def figures(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        predicted, true = self.decode(outputs).cpu().numpy(), targets.float().cpu().numpy()
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        axis.scatter(true, predicted, s=12, alpha=0.7)
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        axis.plot([low, high], [low, high], "k--", linewidth=1, label="identity")
        r = (
            float(torch.corrcoef(torch.stack([torch.from_numpy(true), torch.from_numpy(predicted)]))[0, 1])
            if len(true) > 1
            else math.nan
        )
        axis.set(xlabel="true", ylabel="predicted", title=f"{len(true)} scans, r = {r:.3f}")
        axis.legend(loc="upper left")
        figure.tight_layout()
        return {"predicted_vs_true": figure}
