"""``DownstreamTask``: a pre-trained encoder, a pooling and a plugin head, as one LightningModule.

Four modes answer the questions a paper's results table asks:
- ``linear_probe``: how good are the frozen features? The encoder is frozen and kept in
  eval mode (``train()`` is overridden, the classic linear-probe bug being a frozen encoder
  left in train mode), features pass a ``BatchNorm1d(affine=False)`` and a linear head.
- ``finetune``: everything trains, with layer-wise lr decay (0.75 by default).
- ``scratch``: the same architecture with random weights, trained like ``finetune``
  without decay: the baseline that says what pre-training bought.
- ``lora``: the ICHOR paper's adaptation. The encoder is frozen, low-rank adapters on every
  block's attention projections train (:mod:`ichor.models.lora`; rank 8 on query, key, value and
  output by default, 0.7 % of ViT-B's weights), and the pooled features pass a ``LayerNorm``
  before the linear head (the paper's brain-token mean -> LayerNorm -> linear). ``ichor
  export-encoder`` of its checkpoint merges the adapters into a plain encoder.

``pooling: attentive`` replaces the fixed pooling by a learned one
(:class:`ichor.evaluation.attentive.AttentivePooler`); with ``linear_probe`` it is the
attentive probe: the encoder frozen and in eval mode, the pooler and the linear head trained.

With ``global_cbf`` (the default) the head also reads the scan's global CBF scalars (log brain
mean and spread, standardised by a ``BatchNorm1d(affine=False)``) beside the pooled features:
under a relative or z-scored input they are the only trace of a global hypoperfusion.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ichor.data.datamodule import GLOBAL_CBF, GLOBAL_CBF_NAMES
from ichor.data.schema import ID_COLUMNS, SPLIT_COLUMN
from ichor.downstream.plugins import resolve_head
from ichor.evaluation.attentive import AttentivePooler
from ichor.evaluation.pooling import POOLINGS, Pooling, encode, encode_tokens, feature_width
from ichor.models import ViTEncoder3D
from ichor.models.lora import LoRA, add_lora
from ichor.models.weights import LORA_RECORD_KEY, WeightsError, load_encoder, lora_record
from ichor.training.lrd import param_groups_lrd
from ichor.training.optim import AdamW, configure_adamw
from ichor.training.settings import as_dataclass

Mode = Literal["linear_probe", "finetune", "scratch", "lora"]
MODES = ("linear_probe", "finetune", "scratch", "lora")
ATTENTIVE = "attentive"  # the learned pooling, beside the fixed ones of ichor.evaluation.pooling
# Harmonisation keys that must agree between pre-training and downstream data.
CHECKED_SETTINGS = ("spacing", "normalization", "cbf_scale", "orientation")
# The optimiser recipe of a task unless its config says otherwise: the lr is used as given.
TASK_OPTIM = AdamW(lr=1e-3, lr_batch=None, betas=(0.9, 0.999), warmup_epochs=1.0)
# The adapters of mode lora unless its config says otherwise: the paper's (rank 8, alpha 16, q, k, v, o).
TASK_LORA = LoRA()
# Checkpoint key of the task's label column (the datamodule's ``target``, read at setup).
TARGET_KEY = "ichor_target"


def check_harmonisation(encoder_settings: dict, data_settings: dict, source: str) -> None:
    """Refuse data harmonised differently from the encoder's pre-training data (spacing, intensity scale)."""
    if not encoder_settings:
        rank_zero_warn(f"encoder {source} records no harmonisation settings: cannot check the data against them")
        return
    problems = []
    for key in CHECKED_SETTINGS:
        if key not in encoder_settings or key not in data_settings:
            continue
        expected, got = encoder_settings[key], data_settings[key]
        same = (
            len(expected) == len(got)
            and all(math.isclose(float(a), float(b), rel_tol=1e-4) for a, b in zip(expected, got))
            if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple))
            else expected == got
        )
        if not same:
            problems.append(f"{key}: encoder {expected!r}, data {got!r}")
    if problems:
        raise WeightsError(
            f"encoder {source} was pre-trained on data harmonised differently from data.init_args "
            f"({'; '.join(problems)}): set the data's {', '.join(p.split(':')[0] for p in problems)} "
            "to the encoder's values (see its encoder.json, key 'harmonisation')"
        )


class DownstreamTask(LightningModule):
    """Classification/regression (or any plugin head) on top of a pre-trained 3D ViT encoder.

    The label column is the datamodule's ``target`` (given once, in ``data``); it is read at setup
    and saved with the checkpoint. The checkpoint monitor is the head's (``monitor``, ``mode``).

    Args:
        encoder: an ``ichor export-encoder`` folder, or a Lightning checkpoint of a pre-training run (any method).
        head: head name (``ichor heads`` lists them) or class path ``package.module.Class``.
        head_args: the head's constructor arguments; those learnt from the training scans
            (class names, target scale) are filled in at setup and saved with the checkpoint.
        mode: "linear_probe", "finetune", "scratch" or "lora" (see the module docstring).
        pooling: "brain_mean" (mean of brain tokens), "mean" (all tokens), "max" (brain tokens) or
            "region" (brain-token means of the grid's 8 octants, side by side); "attentive" learns it
            (a query cross-attending over brain tokens).
        optim: the optimiser recipe (:class:`ichor.training.optim.AdamW`); ``lr`` is the head's peak
            rate (in finetune, the last encoder block trains at ``lr * layer_decay``), as given
            (``lr_batch`` null) unless a reference batch is set.
        layer_decay: finetune lr ratio between consecutive encoder layers.
        drop_path: stochastic depth of the encoder's last block in finetune/scratch (rising linearly
            from 0 at the first); a linear probe's frozen encoder never drops.
        grad_checkpointing: recompute encoder blocks in backward (finetune/scratch/lora memory).
        lora: the adapters of ``mode: lora`` (:class:`ichor.models.lora.LoRA`: ``rank``, ``alpha``,
            ``dropout``, ``targets``); the paper's settings by default.
        figures: log a confusion matrix / scatter plot to TensorBoard at each validation epoch end.
        global_cbf: the head also reads the batch's global CBF scalars (see the module docstring).
    """

    def __init__(
        self,
        encoder: str,
        head: str = "classification",
        head_args: dict[str, Any] | None = None,
        mode: Mode = "linear_probe",
        pooling: Pooling | Literal["attentive"] = "brain_mean",
        optim: AdamW = TASK_OPTIM,
        layer_decay: float = 0.75,
        drop_path: float = 0.0,
        grad_checkpointing: bool = False,
        lora: LoRA = TASK_LORA,
        figures: bool = True,
        global_cbf: bool = True,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if pooling not in (*POOLINGS, ATTENTIVE):
            raise ValueError(f"pooling must be one of {', '.join((*POOLINGS, ATTENTIVE))}, got {pooling!r}")
        self.save_hyperparameters()
        self.optim = as_dataclass(AdamW, optim, TASK_OPTIM)
        self.hparams.optim = self.optim.as_dict()  # plain values in the checkpoint
        self.lora = as_dataclass(LoRA, lora, TASK_LORA)
        self.hparams.lora = self.lora.as_dict()
        self.head_class = resolve_head(head)  # fail at config time, not after caching the data
        self.target: str | None = None  # the datamodule's label column, set at setup
        self.encoder: ViTEncoder3D | None = None
        self.head: nn.Module | None = None
        self.feature_norm: nn.Module = nn.Identity()
        self.scalar_norm = nn.BatchNorm1d(len(GLOBAL_CBF_NAMES), affine=False, eps=1e-6) if global_cbf else None
        self.pooler: AttentivePooler | None = None
        self._base_metadata: dict[str, Any] = {}  # the encoder's record, for a LoRA checkpoint's export
        self._harmonisation: dict[str, Any] = {}
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def checkpoint_monitor(cls, init_args: Any) -> tuple[str, str]:
        """What the checkpoint callback of ``ichor fit`` keeps the best of: the head's metric and mode."""
        head = resolve_head(init_args.head)
        return f"val/{head.monitor}", head.mode

    # ------------------------------------------------------------------ model
    def setup(self, stage: str) -> None:
        """Build encoder and head once the datamodule (input grid, label column, training labels) is known."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self._adopt_target((getattr(datamodule, "hparams", None) or {}).get("target"), "data.init_args.target")
        if self.target is None:
            raise ValueError("the task needs a label column: set data.init_args.target to a manifest column")
        if self.head is not None:
            return
        settings = datamodule.harmonisation_settings() if hasattr(datamodule, "harmonisation_settings") else {}
        self.configure_encoder(settings)
        self.configure_head(self.training_targets(datamodule))

    def configure_encoder(self, data_settings: dict) -> None:
        hp = self.hparams
        shape = tuple(data_settings["shape"]) if "shape" in data_settings else None
        encoder, metadata = load_encoder(hp.encoder, img_size=shape)
        if data_settings:
            check_harmonisation(metadata.get("harmonisation", {}), data_settings, hp.encoder)
        if hp.mode == "scratch":
            encoder = ViTEncoder3D(encoder.config, encoder.img_size)
        encoder.grad_checkpointing = hp.grad_checkpointing
        if hp.mode != "linear_probe":
            encoder.set_drop_path(hp.drop_path)
        if hp.pooling == ATTENTIVE:
            self.pooler = AttentivePooler(encoder.embed_dim, encoder.num_heads)
        width = feature_width(encoder.embed_dim, hp.pooling)
        if hp.mode == "linear_probe":
            encoder.requires_grad_(False)
            self.feature_norm = nn.BatchNorm1d(width, affine=False, eps=1e-6)
        if hp.mode == "lora":
            add_lora(encoder, self.lora)  # freezes the base weights
            self.feature_norm = nn.LayerNorm(width)
            self._base_metadata = metadata
            self._harmonisation = data_settings or metadata.get("harmonisation", {})
        self.encoder = encoder
        self.train(self.training)  # puts a frozen encoder in eval mode

    def configure_head(self, train_targets: list) -> None:
        hp = self.hparams
        args = self.head_class.complete_args(dict(hp.head_args or {}), train_targets)
        width = feature_width(self.encoder.embed_dim, hp.pooling) + (len(GLOBAL_CBF_NAMES) if hp.global_cbf else 0)
        self.head = self.head_class(width, **args)
        hp.head_args = args  # saved in the checkpoint: prediction rebuilds the same head
        self.train_metrics = self.head.metrics().clone(prefix="train/")
        self.val_metrics = self.head.metrics().clone(prefix="val/")
        self.test_metrics = self.head.metrics().clone(prefix="test/")

    def training_targets(self, datamodule: Any) -> list:
        """Target values of the training scans (for class names, weights, standardisation)."""
        rows = getattr(datamodule, "rows", None)
        if rows is None:
            return []
        target = self.target
        if target not in rows.columns:
            raise ValueError(
                f"target column {target!r} is not in the manifests (columns: {', '.join(map(str, rows.columns))})"
            )
        train = rows[rows["split"] == "train"] if "split" in rows.columns else rows
        return train[target].tolist()

    def train(self, mode: bool = True) -> DownstreamTask:
        """As ``nn.Module.train``, but a linear probe's encoder stays in eval mode (dropout off, fixed statistics)."""
        super().train(mode)
        if self.hparams.mode == "linear_probe" and self.encoder is not None:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------ steps
    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """Pooled encoder features (B, feature_width); no graph through a frozen encoder (a learned pooler still trains)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.hparams.mode != "linear_probe"):
            if self.pooler is None:
                return encode(self.encoder, batch["image"], batch.get("mask"), self.hparams.pooling)
            tokens, token_mask = encode_tokens(self.encoder, batch["image"], batch.get("mask"))
        return self.pooler(tokens, token_mask)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.read_out(self.features(batch), batch.get(GLOBAL_CBF))

    def read_out(self, pooled: torch.Tensor, global_cbf: torch.Tensor | None) -> torch.Tensor:
        """Head outputs of pooled features (B, width), beside the scans' global CBF scalars (B, 2) if the task reads them."""
        features = self.feature_norm(pooled)
        if self.scalar_norm is not None:
            if global_cbf is None:
                raise ValueError(f"the task reads the global CBF scalars, but the batch has no {GLOBAL_CBF!r}")
            features = torch.cat([features, self.scalar_norm(global_cbf.to(features))], dim=1)
        return self.head(features)

    def _targets(self, batch: dict[str, Any]) -> torch.Tensor:
        target = self.target
        if target not in batch:
            raise ValueError(f"target column {target!r} is not in the batch; manifest columns are {', '.join(batch)}")
        return self.head.prepare_targets(batch[target]).to(self.device)

    def _shared_step(self, batch: dict[str, Any], split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self(batch)
        targets = self._targets(batch)
        loss = self.head.loss(outputs, targets)
        size = len(targets)
        self.log(
            f"{split}/loss",
            loss,
            batch_size=size,
            on_epoch=True,
            on_step=split == "train",
            prog_bar=True,
            sync_dist=split != "train",
        )
        metrics = getattr(self, f"{split}_metrics")
        metrics.update(*self.head.metric_inputs(outputs.detach(), targets))
        self.log_dict(metrics, batch_size=size, on_epoch=True, on_step=False)
        return loss, outputs, targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, outputs, targets = self._shared_step(batch, "val")
        if self.hparams.figures:
            self._val_outputs.append((outputs.detach().float().cpu(), targets.cpu()))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, list]:
        """One row per scan: identity columns, the true target when known, the head's predictions."""
        # the scan's identity and its split as the run used it (train/val/test/unlabelled), when the batch has them
        rows = {column: _as_list(batch[column]) for column in (*ID_COLUMNS, SPLIT_COLUMN) if column in batch}
        if self.target in batch:
            rows[self.target] = _as_list(batch[self.target])
        rows.update(self.head.predictions(self(batch)))
        return rows

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TARGET_KEY] = self.target
        if self.hparams.mode == "lora" and self.encoder is not None:
            checkpoint[LORA_RECORD_KEY] = lora_record(
                self.encoder, self.lora, self.hparams.encoder, self._base_metadata, self._harmonisation
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._adopt_target(checkpoint.get(TARGET_KEY), "the checkpoint's label column")

    def _adopt_target(self, target: str | None, source: str) -> None:
        """Take the label column from the datamodule or a checkpoint (``source``); the two must agree."""
        if target is None:
            return
        if self.target is not None and target != self.target:
            raise ValueError(
                f"{source} is {target!r}, but the task already predicts {self.target!r} (from the data or its checkpoint)"
            )
        self.target = target

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, []
        if not outputs or self.trainer.sanity_checking or not isinstance(self.logger, TensorBoardLogger):
            return
        import matplotlib.pyplot as plt

        predicted, true = torch.cat([o for o, _ in outputs]), torch.cat([t for _, t in outputs])
        for name, figure in self.head.figures(predicted, true).items():
            self.logger.experiment.add_figure(f"val/{name}", figure, global_step=self.global_step)
            plt.close(figure)

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict:
        groups = None
        if self.hparams.mode == "finetune":
            groups = param_groups_lrd(
                self, self.optim.lr, self.optim.weight_decay, self.encoder.depth, self.hparams.layer_decay
            )
        return configure_adamw(self, self.optim, groups)


def _as_list(values: Any) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)
