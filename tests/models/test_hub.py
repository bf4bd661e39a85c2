"""A pinned encoder's cached copy is checked at every load: a copy changed after it was fetched is never used."""

from __future__ import annotations

import pytest
from helpers import make_encoder

from ichor.models.hub import pack_encoder, pinned_url, resolve
from ichor.models.weights import METADATA_FILE, WEIGHTS_FILE, WeightsError


@pytest.mark.parametrize("changed", [WEIGHTS_FILE, METADATA_FILE])
def test_a_changed_cached_copy_is_fetched_again_or_refused(tmp_path, changed):
    archive, sha256 = pack_encoder(make_encoder(tmp_path), tmp_path / "e.tar.gz")
    source, cache = pinned_url(archive, sha256), tmp_path / "cache"
    folder = resolve(source, cache)
    original = (folder / changed).read_bytes()

    (folder / changed).write_bytes(original[:-8] + b"tampered")
    assert resolve(source, cache) == folder
    assert (folder / changed).read_bytes() == original  # fetched again from the pinned archive

    (folder / changed).write_bytes(original[:-8] + b"tampered")
    archive.unlink()  # the pinned archive is gone: the changed copy is refused, not served
    with pytest.raises(WeightsError, match="could not be read"):
        resolve(source, cache)
    assert not folder.exists()


def test_an_intact_cached_copy_serves_the_url_without_the_archive(tmp_path):
    archive, sha256 = pack_encoder(make_encoder(tmp_path), tmp_path / "e.tar.gz")
    source, cache = pinned_url(archive, sha256), tmp_path / "cache"
    folder = resolve(source, cache)
    archive.unlink()
    assert resolve(source, cache) == folder
