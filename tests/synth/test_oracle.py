"""The benchmark's ceiling: what a perfect reader of each synthetic map would measure, recorded per scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichor.synth.render import oracle_features


def test_oracle_features_are_region_means_relative_to_the_brain_mean():
    cbf = np.full((4, 4, 4), 50.0, np.float32)
    cbf[0] = 25.0  # the AD region reads half the rest
    brain = np.ones_like(cbf, bool)
    ad = np.zeros_like(cbf)
    ad[0] = 1.0
    features = oracle_features(cbf, brain, {"AD": ad, "FTD": np.ones_like(cbf)})
    brain_mean = cbf.mean()
    assert features["ad_region_relative"] == pytest.approx(25.0 / brain_mean, abs=1e-6)
    assert features["ftd_region_relative"] == pytest.approx(1.0, abs=1e-6)
    assert features["log_brain_mean"] == pytest.approx(np.log(brain_mean), abs=1e-6)


def test_every_synthetic_scan_records_its_oracle_and_the_disease_shows_in_it(synthetic_manifests):
    rows = pd.concat([pd.read_csv(m).assign(folder=str(Path(m).parent)) for m in synthetic_manifests])
    oracle = []
    for _, row in rows.iterrows():
        sidecar = Path(row["folder"]) / row["path"].replace(".nii.gz", ".json")
        truth = json.loads(sidecar.read_text())["SyntheticGroundTruth"]
        oracle.append({"diagnosis": row["diagnosis"], **truth["oracle"]})
    table = pd.DataFrame(oracle)
    assert set(table.columns) >= {"ad_region_relative", "ftd_region_relative", "svd_region_relative", "log_brain_mean"}
    assert table.notna().all().all()
    means = table.groupby("diagnosis")["ad_region_relative"].mean()
    assert means["AD"] < means["CN"], means  # AD lowers CBF in its own region, relative to the rest of the brain
