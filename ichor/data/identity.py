"""When two files are one scan: the same file by any spelling, or the same bytes at another path.

ICHOR calls two CBF paths the same scan when either holds:
- they are one file: equal after ``os.path.realpath`` (symbolic links, ``./``, ``..``, a relative
  against an absolute spelling), or the same device and inode (hard links);
- they hold the same bytes: equal content keys, ``<size>-<SHA-256 of the bytes>``. A map
  re-saved (re-compressed, another dtype or orientation) is a different file; a copy is not.

Only files of equal size can share content, and ``same_scans`` hashes only those whose sampled
blocks (the first bytes and 15 more spread over the file, 64 KiB in all) also agree: a dataset
of compressed maps costs one ``stat`` per file, one of uncompressed maps on one grid
(ExploreASL's ``.nii``, all the same size) 64 KiB per file, and only copies are read whole.
A content key is computed once per file version: memoised in the process by the file's stat signature (device, inode, size,
mtime and ctime in ns) and, given a ``store`` folder, kept there, so an unchanged file costs one
``stat`` and one small read on later runs. Any write, replacement, rename onto the path or
``touch`` sets the ctime, which no user call can set back, so a file replaced by another of the
same size and mtime is hashed again (SHA-256 reads about 0.4 GB/s on one core).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from ichor.io import write_text

_CHUNK = 1 << 20
_SAMPLES, _SAMPLE_BYTES = 16, 4096  # blocks read by _sample_key
_memo: dict[str, str] = {}  # stat signature -> content key, for this process


def file_signature(path: str | os.PathLike) -> str:
    """The stat signature of the file now (raises OSError when it cannot be read)."""
    stat = os.stat(path)
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def content_key(path: str | os.PathLike, store: str | os.PathLike | None = None) -> str:
    """``<size>-<SHA-256>`` of the file's bytes, from the memo (or ``store``) while the file is unchanged."""
    signature = file_signature(path)
    memo_key = hashlib.sha256(f"{os.path.realpath(path)}\0{signature}".encode()).hexdigest()[:32]
    if memo_key in _memo:
        return _memo[memo_key]
    stored = Path(store) / memo_key if store is not None else None
    if stored is not None and stored.is_file():
        key = stored.read_text().strip()
    else:
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        key = f"{size}-{digest.hexdigest()}"
        if stored is not None:
            write_text(stored, key)
    _memo[memo_key] = key
    return key


def same_scans(paths: Sequence[str], store: str | os.PathLike | None = None) -> dict[int, tuple[int, str]]:
    """{index: (index of the first path that is the same scan, how)} for every later repeat among ``paths``.

    ``how`` is "the same file" or "a byte-identical copy". Paths that cannot be read
    (missing files) are left out: their own check reports them.
    """
    first_by_file: dict[object, int] = {}
    repeats: dict[int, tuple[int, str]] = {}
    by_size: dict[int, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        if not path:
            continue
        try:
            stat = os.stat(path)
        except OSError:
            continue
        identities = (os.path.realpath(path), (stat.st_dev, stat.st_ino))
        earlier = next((first_by_file[i] for i in identities if i in first_by_file), None)
        if earlier is not None:
            repeats[index] = (earlier, "the same file")
            continue
        first_by_file.update(dict.fromkeys(identities, index))
        by_size[stat.st_size].append(index)
    for indices in by_size.values():
        if len(indices) < 2:
            continue
        by_sample: dict[str, list[int]] = defaultdict(list)
        for index in indices:
            try:
                by_sample[_sample_key(paths[index])].append(index)
            except OSError:
                continue
        for candidates in by_sample.values():
            if len(candidates) > 1:
                repeats.update(_same_content(paths, candidates, store))
    return repeats


def _sample_key(path: str) -> str:
    """A hash of evenly spaced blocks of the file: equal for copies, and almost never for two maps."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        for block in range(_SAMPLES):
            stream.seek(block * max(0, size - _SAMPLE_BYTES) // (_SAMPLES - 1))
            digest.update(stream.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def _same_content(paths: Sequence[str], indices: Iterable[int], store) -> dict[int, tuple[int, str]]:
    first: dict[str, int] = {}
    repeats = {}
    for index in indices:
        try:
            key = content_key(paths[index], store)
        except OSError:
            continue
        earlier = first.setdefault(key, index)
        if earlier != index:
            repeats[index] = (earlier, "a byte-identical copy")
    return repeats
