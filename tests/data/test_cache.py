"""The harmonised-scan cache: built once, reused, rebuilt only for what changed, read memory-mapped."""

import argparse
import mmap
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import brain, save

import ichor.data.cache as cache_module
from ichor.cli import preprocess as preprocess_cli
from ichor.data import CBFDataModule, HarmonisationSettings, harmonise, identity
from ichor.data.cache import ScanCache, read_cached
from ichor.data.scans import load_cbf
from ichor.synth import generate_dataset

SMALL = {"spacing": 4.0, "shape": (48, 56, 48), "num_workers": 0, "progress": False, "augment": None}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return [str(p) for p in generate_dataset(root, n_studies=2, subjects_per_study=3, seed=1, progress=False)]


@pytest.fixture
def builds(monkeypatch):
    """Paths harmonised by the cache, in order (counts real builds, not cache hits)."""
    built = []
    original = cache_module.build_entry

    def counting(path, settings, folder, store=None):
        built.append(path)
        return original(path, settings, folder, store)

    monkeypatch.setattr(cache_module, "build_entry", counting)
    return built


def preprocess(argv: list[str]) -> int:
    """`ichor preprocess ARGV` (as ichor.cli runs it)."""
    parser = argparse.ArgumentParser()
    preprocess_cli.add_arguments(parser)
    return preprocess_cli.run(parser.parse_args(argv))


def setup(manifests, cache_dir, **kwargs) -> CBFDataModule:
    dm = CBFDataModule(manifests, cache_dir=str(cache_dir), log_dir=str(cache_dir), **{**SMALL, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def scan_count(manifests) -> int:
    return sum(len(pd.read_csv(path)) for path in manifests)


def test_second_run_reuses_touched_file_rebuilds_new_settings_new_key(manifests, tmp_path, builds):
    n = scan_count(manifests)
    first = setup(manifests, tmp_path)
    assert len(builds) == n
    second = setup(manifests, tmp_path)
    assert len(builds) == n  # nothing rebuilt
    assert [e.array_path for e in second.datasets["predict"].entries] == [
        e.array_path for e in first.datasets["predict"].entries
    ]

    touched = first.rows["path"][2]
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    setup(manifests, tmp_path)
    assert len(builds) == n  # the same bytes: the entry is the file's content's, not its date's

    other = setup(manifests, tmp_path, spacing=5.0, shape=(32, 40, 32))
    assert len(builds) == 2 * n and other.cache.folder != first.cache.folder
    assert other.harmonisation_settings()["cache_key"] != first.harmonisation_settings()["cache_key"]
    setup(manifests, tmp_path, normalization="zscore")  # applied when reading: same cache
    assert len(builds) == 2 * n
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


def _replace_keeping_size_and_mtime(path: Path, data: bytes, in_place: bool) -> None:
    """Put ``data`` (same length) at ``path`` and set the old mtime back: what size + mtime cannot see."""
    stat = os.stat(path)
    assert len(data) == stat.st_size
    if in_place:
        path.write_bytes(data)
    else:
        (path.parent / "new.tmp").write_bytes(data)
        os.replace(path.parent / "new.tmp", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns


@pytest.mark.parametrize("in_place", [True, False], ids=["overwritten", "replaced"])
def test_a_file_replaced_with_the_same_size_and_mtime_is_harmonised_again(tmp_path, in_place):
    first, second = save(tmp_path / "a.nii", brain(0)), save(tmp_path / "b.nii", brain(1))  # .nii: same size
    cache = ScanCache(tmp_path / "cache", HarmonisationSettings.create(4.0, (16, 16, 16)))
    assert cache.build([str(first)], progress=False) == {}
    before = cache.lookup(str(first))
    _replace_keeping_size_and_mtime(first, second.read_bytes(), in_place)
    assert cache.lookup(str(first)) is None  # stale: not served
    assert cache.build([str(first)], progress=False) == {}
    after = cache.lookup(str(first))
    assert after.brain_mean != before.brain_mean
    assert not np.array_equal(read_cached(after.array_path), read_cached(before.array_path))
    _replace_keeping_size_and_mtime(first, save(tmp_path / "c.nii", brain(0)).read_bytes(), in_place)
    assert cache.lookup(str(first)).array_path == before.array_path  # the first bytes again: their entry


def test_copied_or_moved_file_reuses_its_entry_and_unchanged_files_are_not_reread(tmp_path, monkeypatch):
    original = save(tmp_path / "a.nii.gz", brain(0))
    cache = ScanCache(tmp_path / "cache", HarmonisationSettings.create(4.0, (16, 16, 16)))
    cache.build([str(original)], progress=False)
    entry = cache.lookup(str(original))
    copy = tmp_path / "elsewhere" / "copy.nii.gz"
    copy.parent.mkdir()
    shutil.copy2(original, copy)
    assert cache.lookup(str(copy)).array_path == entry.array_path
    os.replace(original, tmp_path / "moved.nii.gz")
    assert cache.lookup(str(tmp_path / "moved.nii.gz")).array_path == entry.array_path
    # an unchanged file's content key comes from the store, not from reading the file again
    identity._memo.clear()  # as in a new process
    monkeypatch.setattr(identity, "open", _not_read, raising=False)
    assert cache.lookup(str(copy)).array_path == entry.array_path
    shutil.copy2(tmp_path / "moved.nii.gz", copy)  # rewritten (same bytes): hashed again
    with pytest.raises(AssertionError, match="read again"):
        cache.lookup(str(copy))


def _not_read(*args, **kwargs):
    raise AssertionError("a file was read again")


def test_cached_arrays_are_float16_memory_mapped_and_match_harmonisation(manifests, tmp_path):
    dm = setup(manifests, tmp_path, normalization="none")
    entry, path = dm.datasets["predict"].entries[0], dm.rows["path"][0]
    stored = read_cached(entry.array_path)
    assert isinstance(stored.base.base.obj, mmap.mmap)  # a view of the file mapping, not a copy in memory
    assert stored.dtype == np.float16 and stored.shape == (48, 56, 48)
    direct = harmonise(load_cbf(path), dm.settings)
    np.testing.assert_array_equal(~np.isnan(stored), direct.mask)
    np.testing.assert_allclose(np.nan_to_num(stored), direct.cbf, rtol=1e-3, atol=1e-2)  # float16 precision
    np.testing.assert_allclose(entry.affine, direct.affine)
    item = dm.datasets["predict"][0]
    np.testing.assert_allclose(item["image"][0].numpy(), np.nan_to_num(stored).astype(np.float32))


def test_parallel_build_gives_the_same_arrays(manifests, tmp_path):
    serial = setup(manifests, tmp_path / "serial")
    parallel = setup(manifests, tmp_path / "parallel", num_workers=2)
    for a, b in zip(serial.datasets["predict"].entries, parallel.datasets["predict"].entries):
        np.testing.assert_array_equal(read_cached(a.array_path), read_cached(b.array_path))


def test_preprocess_command_builds_the_cache_fit_reuses(manifests, tmp_path, builds, capsys):
    n = scan_count(manifests)
    config = tmp_path / "config.yaml"
    config.write_text(
        "data:\n  class_path: ichor.data.CBFDataModule\n  init_args:\n"
        f"    manifests: {manifests}\n    cache_dir: {tmp_path / 'cache'}\n    spacing: 4.0\n    shape: [48, 56, 48]\n"
    )
    assert (
        preprocess(
            ["--config", str(config), "--workers", "0", "--no-progress", "--export-nifti", str(tmp_path / "nifti")]
        )
        == 0
    )
    assert f"{n} harmonised, 0 already cached, 0 bad" in capsys.readouterr().out
    assert len(list((tmp_path / "nifti").rglob("*_harmonised_cbf.nii.gz"))) == n
    setup(manifests, tmp_path / "cache")
    assert len(builds) == n  # the datamodule found everything already built
    assert preprocess(["--config", str(config), "--workers", "0", "--no-progress"]) == 0
    assert f"0 harmonised, {n} already cached" in capsys.readouterr().out


def test_settings_key_depends_on_every_geometry_setting():
    base = HarmonisationSettings.create(2.0, (96, 112, 96))
    keys = {
        base.key(),
        HarmonisationSettings.create(2.5, (96, 112, 96)).key(),
        HarmonisationSettings.create(2.0, (96, 96, 96)).key(),
        HarmonisationSettings.create(2.0, (96, 112, 96), volume="mean").key(),
    }
    assert len(keys) == 4 and base.key() == HarmonisationSettings.create((2, 2, 2), [96, 112, 96]).key()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_cache_workers_end_with_their_parent(tmp_path):
    """A killed `ichor preprocess` leaves no worker running: the pool's initialiser ties workers to the parent."""
    script = (
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from ichor.data.workers import single_threaded\n"
        "pool = ProcessPoolExecutor(2, mp_context=get_context('fork'), initializer=single_threaded, initargs=(os.getpid(),))\n"
        "pids = pool.submit(os.getpid).result(), pool.submit(os.getpid).result()\n"
        "for _ in range(2): pool.submit(time.sleep, 60)\n"
        "print(*pids, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert workers and all(_alive(pid) for pid in workers)
    parent.kill()  # SIGKILL: no clean-up code of the parent runs
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
