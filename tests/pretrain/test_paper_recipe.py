"""The paper's recipe as shipped (pretrain_ichor_paper.yaml) builds at its own scale, not only shrunk.

tests/cli/test_configs.py runs every config small (a micro ViT, patch 8, a 32 x 48 x 32 grid); this
test builds the config's own model, ViT-B with 12^3 patches on a 96^3 grid, and runs one step of it.
"""

import math

import torch
import yaml
from helpers import CONFIGS

from ichor.models import Backbone
from ichor.pretrain import MAEPretrainer


def test_paper_recipe_builds_vit_b_with_patch_12_on_96_cubed_and_scores_plain_masked_mse():
    config = yaml.safe_load((CONFIGS / "pretrain_ichor_paper.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert (data["spacing"], data["shape"]) == (2.0, [96, 96, 96])
    backbone = Backbone(**{**model["backbone"], "img_size": data["shape"], "compile": False})
    module = MAEPretrainer(
        backbone=backbone,
        mask_ratio=model["mask_ratio"],
        norm_pix_loss=model["norm_pix_loss"],
        brain_aware=model["brain_aware"],
    )
    mae = module.mae
    encoder, decoder = mae.encoder, mae.decoder
    assert (encoder.embed_dim, encoder.depth, encoder.config.pos_embed) == (768, 12, "sincos")  # ViT-B
    assert encoder.grid == (8, 8, 8) and encoder.patch_size**3 == 1728  # 512 patches of 24 mm
    assert (decoder.embed.out_features, len(decoder.blocks)) == (384, 4)
    assert (mae.mask_ratio, mae.norm_pix_loss) == (0.5, False)

    images = torch.zeros(1, 1, 96, 96, 96)
    grid = torch.stack(torch.meshgrid(*[torch.arange(96.0) - 47.5] * 3, indexing="ij"))
    brain = (grid / torch.tensor([35.0, 42.0, 34.0])[:, None, None, None]).pow(2).sum(0) <= 1
    images[0, 0][brain] = 0.6
    with torch.no_grad():
        loss, _, mask = mae(images, brain_mask=brain[None, None])
    brain_patches = int(mae.brain_patches(images, brain[None, None]).sum())
    assert int(mask.sum()) == brain_patches - math.floor(brain_patches * 0.5)  # half the brain is hidden
    assert math.isfinite(float(loss))
