"""``PredictionWriter``: ``ichor predict`` writes one CSV row per scan, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.callbacks import BasePredictionWriter

from ichor.io import write_csv


class PredictionWriter(BasePredictionWriter):
    """Collects ``predict_step`` rows (dicts of per-scan columns) and writes them as one CSV.

    Args:
        output: the CSV path; with several devices each rank writes ``<stem>.rank<r>.csv``.
        overwrite: replace an existing file; by default an existing one stops ``ichor predict``
            before any prediction (earlier predictions are never lost silently).
    """

    def __init__(self, output: str = "predictions.csv", overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        path = self._path(trainer)
        if stage == "predict" and path.exists() and not self.overwrite:
            raise ValueError(
                f"{path} exists: move it, or set the PredictionWriter's output to a new file "
                "(or its overwrite: true) in the config"
            )

    def _path(self, trainer: Any) -> Path:
        path = Path(self.output)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        table = pd.concat([pd.DataFrame(rows) for rows in batches], ignore_index=True) if batches else pd.DataFrame()
        path = write_csv(table, self._path(trainer))
        print(f"predictions for {len(table)} scans written to {path}")
