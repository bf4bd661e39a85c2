"""Classification head: diagnosis (CN/AD/FTD/...) or any categorical manifest column."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassF1Score,
)
from torchmetrics.functional.classification import multiclass_confusion_matrix

from ichor.downstream.plugins import TaskHead


def label_strings(values: list | torch.Tensor) -> list[str]:
    """Manifest values as class names: text as is, integral numbers without ".0", missing as ""."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    names = []
    for value in values:
        if isinstance(value, float):
            value = "" if math.isnan(value) else (int(value) if value.is_integer() else value)
        names.append(str(value))
    return names


class ClassificationHead(TaskHead):
    """Linear classifier on pooled features, trained with (optionally class-weighted) cross-entropy.

    Binary tasks are two-class tasks here, so that AUROC, balanced accuracy and F1 are the
    same macro averages for any number of classes.

    Args:
        in_features: width of the pooled features.
        classes: class names in output order; None takes the sorted labels of the training scans.
        class_weights: "balanced" (n / (k * n_class) from the training scans), one weight per
            class, or None (unweighted).
        dropout: dropout on the features before the linear layer.
    """

    monitor = "auroc"
    mode = "max"

    def __init__(
        self,
        in_features: int,
        classes: list[str] | None = None,
        class_weights: Literal["balanced"] | list[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features)
        if not classes or len(classes) < 2:
            raise ValueError(f"classification needs at least 2 classes, got {classes}")
        if isinstance(class_weights, str):
            raise ValueError(f"class_weights {class_weights!r} must be resolved from the data first (complete_args)")
        if class_weights is not None and len(class_weights) != len(classes):
            raise ValueError(f"class_weights has {len(class_weights)} values for {len(classes)} classes {classes}")
        self.classes = [str(c) for c in classes]
        self.index = {name: i for i, name in enumerate(self.classes)}
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, len(self.classes))
        nn.init.trunc_normal_(self.fc.weight, std=0.01)  # MAE's linear-probe initialisation
        nn.init.zeros_(self.fc.bias)

    @classmethod
    def complete_args(cls, args: dict[str, Any], train_targets: list) -> dict[str, Any]:
        args = dict(args)
        labels = [name for name in label_strings(train_targets) if name]
        if not args.get("classes"):
            args["classes"] = sorted(set(labels))
        if args.get("class_weights") == "balanced":
            counts = Counter(labels)
            missing = [c for c in args["classes"] if not counts[str(c)]]
            if missing:
                raise ValueError(f"class_weights 'balanced': classes {missing} have no training scan")
            k = len(args["classes"])
            args["class_weights"] = [len(labels) / (k * counts[str(c)]) for c in args["classes"]]
        elif args.get("class_weights") is not None and isinstance(args["class_weights"], str):
            raise ValueError(f"class_weights must be 'balanced', a list or null, got {args['class_weights']!r}")
        return args

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))

    def prepare_targets(self, values: list | torch.Tensor) -> torch.Tensor:
        names = label_strings(values)
        unknown = sorted({name for name in names if name not in self.index})
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {self.classes} (missing labels show as '')")
        return torch.tensor([self.index[name] for name in names], dtype=torch.long)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(outputs.device)
        return F.cross_entropy(outputs.float(), targets, weight=weights)

    def metrics(self) -> MetricCollection:
        k = len(self.classes)
        return MetricCollection(
            {
                "auroc": MulticlassAUROC(k, average="macro"),
                "average_precision": MulticlassAveragePrecision(k, average="macro"),
                "balanced_accuracy": MulticlassAccuracy(k, average="macro"),  # mean per-class recall
                "f1": MulticlassF1Score(k, average="macro"),
            }
        )

    def metric_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.float().softmax(-1), targets

    def predictions(self, outputs: torch.Tensor) -> dict[str, list]:
        probs = outputs.float().softmax(-1).cpu()
        columns: dict[str, list] = {"prediction": [self.classes[i] for i in probs.argmax(-1).tolist()]}
        for i, name in enumerate(self.classes):
            columns[f"prob_{name}"] = probs[:, i].tolist()
        return columns

    def figures(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        matrix = multiclass_confusion_matrix(outputs.argmax(-1).cpu(), targets.cpu(), len(self.classes)).numpy()
        k = len(self.classes)
        figure, axis = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
        axis.imshow(matrix, cmap="Blues")
        for (row, col), count in zip(((r, c) for r in range(k) for c in range(k)), matrix.flatten()):
            axis.text(
                col, row, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black"
            )
        axis.set(
            xticks=range(k),
            yticks=range(k),
            xticklabels=self.classes,
            yticklabels=self.classes,
            xlabel="predicted",
            ylabel="true",
            title=f"confusion matrix ({int(matrix.sum())} scans)",
        )
        figure.tight_layout()
        return {"confusion_matrix": figure}
