"""ICHOR: self-supervised 3D MAE pre-training on ASL CBF maps, with plugin task heads.

Data flow: manifest -> harmonised cache -> datamodule -> encoder -> MAE or head -> metrics and logs.
"""

__version__ = "0.1.0"
