"""ICHOR: self-supervised 3D MAE pre-training on ASL CBF maps, with plugin task heads.

Data flow: manifest -> harmonised cache -> datamodule -> encoder -> MAE or head -> metrics and logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Encoder", "__version__"]

if TYPE_CHECKING:
    from ichor.encoder import Encoder


def __getattr__(name: str) -> Any:
    """``from ichor import Encoder`` without importing torch for ``ichor --version`` and the light commands."""
    if name == "Encoder":
        from ichor.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'ichor' has no attribute {name!r}")
