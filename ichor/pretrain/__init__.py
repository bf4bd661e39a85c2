"""Self-supervised pre-training: MAE (ICHOR's method), SimCLR and Models Genesis on one backbone."""

from ichor.pretrain.base import Pretrainer
from ichor.pretrain.genesis import GenesisPretrainer
from ichor.pretrain.mae import MAEPretrainer
from ichor.pretrain.simclr import SimCLRPretrainer

__all__ = ["GenesisPretrainer", "MAEPretrainer", "Pretrainer", "SimCLRPretrainer"]
