"""`ichor import-encoder`: MONAI ViT / MaskedAutoEncoderViT weights as ICHOR encoders, token for token,
refused by name where the architectures differ; the imported encoder in `ichor embed` and the benchmark."""

import json

import pandas as pd
import pytest
import torch
from helpers import composition

from ichor.cli import main
from ichor.models.hub import sha256_file
from ichor.models.imports import import_monai
from ichor.models.weights import WeightsError, load_encoder

monai = pytest.importorskip("monai")
from monai.networks.nets import MaskedAutoEncoderViT, ViT  # noqa: E402

SMALL = dict(in_channels=1, img_size=(16, 16, 16), patch_size=8, hidden_size=48, num_heads=3)
IMPORT = dict(num_heads=3, spacing=4.0, normalization="scale")


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (biases, norms and position tables too), so that no mapped key is trivially zero or one."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.2)
    return net.eval()


def test_a_monai_vit_gives_the_same_tokens(tmp_path):
    vit = randomised(ViT(**SMALL, mlp_dim=96, num_layers=2))
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    command = ["import-encoder", "--format", "monai-vit", str(tmp_path / "vit.pt"), "--out", str(tmp_path / "e")]
    assert main([*command, "--num-heads", "3", "--spacing", "4", "--normalization", "scale"]) == 0
    encoder, record = load_encoder(tmp_path / "e")
    images = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected, _ = vit(images)
        got, _ = encoder.eval()(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert record["architecture"]["pos_embed"] == "learned" and record["architecture"]["norm_eps"] == 1e-5
    source = record["source"]
    assert source["format"] == "monai-vit" and source["position_table"] == "kept"
    assert source["sha256"] == sha256_file(tmp_path / "vit.pt") and source["checkpoint"] == str(tmp_path / "vit.pt")
    assert source["dropped"] == {"cross-attention LayerNorm, unused without cross-attention": 4}


def test_the_encoder_of_a_monai_mae_in_a_wrapper_checkpoint(tmp_path):
    """MONAI's MAE: a cls token every token attends to, the final norm inside ``blocks``, qkv biases, an MLP
    width that is no whole ratio, the decoder dropped; saved under a wrapper's prefix as Lightning does."""
    mae = randomised(
        MaskedAutoEncoderViT(
            **SMALL,
            mlp_dim=80,
            num_layers=2,
            decoder_hidden_size=24,
            decoder_num_heads=3,
            decoder_num_layers=1,
            qkv_bias=True,
        )
    )
    torch.save({"state_dict": {f"model.net.{k}": v for k, v in mae.state_dict().items()}}, tmp_path / "mae.ckpt")
    encoder, record = load_encoder(import_monai(tmp_path / "mae.ckpt", tmp_path / "e", "monai-mae", **IMPORT))
    images = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        tokens = torch.cat([mae.cls_token.expand(2, -1, -1), mae.patch_embedding(images)], dim=1)
        expected = mae.blocks(tokens)[:, 1:]  # MONAI's encoder path without the random masking
        got, _ = encoder.eval()(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert record["source"]["prefix"] == "model.net." and record["architecture"]["cls_token"] is True
    assert record["source"]["dropped"]["MAE decoder (the pretext task)"] > 0


def test_another_grid_interpolates_the_learned_position_table(tmp_path):
    vit = randomised(ViT(**SMALL, mlp_dim=96, num_layers=1))
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    out = import_monai(tmp_path / "vit.pt", tmp_path / "e", "monai-vit", **IMPORT, shape=(16, 32, 16))
    encoder, record = load_encoder(out)
    assert record["img_size"] == record["harmonisation"]["shape"] == [16, 32, 16]
    assert record["source"]["position_table"] == "interpolated from [16, 16, 16]"
    assert encoder.pos_embed.shape == (1, 2 * 4 * 2, 48)
    tokens, _ = encoder(torch.rand(1, 1, 16, 32, 16))
    assert tokens.shape == (1, 16, 48)
    # trilinear, corners aligned by voxel centres: the outer rows along the doubled axis are the source's
    source = vit.patch_embedding.position_embeddings.detach().reshape(2, 2, 2, 48)
    table = encoder.pos_embed.detach().reshape(2, 4, 2, 48)
    torch.testing.assert_close(table[:, 0], source[:, 0])
    torch.testing.assert_close(table[:, 3], source[:, 1])
    torch.testing.assert_close(table[:, 1], 0.75 * source[:, 0] + 0.25 * source[:, 1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(patch_size=(8, 8, 4)), r"patch size \(8, 8, 4\) is not cubic"),
        (dict(proj_type="perceptron"), "perceptron"),
    ],
)
def test_architecture_differences_are_refused_by_name(tmp_path, change, message):
    vit = ViT(**{**SMALL, **change}, mlp_dim=96, num_layers=1)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    with pytest.raises(WeightsError, match=message):
        import_monai(tmp_path / "vit.pt", tmp_path / "e", "monai-vit", **IMPORT)
    assert not (tmp_path / "e").exists()


def test_unknown_keys_and_wrong_settings_are_refused_by_name(tmp_path):
    state = ViT(**SMALL, mlp_dim=96, num_layers=1).state_dict()
    torch.save({**state, "blocks.0.attn.rel_pos.weight": torch.zeros(3)}, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"no counterpart .*: blocks\.0\.attn\.rel_pos\.weight"):
        import_monai(tmp_path / "extra.pt", tmp_path / "e", "monai-vit", **IMPORT)
    torch.save({k: v for k, v in state.items() if "position" not in k}, tmp_path / "no_table.pt")
    with pytest.raises(WeightsError, match="no position embeddings"):
        import_monai(tmp_path / "no_table.pt", tmp_path / "e", "monai-vit", **IMPORT)
    torch.save(state, tmp_path / "vit.pt")
    with pytest.raises(WeightsError, match=r"norm\.bias, norm\.weight; is --format monai-mae right"):
        import_monai(tmp_path / "vit.pt", tmp_path / "e", "monai-mae", **IMPORT)
    with pytest.raises(WeightsError, match="not divisible by 5 heads"):
        import_monai(tmp_path / "vit.pt", tmp_path / "e", "monai-vit", **{**IMPORT, "num_heads": 5})
    with pytest.raises(WeightsError, match=r"\(16, 24, 16\) with patch 8 does not give the 8 positions"):
        import_monai(tmp_path / "vit.pt", tmp_path / "e", "monai-vit", **IMPORT, img_size=(16, 24, 16))


@pytest.mark.slow
def test_an_imported_encoder_runs_through_embed_and_the_benchmark(tmp_path, downstream_manifests):
    from ichor.benchmark import load_config, run_benchmark

    torch.save(randomised(ViT(**SMALL, mlp_dim=96, num_layers=2)).state_dict(), tmp_path / "vit.pt")
    folder = import_monai(tmp_path / "vit.pt", tmp_path / "monai_vit", "monai-vit", **IMPORT)
    cache = tmp_path / "cache"
    command = ["embed", "--encoder", str(folder), "--manifest", *downstream_manifests, "--no-progress"]
    assert main([*command, "--out", str(tmp_path / "f.csv"), "--cache-dir", str(cache)]) == 0
    assert pd.read_csv(tmp_path / "f.csv").filter(regex=r"^f\d+$").shape == (12, 48)

    config = tmp_path / "benchmark.yaml"
    config.write_text(
        json.dumps(
            {
                "pretrain": {},
                "encoders": {"monai_vit": str(folder)},
                "tasks": [
                    {
                        "name": "AD",
                        "target": "diagnosis",
                        "head": "classification",
                        "metric": "auroc",
                        "config": [str(f) for f in composition("finetune_diagnosis.yaml")],
                    }
                ],
                "modes": ["linear_probe"],
                "scratch": False,
                "baseline": False,
                "budgets": [1.0],
                "folds": 2,
                "overrides": {
                    "data": {
                        "init_args": {
                            "manifests": list(downstream_manifests),
                            "cache_dir": str(cache),
                            "spacing": 4.0,
                            "shape": [16, 16, 16],
                            "num_workers": 0,
                        }
                    }
                },
            }
        )
    )
    table = run_benchmark(load_config(config), tmp_path / "out")
    assert set(table["method"]) == {"monai_vit"} and len(table) == 2  # one row per fold
    assert table["test/auroc"].between(0, 1).all()


def test_benchmark_encoders_are_named_once(tmp_path):
    from ichor.benchmark import load_config

    task = {"name": "AD", "target": "diagnosis", "head": "classification", "metric": "auroc", "config": "f.yaml"}
    path = tmp_path / "b.yaml"
    path.write_text(json.dumps({"pretrain": {"mae": "x.yaml"}, "encoders": {"mae": "e"}, "tasks": [task]}))
    with pytest.raises(ValueError, match="b.yaml: benchmark config: mae named under both `pretrain` and `encoders`"):
        load_config(path)
    path.write_text(json.dumps({"pretrain": {}, "encoders": {"scratch": "e"}, "tasks": [task]}))
    with pytest.raises(ValueError, match="reserved names"):
        load_config(path)
    path.write_text(json.dumps({"pretrain": {}, "tasks": [task]}))
    with pytest.raises(ValueError, match="neither `pretrain` nor `encoders` names a method"):
        load_config(path)


def test_fine_tuning_treats_learned_tables_as_the_embedding_layer(tmp_path):
    """Layer-wise lr decay: the position table and cls token train with the patch embedding, without weight decay."""
    from ichor.training.lrd import param_groups_lrd

    mae = MaskedAutoEncoderViT(**SMALL, mlp_dim=96, num_layers=2, decoder_num_heads=3, decoder_hidden_size=24)
    torch.save(mae.state_dict(), tmp_path / "mae.pt")
    model = torch.nn.Module()
    model.encoder, _ = load_encoder(import_monai(tmp_path / "mae.pt", tmp_path / "e", "monai-mae", **IMPORT))
    groups = {name: group for group in param_groups_lrd(model, 1e-3, 0.05, 2) for name in group["names"]}
    for name in ("encoder.pos_embed", "encoder.cls_token"):
        assert groups[name]["layer_id"] == 0 and groups[name]["weight_decay"] == 0.0
    assert groups["encoder.patch_embed.proj.weight"]["weight_decay"] == 0.05
