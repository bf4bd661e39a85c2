"""CBF data pipeline: manifests -> TorchIO harmonisation -> cached float16 arrays -> LightningDataModule."""

from ichor.data.augment import Augmentation
from ichor.data.datamodule import CBFDataModule
from ichor.data.harmonise import HarmonisationSettings, harmonise

__all__ = ["Augmentation", "CBFDataModule", "HarmonisationSettings", "harmonise"]
