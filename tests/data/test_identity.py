"""One scan, however it is named: the same file by any spelling, or the same bytes at another path."""

import os

import pytest

from ichor.data import identity
from ichor.data.identity import content_key, same_scans


@pytest.fixture
def files(tmp_path):
    """a and b: 1 MiB of different bytes; copy: a's bytes at another path."""
    a, b, copy = tmp_path / "a.nii", tmp_path / "b.nii", tmp_path / "sub" / "copy.nii"
    copy.parent.mkdir()
    a.write_bytes(os.urandom(1 << 20))
    b.write_bytes(os.urandom(1 << 20))
    copy.write_bytes(a.read_bytes())
    return a, b, copy


def test_copies_and_spellings_are_one_scan_other_bytes_are_not(files, tmp_path):
    a, b, copy = files
    (tmp_path / "link.nii").symlink_to(a)
    paths = [str(a), str(b), str(copy), str(tmp_path / "sub" / ".." / "a.nii"), str(tmp_path / "link.nii"), ""]
    assert same_scans(paths) == {2: (0, "a byte-identical copy"), 3: (0, "the same file"), 4: (0, "the same file")}


def test_one_byte_outside_the_sampled_blocks_still_makes_another_scan(files):
    a, _, copy = files
    data = bytearray(copy.read_bytes())
    data[4096 + 10] ^= 0xFF  # between the first and second sampled blocks
    copy.write_bytes(bytes(data))
    assert identity._sample_key(str(a)) == identity._sample_key(str(copy))  # the sample cannot tell ...
    assert same_scans([str(a), str(copy)]) == {}  # ... the full hash can


def test_files_whose_samples_differ_are_never_read_whole(files, monkeypatch):
    a, b, _ = files
    monkeypatch.setattr(identity, "content_key", lambda *args: pytest.fail("read whole"))
    assert same_scans([str(a), str(b), str(a.with_name("missing.nii"))]) == {}  # a missing file: its own check


def test_content_key_is_size_and_sha256_and_follows_a_rewrite_with_the_old_mtime(files, tmp_path):
    a, b, copy = files
    store = tmp_path / "store"
    key = content_key(a, store)
    assert key.startswith(f"{1 << 20}-") and key == content_key(copy) and key != content_key(b)
    stat = os.stat(a)
    a.write_bytes(b.read_bytes())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime, other bytes
    assert content_key(a, store) == content_key(b)
