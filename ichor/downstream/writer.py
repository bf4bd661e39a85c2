"""``PredictionWriter``: ``ichor predict`` writes one CSV row per scan, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.callbacks import BasePredictionWriter

from ichor.data.splits import write_csv


class PredictionWriter(BasePredictionWriter):
    """Collects ``predict_step`` rows (dicts of per-scan columns) and writes them as one CSV.

    Args:
        output: the CSV path; with several devices each rank writes ``<stem>.rank<r>.csv``.
    """

    def __init__(self, output: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        table = pd.concat([pd.DataFrame(rows) for rows in batches], ignore_index=True) if batches else pd.DataFrame()
        path = Path(self.output)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        write_csv(table, path)
        print(f"predictions for {len(table)} scans written to {path}")
