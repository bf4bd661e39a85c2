"""Encoders people can share: packed export folders, fetched once from a pinned URL into a cache.

A packed encoder is a reproducible ``.tar.gz`` pinned by its sha256 (``URL#sha256=<hex>``), verified before
it is unpacked and at every load (docs/tutorials/share-encoder.md).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from urllib.error import URLError

from ichor.io import atomic_path
from ichor.models.weights import METADATA_FILE, WEIGHTS_FILE, WeightsError, read_metadata

CACHE_ENV = "ICHOR_CACHE_DIR"
PACKED_FILES = (METADATA_FILE, WEIGHTS_FILE)
URL_SCHEMES = ("https://", "file://")
PIN = re.compile(r"^(?P<url>[^#]+)#sha256=(?P<sha256>[0-9a-fA-F]{64})$")
CHUNK = 1 << 20
DIGESTS_FILE = ".sha256.json"  # the unpacked files' checksums, recorded once the archive matched its pin

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where fetched encoders are kept: ``$ICHOR_CACHE_DIR/encoders``, else the user cache folder's ``ichor/encoders``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "encoders"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "ichor" / "encoders"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ichor" / "encoders"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pack_encoder(export_dir: str | os.PathLike, archive: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Write ``<export_dir>.tar.gz`` (or ``archive``) atomically; returns its path and sha256.

    The archive holds the two export files at its root, with fixed owner, mode and times, so that
    its checksum depends on their contents alone.
    """
    export_dir = Path(export_dir)
    read_metadata(export_dir)  # pack only what loads
    archive = Path(archive) if archive is not None else export_dir.with_name(export_dir.name + ".tar.gz")
    with (
        atomic_path(archive) as temp,
        open(temp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        for name in PACKED_FILES:
            data = (export_dir / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return archive, sha256_file(archive)


def pinned_url(archive: str | os.PathLike, sha256: str) -> str:
    """The ``file://`` source of a local archive, pinned: what ``Encoder.from_pretrained`` takes."""
    return f"{Path(archive).resolve().as_uri()}#sha256={sha256}"


def resolve(source: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """The export folder of ``source``: a folder as given, or a pinned URL's cached (fetched if new) copy."""
    text = str(source)
    if not text.startswith(URL_SCHEMES):
        if "://" in text:
            raise WeightsError(f"{text}: only {' and '.join(URL_SCHEMES)} sources are fetched (or give a folder)")
        return Path(source)
    match = PIN.match(text)
    if match is None:
        raise WeightsError(
            f"{text}: a URL source needs its checksum, {text.split('#')[0]}#sha256=<hex> "
            "(`ichor export-encoder --pack` prints it)"
        )
    url, sha256 = match["url"], match["sha256"].lower()
    folder = Path(cache) if cache is not None else cache_dir()
    target = folder / sha256
    if (target / METADATA_FILE).is_file() and not intact(target):
        log.warning("%s: the cached copy of %s was changed since it was fetched: fetching it again", target, url)
        shutil.rmtree(target)
    if not (target / METADATA_FILE).is_file():
        fetch(url, sha256, target)
    return target


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of each packed file of an unpacked encoder."""
    return {name: sha256_file(folder / name) for name in PACKED_FILES if (folder / name).is_file()}


def intact(folder: Path) -> bool:
    """Whether a cached copy still holds exactly what was verified against its pin when it was unpacked."""
    try:
        recorded = json.loads((folder / DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recorded == file_digests(folder)


def fetch(url: str, sha256: str, target: Path) -> None:
    """Download ``url``, check its sha256, unpack it to ``target``; on any failure leave nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{sha256[:12]}-") as work:
        archive = Path(work) / "encoder.tar.gz"
        got = download(url, archive)
        if got != sha256:
            raise WeightsError(f"{url}: sha256 {got} differs from the pinned {sha256}; refused (nothing was kept)")
        unpacked = Path(work) / "encoder"
        unpack(archive, unpacked, url)
        read_metadata(unpacked)
        (unpacked / DIGESTS_FILE).write_text(json.dumps(file_digests(unpacked), indent=1))
        try:
            unpacked.rename(target)
        except OSError:  # another process unpacked the same archive first: keep its copy
            if not (target / METADATA_FILE).is_file():
                raise


def download(url: str, out: Path) -> str:
    """Stream ``url`` to ``out``; returns the sha256 of what arrived."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(out, "wb") as stream:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                stream.write(chunk)
    except (URLError, OSError) as error:
        raise WeightsError(f"{url}: could not be read ({error})") from error
    return digest.hexdigest()


def unpack(archive: Path, out: Path, url: str) -> None:
    """Extract the two export files, refusing any other member (paths, links) by name."""
    out.mkdir()
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        names = sorted(m.name for m in members)
        if names != sorted(PACKED_FILES) or not all(m.isfile() for m in members):
            raise WeightsError(f"{url}: a packed encoder holds exactly {', '.join(PACKED_FILES)}, found {names}")
        for member in members:
            source = tar.extractfile(member)
            assert source is not None  # a regular file, checked above
            with source, open(out / member.name, "wb") as stream:
                shutil.copyfileobj(source, stream, CHUNK)
