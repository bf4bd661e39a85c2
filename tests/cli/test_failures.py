"""Tool commands fail in one line naming the file and what is wrong; the traceback only when asked for."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import config_args, make_encoder

from ichor.cli import main
from ichor.io import UnreadableFileError

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


def one_line(capsys, command: str) -> str:
    """The error of a failed ``ichor <command>``: one line, then only the hint about --traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("(the traceback: add --traceback")
    lines = [line for line in err[:-1] if line.startswith(f"ichor {command}: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def encoder(tmp_path) -> Path:
    """An exported encoder (its pre-training checkpoint beside it, ``pretrain.ckpt``) in ``tmp_path``."""
    return make_encoder(tmp_path)


def embed(encoder: Path, manifests, out: Path, *more: str) -> list[str]:
    return ["embed", "--encoder", str(encoder), "--manifest", *manifests, "--out", str(out), "--no-progress",
            "--device", "cpu", "--cache-dir", str(out.parent / "cache"), *more]  # fmt: skip


def test_a_corrupt_safetensors_file_is_one_line_naming_it(tmp_path, capsys, encoder, downstream_manifests):
    weights = encoder / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    args = embed(encoder, downstream_manifests, tmp_path / "features.csv")
    assert main(args) == 1
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err


def test_a_corrupt_checkpoint_and_the_traceback_on_request(tmp_path, capsys, encoder, monkeypatch):
    checkpoint = tmp_path / "pretrain.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    args = ["export-encoder", str(checkpoint), "--out", str(tmp_path / "out")]
    assert main(args) == 1
    assert f"{checkpoint}: not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(UnreadableFileError):
        main([*args, "--traceback"])
    monkeypatch.setenv("ICHOR_TRACEBACK", "1")
    with pytest.raises(UnreadableFileError):
        main(args)


@pytest.mark.parametrize(
    ("failure", "says"),
    [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left")],
)
def test_an_output_that_cannot_be_written_is_one_line_naming_it(
    tmp_path, capsys, monkeypatch, encoder, downstream_manifests, failure, says
):
    """A read-only folder or a full disk (simulated where the write lands: tests may run as root)."""
    out = tmp_path / "features.csv"
    replace = os.replace

    def refuse(source, target):  # the output only (the cache is written too)
        if Path(target) != out:
            return replace(source, target)
        raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(os, "replace", refuse)
    assert main(embed(encoder, downstream_manifests, out)) == 1
    line = one_line(capsys, "embed")
    assert f"cannot write {out}: {says}" in line
    assert not out.exists() and not list(tmp_path.glob(".*features.csv"))  # no half-written file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_for_real(tmp_path, capsys, encoder):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["export-encoder", str(tmp_path / "pretrain.ckpt"), "--out", str(folder / "enc")]) == 1
        assert "Permission denied" in one_line(capsys, "export-encoder")
    finally:
        folder.chmod(0o700)


@NO_GPU
def test_device_cuda_without_a_gpu(tmp_path, capsys, encoder, downstream_manifests):
    assert main([*embed(encoder, downstream_manifests, tmp_path / "f.csv"), "--device", "cuda"]) == 1
    line = one_line(capsys, "embed")
    assert "--device cuda: no GPU is available on this machine; run on the CPU with --device cpu" in line
    assert not (tmp_path / "f.csv").exists()
    assert main([*embed(encoder, downstream_manifests, tmp_path / "f.csv"), "--device", "tpu7"]) == 1
    assert "--device tpu7: not a device" in one_line(capsys, "embed")


@NO_GPU
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_accelerator_gpu_without_a_gpu(tmp_path, monkeypatch, capsys, accelerator):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *config_args("pretrain_demo.yaml"), f"--trainer.accelerator={accelerator}"]) == 1
    line = one_line(capsys, "fit")
    assert f"trainer.accelerator is {accelerator!r}, but no GPU is available on this machine" in line
    assert "--trainer.accelerator cpu" in line
    assert not (tmp_path / "runs").exists()  # refused before a run folder is claimed


def test_explain_names_its_own_remedy_for_bad_scans(tmp_path, capsys, tiny_encoder, downstream_manifests):
    """explain cannot skip scans: it says so, instead of recommending an on_bad_scan it does not have."""
    from lightning.pytorch import Trainer

    from ichor.data import CBFDataModule
    from ichor.downstream import DownstreamTask

    data = CBFDataModule(downstream_manifests, cache_dir=str(tmp_path / "cache"), spacing=4.0, shape=(16, 16, 16),
                         normalization="relative", target="diagnosis", augment=None, num_workers=0, batch_size=4,
                         val_fraction=0.0, test_fraction=0.0, progress=False, log_dir=str(tmp_path))  # fmt: skip
    task = DownstreamTask(str(tiny_encoder), mode="linear_probe", figures=False)
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, datamodule=data)
    trainer.save_checkpoint(tmp_path / "task.ckpt")

    manifest = Path(downstream_manifests[0])
    rows = pd.read_csv(manifest)
    bad = rows.iloc[[0]].assign(subject="BROKEN", path="broken_cbf.nii.gz")
    folder = tmp_path / "data"
    shutil.copytree(manifest.parent, folder)
    (folder / "broken_cbf.nii.gz").write_bytes(b"not a NIfTI file")
    pd.concat([rows, bad]).to_csv(folder / "manifest.csv", index=False)
    out = tmp_path / "explain"
    args = ["explain", str(tmp_path / "task.ckpt"), "--manifest", str(folder / "manifest.csv"), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 bad scan (ichor explain explains every row it is given: fix them, or remove their rows" in err
    assert "broken_cbf.nii.gz" in err and "on_bad_scan" not in err
    assert not out.exists()
