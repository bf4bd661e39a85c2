"""MAE pre-training: the LightningModule, its optimiser recipe and its pictures."""

from ichor.pretrain.module import MAEPretrainer

__all__ = ["MAEPretrainer"]
