"""Loading a file never runs code from it: every way a user hands ICHOR a checkpoint refuses a crafted one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ichor.io import UnreadableFileError, load_checkpoint


class _WritesAFile:
    """Unpickling this runs ``os.system``-like code of the file's choosing: here it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def crafted_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A Lightning-shaped checkpoint whose unpickling would write ``marker``."""
    marker, path = folder / "code_ran.txt", folder / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _WritesAFile(marker)}}, path)
    return path, marker


def loaders():
    """Every entry point that reads a checkpoint a user names."""
    from ichor import Encoder
    from ichor.explain.checkpoint import load_task
    from ichor.models.weights import export_encoder, load_encoder

    return {
        "load_checkpoint": load_checkpoint,
        "load_encoder": load_encoder,
        "export_encoder": lambda path: export_encoder(path, path.parent / "out"),
        "Encoder.from_pretrained": Encoder.from_pretrained,
        "explain.load_task": load_task,
    }


@pytest.mark.parametrize(
    "entry", ["load_checkpoint", "load_encoder", "export_encoder", "Encoder.from_pretrained", "explain.load_task"]
)
def test_a_crafted_checkpoint_is_refused_before_its_code_runs(tmp_path, entry):
    path, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"crafted\.ckpt") as error:
        loaders()[entry](path)
    assert not marker.exists(), f"{entry} ran the file's code"
    assert "refused" in str(error.value) or "run code" in str(error.value)


@pytest.mark.parametrize("damage", ["truncated", "not_a_zip", "empty"])
def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path, damage):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    data = good.read_bytes()
    path = tmp_path / f"{damage}.ckpt"
    path.write_bytes({"truncated": data[: len(data) // 2], "not_a_zip": b"hello" * 50, "empty": b""}[damage])
    with pytest.raises(UnreadableFileError, match=rf"{damage}\.ckpt: not a readable checkpoint"):
        load_checkpoint(path)


def test_a_plain_checkpoint_loads(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4.0)}, "hyper_parameters": {"lr": 0.1, "name": "x"}, "epoch": 3}, path)
    checkpoint = load_checkpoint(os.fspath(path))
    assert torch.equal(checkpoint["state_dict"]["w"], torch.arange(4.0)) and checkpoint["epoch"] == 3
