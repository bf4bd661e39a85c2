"""benchmarks/recipe_grid.py: every recipe is a valid run of the demo config, and the choice follows the rule."""

import importlib.util

import pandas as pd
import pytest
from helpers import REPO

spec = importlib.util.spec_from_file_location("recipe_grid", REPO / "benchmarks" / "recipe_grid.py")
grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid)


def row(recipe: str, gain: float, sd: float, rank: tuple[float, float], final: float) -> dict:
    return {"recipe": recipe, "auroc_gain": gain, "auroc_gain_sd": sd, "auroc_final": final} | dict(
        zip(("rankme_initial", "rankme_final"), rank)
    )


def test_a_recipe_counts_only_beyond_the_draws_spread_with_rankme_doubled():
    table = pd.DataFrame(
        [
            row("noisy", 0.10, 0.06, (10, 30), 0.70),  # gain within 2 sd: does not beat its start
            row("collapsed", 0.08, 0.01, (10, 4), 0.69),  # beats its start, RankMe falls
            row("counts", 0.05, 0.01, (10, 21), 0.60),
        ]
    )
    chosen = grid.with_verdicts(table)
    assert chosen["counts"].tolist() == [False, False, True]
    assert chosen.loc[chosen["chosen"], "recipe"].item() == "counts"  # not the highest AUROC, which does not count
    without = grid.with_verdicts(table.iloc[:2].assign(rankme_final=[30, 9.5]))  # none doubles: RankMe kept decides
    assert without.loc[without["chosen"], "recipe"].item() == "collapsed"
    assert without.loc[without["chosen"], "why"].item().startswith("none counts")


@pytest.mark.parametrize("name", sorted(grid.RECIPES))
def test_every_recipe_is_a_valid_demo_run_with_the_probe_on_the_selection_cohort(name):
    from ichor.training.runs import parse_run

    config = parse_run(grid.recipe_run(name, epochs=3, draws=2, probe_manifests="data_manifests/probe"))
    model, data = config.model.init_args, config.data.init_args
    assert config.trainer.max_epochs == 3
    (probe,) = config.trainer.callbacks
    assert probe.init_args.manifests == ["data_manifests/probe"] and probe.init_args.every_n_epochs == 3
    patch = model.backbone.patch_size
    assert all(size % patch == 0 for size in data.shape)  # the grid holds whole patches
    assert model.norm_pix_loss == (name in ("previous", "mask_0.5", "patch_6", "relative"))
    assert (data.normalization == "relative") == (name in ("relative", "plain_relative", "paper"))
