"""Settings dataclasses rebuilt from config values: one rule for every module that takes them."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def as_dataclass(cls: type[T], value: T | dict[str, Any], default: T | None = None) -> T:
    """A new settings dataclass from one (copied: a default instance must never be changed) or from its fields as a dict.

    Checkpoint hyper-parameters hold such settings as plain dicts (``ichor fit`` saves the
    parsed config, and safe ``weights_only`` loading needs plain values), so a module rebuilt
    from a checkpoint receives a dict. A dict that names only some fields completes ``default``
    (the module's own default settings) rather than the class's field defaults.
    """
    if isinstance(value, cls):
        return copy.copy(value)
    return dataclasses.replace(default, **value) if default is not None else cls(**value)  # type: ignore[type-var]
