"""What a benchmark result depends on, by content: the key under which a finished part is reused.

A pre-trained encoder and a fold's result are reused only when the key recorded beside them equals
the key of the run about to start. The key is the run's composed config (its files and overrides,
parsed as ``ichor fit`` parses them, defaults filled) with:

- each manifest replaced by its rows, every file a row names by its content key (size and SHA-256,
  ``ichor.data.identity``; kept in the cache's ``content-keys/``, so an unchanged file costs a stat);
- every other value naming an existing file or folder (an encoder, a split file) replaced by the
  content keys of its files;
- settings that only say where outputs go or how fast they come (``OUTPUT_KEYS``) left out.

So a changed config value, manifest row or data file runs that part again, and the same content
under another path (a config copied, a dataset moved) is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ichor.training.runs import Run

# Where outputs go and how fast they come: they never change a result.
OUTPUT_KEYS = frozenset(
    {
        "config",
        "logger",
        "save_dir",
        "cache_dir",
        "log_dir",
        "default_root_dir",
        "dirpath",
        "output",
        "num_workers",
        "persistent_workers",
        "pin_memory",
        "progress",
        "enable_progress_bar",
        "enable_model_summary",
    }
)
MISSING = "missing"  # the content key of a file that cannot be read (its run reports it)


def run_key(run: Run) -> dict[str, Any]:
    """The composed config of ``run`` by content (see the module docstring)."""
    from ichor.training.runs import parse_run

    config = parse_run(run).as_dict()
    data = (config.get("data") or {}).get("init_args") or {}
    store = Path(data["cache_dir"]) / "content-keys" if data.get("cache_dir") else None
    return json.loads(json.dumps(_by_content(config, store), default=str))  # as it reads back from a record


def features_key(encoder: str | os.PathLike, settings: dict) -> str:
    """The name of a store of per-scan encoder features: a digest of the encoder's files and the probe ``settings``."""
    text = json.dumps({"encoder": path_key(encoder), "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def architecture_key(encoder: str | os.PathLike) -> dict[str, Any]:
    """What a scratch run takes from an encoder: its architecture, input size and harmonisation (not its
    weights, nor its pre-training record), so that retraining the encoder does not run scratch again."""
    from ichor.models.weights import METADATA_FILE

    record = json.loads((Path(encoder) / METADATA_FILE).read_text())
    return {name: record.get(name) for name in ("architecture", "img_size", "harmonisation")}


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two keys (``data.init_args.manifests``)."""
    if isinstance(before, dict) and isinstance(after, dict):
        names = sorted(set(before) | set(after))
        return [key for name in names for key in changed_keys(before.get(name), after.get(name), f"{prefix}{name}.")]
    return [] if before == after else [prefix.rstrip(".") or "(all)"]


def _by_content(value: Any, store: Path | None) -> Any:
    if isinstance(value, dict):
        return {
            key: (manifests_key(item, store) if key == "manifests" and item else _by_content(item, store))
            for key, item in value.items()
            if key not in OUTPUT_KEYS
        }
    if isinstance(value, (list, tuple)):
        return [_by_content(item, store) for item in value]
    if isinstance(value, os.PathLike) or (isinstance(value, str) and _names_a_path(value)):
        return path_key(value, store)
    return value


def _names_a_path(value: str) -> bool:
    return ("/" in value or Path(value).suffix != "") and os.path.exists(value)


def path_key(path: str | os.PathLike, store: Path | None = None) -> str | dict[str, str]:
    """The content key of a file, or {relative name: content key} of every file in a folder."""
    if Path(path).is_dir():
        return {str(file.relative_to(path)): _file_key(file, store) for file in sorted(_files(Path(path)))}
    return _file_key(Path(path), store) if os.path.exists(path) else MISSING


def _files(folder: Path) -> Iterator[Path]:
    return (file for file in folder.rglob("*") if file.is_file())


def _file_key(path: Path, store: Path | None) -> str:
    from ichor.data.identity import content_key

    try:
        return content_key(path, store)
    except OSError:
        return MISSING


def manifests_key(paths: Any, store: Path | None = None) -> str:
    """A digest of the manifests' rows in order, each file a row names by its content key, not its path.

    Where the manifests live is left out (the ``manifest`` column), so moved manifests with the same rows
    and files are the same data; a manifest that cannot be read is keyed by its own bytes.
    """
    from ichor.data.manifest import ManifestError, expand_manifests, read_manifests
    from ichor.data.schema import PATH_COLUMNS

    names = [str(p) for p in paths] if isinstance(paths, (list, tuple)) else [str(paths)]
    try:
        rows = read_manifests(names, content_store=store).drop(columns="manifest")
    except (ManifestError, OSError):
        return hashlib.sha256(json.dumps([path_key(p, store) for p in expand_manifests(names)]).encode()).hexdigest()
    for column in PATH_COLUMNS:
        if column in rows:
            rows[column] = [_file_key(Path(p), store) if p else "" for p in rows[column]]
    table = rows.astype(str).to_csv(index=False)
    return hashlib.sha256(table.encode()).hexdigest()
