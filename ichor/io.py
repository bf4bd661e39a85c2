"""Files in and out: atomic writes, and checkpoints read without running code from them.

Writes go to a temporary file in the target's folder, then one rename: readers (and a run
killed half-way) never see half a file, and an existing file is only ever replaced whole.
Every writer in ICHOR goes through here.

Checkpoints are read with ``torch.load(weights_only=True)``: a pickled checkpoint can run any
code while it is unpickled, and ICHOR's own hold only tensors and plain values, so a file
that needs more is refused before anything in it runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own default is 0o600


def real_path(path: str | os.PathLike) -> str:
    """The file a path names, ``~`` and symbolic links resolved (it need not exist): to compare outputs with inputs."""
    return os.path.realpath(os.path.expanduser(path))


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> Path:
    """A command's output path, refused before any work: never one of its inputs, and an existing file
    only with ``overwrite``."""
    out = Path(out)
    for source in inputs:
        if real_path(out) == real_path(source):
            raise ValueError(f"refusing to write {out}: it is an input of this command (write to a new file)")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists: choose a new file, or pass --overwrite to replace it")
    return out


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path``, on error it is removed.

    An ``OSError`` (a read-only folder, a full disk) names ``path``, whatever file the system call was on.
    """
    path = Path(path)
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # ".<random>.<name>": hidden, and ends like the target so writers that go by suffix (.nii.gz) work.
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=f".{path.name}")
        os.close(handle)
        yield Path(temp)
        os.chmod(temp, FILE_MODE)
        os.replace(temp, path)
    except OSError as error:
        if error.errno is None:
            raise OSError(f"cannot write {path}: {error}") from error
        raise type(error)(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_csv(table: pd.DataFrame, path: str | os.PathLike, **to_csv) -> Path:
    """``table.to_csv`` (without the index unless asked), atomically."""
    to_csv.setdefault("index", False)
    with atomic_path(path) as temp:
        table.to_csv(temp, **to_csv)
    return Path(path)


def confined(folder: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``folder / relative``, refused when it would leave ``folder`` (a label holding ``..`` or ``/``).

    Output names built from manifest values (subject, session, study) go through here, so a
    label can never make ICHOR write outside the folder the user named.
    """
    path = Path(folder) / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(Path(folder).resolve()):
        raise ValueError(f"{relative}: an output name that leaves {folder}; refused (a label with '..' or '/'?)")
    return path


class UnreadableFileError(ValueError):
    """A file that cannot be read safely (corrupt, or asking to run code); the message names it."""


def load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a safetensors file (a format that holds no code), refused in one line naming it when corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise UnreadableFileError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents on the CPU, refused whole if unpickling it would run code of the file's choosing."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error).strip()
        if "Weights only load failed" in text:  # torch's refusal: the file asks for a global it does not allow
            reason = next((line for line in text.splitlines() if "Unsupported global" in line), text.splitlines()[0])
            raise UnreadableFileError(
                f"{path}: refused, loading it would run code it holds (ICHOR's checkpoints hold only tensors and "
                f"plain values; load only files you trust, and re-save this one where it was made): {reason.strip()}"
            ) from error
        raise UnreadableFileError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {type(error).__name__}: {text[:200]}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise UnreadableFileError(f"{path}: not a checkpoint (it holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint
