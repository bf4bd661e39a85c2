"""Encoder export and loading: metadata, decoder stripping, other input shapes."""

import json

import pytest
import torch

from ichor.cli import main
from ichor.models import Backbone
from ichor.models.weights import (
    WeightsError,
    encoder_state_from_checkpoint,
    export_encoder,
    load_encoder,
    read_metadata,
)
from ichor.pretrain import MAEPretrainer

HARMONISATION = {"shape": [16, 24, 16], "spacing": [4.0, 4.0, 4.0], "normalization": "scale", "orientation": "RAS"}


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint as `ichor fit` writes it, after setup recorded shape and harmonisation."""
    torch.manual_seed(0)
    module = MAEPretrainer(backbone=Backbone("mae_vit_micro", patch_size=8, img_size=(16, 24, 16)))
    module.data_record = {"harmonisation": HARMONISATION, "data_summary": {"scans": 12, "studies": {"study-01": 12}}}
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "epoch": 3,
        "global_step": 42,
    }
    module.on_save_checkpoint(checkpoint)  # what Lightning's checkpointing adds: data and encoder records
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    return path, module


def test_export_then_load_gives_the_same_encoder(tmp_path, checkpoint):
    path, module = checkpoint
    out = tmp_path / "encoder"
    assert main(["export-encoder", str(path), "--out", str(out)]) == 0
    metadata = json.loads((out / "encoder.json").read_text())
    assert metadata["harmonisation"]["spacing"] == [4.0, 4.0, 4.0]
    assert metadata["img_size"] == [16, 24, 16]
    assert metadata["architecture"]["embed_dim"] == 96 and metadata["architecture"]["patch_size"] == 8
    assert metadata["pretraining"]["global_step"] == 42 and metadata["data_summary"]["scans"] == 12

    encoder, loaded = load_encoder(out)
    assert loaded == metadata
    reference = module.mae.encoder.eval()
    images = torch.rand(2, 1, 16, 24, 16)
    brain = images > 0.3
    expected, _ = reference.forward_features(images, brain)
    got, _ = encoder.eval().forward_features(images, brain)
    torch.testing.assert_close(got, expected)
    # Loading a Lightning checkpoint directly gives the same weights.
    direct, _ = load_encoder(path)
    for key, value in direct.state_dict().items():
        torch.testing.assert_close(value, encoder.state_dict()[key])


def test_decoder_is_stripped_in_one_place(checkpoint):
    path, module = checkpoint
    state = module.state_dict()
    record = torch.load(path, map_location="cpu", weights_only=False)["ichor_encoder"]
    assert record["method"] == "mae" and record["prefix"] == "mae.encoder."
    encoder = encoder_state_from_checkpoint(state, record)
    assert any(k.startswith("mae.decoder") for k in state)  # there was a decoder to strip
    assert encoder.keys() == module.mae.encoder.state_dict().keys()
    with pytest.raises(WeightsError, match="no 'mae.encoder.\\*' keys"):
        encoder_state_from_checkpoint({"mae.decoder_norm.weight": torch.zeros(1)}, record)


def test_other_input_shape_regenerates_position_embeddings(tmp_path, checkpoint):
    path, _ = checkpoint
    encoder, _ = load_encoder(export_encoder(path, tmp_path / "e"), img_size=(32, 32, 32))
    assert encoder.img_size == (32, 32, 32) and encoder.pos_embed.shape[1] == 4 * 4 * 4
    tokens, _ = encoder.forward_features(torch.rand(1, 1, 32, 32, 32))
    assert tokens.shape == (1, 64, 96)
    with pytest.raises(ValueError, match="multiple"):
        load_encoder(tmp_path / "e", img_size=(30, 32, 32))


def test_metadata_is_checked(tmp_path, checkpoint):
    path, _ = checkpoint
    out = export_encoder(path, tmp_path / "e")
    meta_path = out / "encoder.json"
    metadata = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**metadata, "format_version": 99}))
    with pytest.raises(WeightsError, match="v99"):
        read_metadata(out)
    del metadata["harmonisation"]
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(WeightsError, match="harmonisation"):
        read_metadata(out)
    with pytest.raises(WeightsError, match="not found"):
        read_metadata(tmp_path)


def test_export_refuses_to_overwrite_and_bad_checkpoints(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    export_encoder(path, tmp_path / "e")
    assert main(["export-encoder", str(path), "--out", str(tmp_path / "e")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["export-encoder", str(path), "--out", str(tmp_path / "e"), "--overwrite"]) == 0
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(WeightsError, match="not a Lightning checkpoint of an ichor pre-training run"):
        export_encoder(tmp_path / "other.ckpt", tmp_path / "f")
