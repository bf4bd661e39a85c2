"""The CBF-quality task: QEI sees the synthetic artefacts, ratings follow QEI, the QEI baseline of `ichor cv`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import CONFIGS, REPO, composition, make_dataset, tiny_cv
from scipy.stats import spearmanr

from ichor.data.manifest import expand_manifests, read_manifest, read_manifests
from ichor.downstream import cv
from ichor.downstream.cv import QEI_METRIC, Fold, QEIBaseline, fold_test_rows
from ichor.synth import SynthOptions, generate_dataset

SEVERITIES = ["att_severity", "labelfail_severity", "motion_severity", "dropout_severity"]
# 1 study (native 3D GRASE) x 20 subjects at twice the artefact rate: seed 5 gives 5 clean
# scans, 2 labelling failures (0.37, 0.71), 9 with motion and every rating level.
N_SUBJECTS, SEED, ARTEFACT_RATE = 20, 5, 2.0


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> pd.DataFrame:
    """The study's manifest rows with each scan's QEI (column qei)."""
    out = tmp_path_factory.mktemp("quality") / "data"
    manifests = generate_dataset(
        out, 1, N_SUBJECTS, seed=SEED, workers=2, progress=False, options=SynthOptions(artefact_rate=ARTEFACT_RATE)
    )
    rows = read_manifests(manifests)
    baseline = QEIBaseline()
    baseline.score(rows)
    return rows.assign(qei=[baseline.qei[path] for path in rows["path"]])


@pytest.mark.slow  # generates 20 scans (about 7 s on 2 cores)
def test_qei_falls_as_recorded_artefacts_worsen_and_follows_the_rating(study):
    worst = study[SEVERITIES].max(axis=1)  # the worst artefact a scan has
    clean = worst == 0
    assert 0 < clean.sum() < len(study) and study["labelfail_severity"].gt(0).any()
    assert spearmanr(study["qei"], worst).statistic <= -0.6  # measured -0.81
    assert study.loc[clean, "qei"].median() > 0.9  # measured 0.965
    assert study.loc[clean, "qei"].min() > study.loc[worst > 0.5, "qei"].max() - 0.05
    assert study["rating"].nunique() == 4
    assert spearmanr(study["qei"], study["rating"]).statistic >= 0.5  # measured 0.82; raters are noisy


@pytest.mark.slow  # shares the 20-scan study
def test_qei_baseline_is_pearson_of_qei_and_target_over_the_fold_test_rows(study, monkeypatch):
    fold = Fold("fold-1", pd.DataFrame({"subject": study["subject"], "split": ["test", "train"] * (N_SUBJECTS // 2)}))
    tested = fold_test_rows(study, fold)
    assert list(tested["subject"]) == list(study["subject"][::2])
    baseline = QEIBaseline()
    baseline.score(study)
    expected = np.corrcoef(tested["qei"], tested["rating"])[0, 1]

    def no_second_time(*args, **kwargs):
        raise AssertionError("QEI computed again for a scan already scored")

    monkeypatch.setattr("ichor.quality.compute_qei", no_second_time)
    assert baseline.pearson(tested, "rating") == pytest.approx(expected)  # from the cache
    assert np.isnan(baseline.pearson(tested.iloc[:2], "rating"))  # undefined on 2 scans, reported as NaN
    with pytest.raises(ValueError, match=r"numeric target; .*manifest.csv row 1 has diagnosis="):
        baseline.pearson(tested, "diagnosis")


def test_qei_baseline_names_the_row_without_tissue_maps(tmp_path):
    manifests = make_dataset(tmp_path / "data", studies=1, subjects=3)  # no gm/wm/csf columns
    with pytest.raises(
        ValueError,
        match=r"manifest.csv row 1 \(sub-\w+_cbf.nii.gz\): empty gm, wm, csf \(the QEI baseline needs gm, wm, csf tissue maps",
    ):
        QEIBaseline().score(read_manifest(manifests[0]))


def test_cv_stops_before_training_when_the_qei_baseline_cannot_be_computed(tmp_path, monkeypatch, capsys, tiny_encoder):
    monkeypatch.chdir(tmp_path)
    manifests = make_dataset(tmp_path / "data", studies=2, subjects=12)  # ratings, but no tissue maps
    out = tmp_path / "cv"
    status = tiny_cv(
        "probe_quality.yaml", out, tiny_encoder, manifests, tmp_path / "cache", "--folds", "2", "--qei-baseline"
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "study-01/manifest.csv row 1 (" in err and "the QEI baseline needs gm, wm, csf tissue maps" in err
    assert not out.exists()  # no fold was fitted


@pytest.mark.parametrize(
    ("name", "mode"), [("probe_quality.yaml", "linear_probe"), ("finetune_quality.yaml", "finetune")]
)
def test_quality_configs_regress_the_rating_from_the_map(name, mode):
    config = yaml.safe_load((CONFIGS / name).read_text())
    model = config["model"]["init_args"]
    assert (model["head"], model["mode"]) == ("regression", mode) and "target" not in model  # the label is the data's
    assert config["data"]["init_args"]["target"] == "rating"
    shared = yaml.safe_load(composition(name)[0].read_text())  # the demo's data: the fragment it composes with
    manifests = expand_manifests(REPO / entry for entry in shared["data"]["init_args"]["manifests"])
    assert manifests
    for manifest in manifests:  # the shipped demo manifests carry the rating
        assert "rating" in pd.read_csv(manifest, nrows=0).columns


@pytest.mark.slow
def test_cv_reports_the_qei_baseline_next_to_the_model(study, tmp_path, monkeypatch, tiny_encoder):
    monkeypatch.chdir(tmp_path)
    manifests = sorted({str(m) for m in study["manifest"]})
    out = tmp_path / "cv"
    status = tiny_cv(
        "probe_quality.yaml", out, tiny_encoder, manifests, tmp_path / "cache", "--folds", "2", "--qei-baseline"
    )
    assert status == 0
    folds = pd.read_csv(out / "cv_folds.csv")
    assert {"test/pearson", QEI_METRIC} <= set(folds.columns)
    for _, fold in folds.iterrows():
        splits = pd.read_csv(out / fold["fold"] / cv.SPLIT_FILE)
        tested = study[study["subject"].isin(splits.loc[splits["split"] == "test", "subject"])]
        assert fold[QEI_METRIC] == pytest.approx(np.corrcoef(tested["qei"], tested["rating"])[0, 1], abs=1e-6)
    summary = pd.read_csv(out / "cv_summary.csv").set_index("metric")
    assert {"pearson", "qei_pearson"} <= set(summary.index)
    assert "| qei_pearson |" in (out / "cv_summary.md").read_text()
