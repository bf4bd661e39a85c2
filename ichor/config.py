"""``IchorCLI``: the Lightning CLI behind ``ichor fit/validate/test/predict``."""

from __future__ import annotations

from importlib.metadata import entry_points

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

PRETRAINERS_GROUP = "ichor.pretrainers"


class IchorCLI(LightningCLI):
    """LightningCLI with ICHOR's defaults: any LightningModule / LightningDataModule by class path.

    The pre-training methods of the ``ichor.pretrainers`` entry-point group (ICHOR's own and
    any installed package's) are imported first, so a config may name them by class name
    alone (``model: SimCLRPretrainer``).
    """

    def __init__(self, *args, **kwargs) -> None:
        for entry in entry_points(group=PRETRAINERS_GROUP):
            entry.load()
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)
