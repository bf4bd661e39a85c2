"""`from ichor import Encoder`: folders and pinned URLs, the same features as `ichor embed`; packing,
the cache, checksum refusal; the adaptation record and the compatibility check on load."""

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_dataset, make_encoder

from ichor import Encoder
from ichor.cli import main
from ichor.models.hub import CACHE_ENV, cache_dir, pack_encoder, pinned_url, sha256_file
from ichor.models.weights import WeightsError, load_encoder, read_metadata


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """An encoder exported and packed by `ichor export-encoder --pack`, its printed sha256, and a small data set."""
    root = tmp_path_factory.mktemp("shared")
    make_encoder(root)
    return {
        "root": root,
        "checkpoint": root / "pretrain.ckpt",
        "manifests": make_dataset(root / "data", studies=1, subjects=4),
        "cache": str(root / "scans"),
    }


def features(table: pd.DataFrame) -> np.ndarray:
    return table.filter(regex=r"^f\d+$").to_numpy()


def test_folder_and_file_url_give_the_features_of_ichor_embed(shared, tmp_path, capsys):
    out = tmp_path / "encoder"
    assert main(["export-encoder", str(shared["checkpoint"]), "--out", str(out), "--pack"]) == 0
    printed = capsys.readouterr().out
    sha256 = re.search(r"sha256: ([0-9a-f]{64})", printed)[1]
    source = re.search(r"source: (\S+)", printed)[1]
    assert source == pinned_url(tmp_path / "encoder.tar.gz", sha256) and source.startswith("file://")

    command = ["embed", "--encoder", str(out), "--manifest", *shared["manifests"], "--no-progress"]
    assert main([*command, "--out", str(tmp_path / "f.csv"), "--cache-dir", shared["cache"]]) == 0
    expected = pd.read_csv(tmp_path / "f.csv")

    from_folder = Encoder.from_pretrained(out).embed(shared["manifests"], cache_dir=shared["cache"])
    np.testing.assert_allclose(features(from_folder), features(expected), atol=1e-5)
    assert from_folder["subject"].tolist() == expected["subject"].tolist()

    cache = tmp_path / "cache"
    encoder = Encoder.from_pretrained(source, cache_dir=cache)
    assert encoder.folder == cache / sha256 and sorted(p.name for p in cache.iterdir()) == [sha256]
    np.testing.assert_allclose(
        features(encoder.embed(shared["manifests"], cache_dir=shared["cache"])), features(expected), atol=1e-5
    )
    # fetched once: the cached copy serves the URL when the archive is gone
    (tmp_path / "encoder.tar.gz").unlink()
    assert Encoder.from_pretrained(source, cache_dir=cache).folder == encoder.folder

    # CBF maps given directly are embedded as the manifest's rows are
    manifest = Path(shared["manifests"][0])
    maps = [str(manifest.parent / name) for name in pd.read_csv(manifest)["path"]]
    np.testing.assert_allclose(features(encoder.embed(maps, cache_dir=shared["cache"])), features(expected), atol=1e-5)


def test_embed_runs_the_network_held_in_memory_not_a_fresh_copy_from_disk(shared, tmp_path):
    """A notebook that edits ``enc.network`` (or loaded it once for many calls) embeds with that network."""
    import torch

    folder = tmp_path / "encoder"
    assert main(["export-encoder", str(shared["checkpoint"]), "--out", str(folder)]) == 0
    encoder = Encoder.from_pretrained(folder)
    before = features(encoder.embed(shared["manifests"], cache_dir=shared["cache"]))
    with torch.no_grad():
        for parameter in encoder.network.parameters():
            parameter.zero_()
    after = features(encoder.embed(shared["manifests"], cache_dir=shared["cache"]))
    assert np.allclose(after, 0, atol=1e-6) and not np.allclose(before, 0, atol=1e-3)


def test_wrong_checksum_is_refused_and_nothing_is_left(shared, tmp_path):
    archive, sha256 = pack_encoder(make_encoder(tmp_path), tmp_path / "e.tar.gz")
    wrong = ("0" if sha256[0] != "0" else "1") + sha256[1:]
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match=f"sha256 {sha256} differs from the pinned {wrong}"):
        Encoder.from_pretrained(pinned_url(archive, wrong), cache_dir=cache)
    assert list(cache.rglob("*")) == []  # no partial download, no unpacked folder
    with pytest.raises(WeightsError, match="needs its checksum"):
        Encoder.from_pretrained(archive.resolve().as_uri(), cache_dir=cache)
    with pytest.raises(WeightsError, match="only https:// and file:// sources"):
        Encoder.from_pretrained(f"http://example.org/e.tar.gz#sha256={sha256}", cache_dir=cache)
    with pytest.raises(WeightsError, match="could not be read"):
        Encoder.from_pretrained(pinned_url(tmp_path / "absent.tar.gz", sha256), cache_dir=cache)
    assert list(cache.rglob("*")) == []


def test_an_archive_with_anything_else_is_refused(tmp_path):
    """Only the two export files are unpacked: no other names, no paths out of the cache, no links."""
    folder = make_encoder(tmp_path)
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "encoder.json", arcname="encoder.json")
        tar.add(folder / "encoder.safetensors", arcname="../encoder.safetensors")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError, match=r"holds exactly encoder.json, encoder.safetensors, found \['../encoder"):
        Encoder.from_pretrained(pinned_url(archive, sha256_file(archive)), cache_dir=cache)
    assert list(cache.rglob("*")) == [] and not (tmp_path / "encoder.safetensors").exists()


def test_packing_is_reproducible_and_holds_only_the_export(tmp_path):
    folder = make_encoder(tmp_path)
    _, first = pack_encoder(folder, tmp_path / "a.tar.gz")
    _, second = pack_encoder(folder, tmp_path / "b.tar.gz")
    assert first == second
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["encoder.json", "encoder.safetensors"]


def test_cache_folder_is_the_user_cache_unless_the_variable_says_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ichor" / "encoders"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "encoders"


def test_the_adaptation_record_is_complete(shared, tmp_path):
    out = tmp_path / "e"
    assert main(["export-encoder", str(shared["checkpoint"]), "--out", str(out), "--licence", "CC-BY-4.0"]) == 0
    record = read_metadata(out)
    assert record["format_version"] == 2
    assert record["harmonisation"]["shape"] == record["img_size"] == [16, 16, 16]
    assert {"spacing", "orientation", "normalization"} <= set(record["harmonisation"])
    assert record["architecture"]["patch_size"] == 8 and record["architecture"]["pos_embed"] == "sincos"
    assert record["pooling"] == "brain_mean" and record["pretraining"]["method"] == "mae"
    assert {"ichor", "torch", "lightning"} <= set(record["software"])
    assert record["licence"] == "CC-BY-4.0" and "arXiv:2603.05247" in record["citation"]


def test_loading_says_everything_that_differs(shared, tmp_path):
    out = make_encoder(tmp_path)
    path = out / "encoder.json"
    record = json.loads(path.read_text())
    changed = {
        **record,
        "architecture": {**record["architecture"], "rotary": True, "pos_embed": "fourier"},
        "harmonisation": {**record["harmonisation"], "shape": [32, 32, 32]},
    }
    path.write_text(json.dumps(changed))
    with pytest.raises(WeightsError) as error:
        load_encoder(out)
    message = str(error.value)
    assert (
        "rotary" in message and "'fourier'" in message and "[32, 32, 32] differs from img_size [16, 16, 16]" in message
    )

    path.write_text(json.dumps({**record, "architecture": {**record["architecture"], "depth": 5}}))
    with pytest.raises(WeightsError, match=r"do not fit the recorded architecture: missing blocks\.4\.attn"):
        load_encoder(out)
    path.write_text(json.dumps({**record, "architecture": {**record["architecture"], "embed_dim": 48}}))
    with pytest.raises(WeightsError, match=r"norm\.weight: \(96,\) in the weights, \(48,\) in the architecture"):
        load_encoder(out)


def test_a_version_1_export_still_loads(tmp_path):
    out = make_encoder(tmp_path)
    path = out / "encoder.json"
    record = json.loads(path.read_text())
    architecture = {k: v for k, v in record["architecture"].items() if k not in ("pos_embed", "cls_token", "norm_eps")}
    old = {k: v for k, v in record.items() if k not in ("pooling", "software", "licence", "citation")}
    path.write_text(json.dumps({**old, "format_version": 1, "architecture": architecture}))
    encoder = Encoder.from_pretrained(out)
    assert encoder.network.config.pos_embed == "sincos" and "96-wide" in repr(encoder)
