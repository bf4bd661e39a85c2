"""``IchorCLI``: the Lightning CLI behind ``ichor fit/validate/test/predict``."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class IchorCLI(LightningCLI):
    """LightningCLI with ICHOR's defaults: any LightningModule / LightningDataModule by class path."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)
