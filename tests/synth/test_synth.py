"""The synthetic dataset generator: realism, labels, geometry, determinism and its CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ichor.cli import main
from ichor.data.manifest import read_manifest
from ichor.data.scans import load_cbf, load_tissue_map
from ichor.quality import compute_qei
from ichor.synth import MANIFEST_COLUMNS, SynthOptions, generate_dataset, manifest_text, plan_dataset, render_scan
from ichor.synth import artefacts as art
from ichor.synth.anatomy import (
    BASE_VOXEL_MM,
    FOLDING_MM,
    base_anatomy,
    blurred,
    edge_distance_mm,
    individual_tissue,
    region_map,
)
from ichor.synth.artefacts import Artefacts
from ichor.synth.fields import smooth_field
from ichor.synth.physiology import GM_RANGE, RATIO_RANGE, WM_RANGE, tissue_cbf
from ichor.synth.protocols import MNI_SPACE
from ichor.synth.rating import RATING_LEVELS, SNR_GOOD, latent_quality, rating

SEVERITIES = ("att_severity", "labelfail_severity", "motion_severity", "dropout_severity")
N_STUDIES, N_SUBJECTS = 4, 6


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("synth")
    out, manifest_dir = root / "data", root / "manifests"
    manifests = generate_dataset(
        out, N_STUDIES, N_SUBJECTS, seed=0, workers=2, manifest_dir=manifest_dir, progress=False
    )
    return out, manifest_dir, manifests


@pytest.fixture(scope="session")
def table(dataset) -> pd.DataFrame:
    return pd.concat([read_manifest(m) for m in dataset[2]], ignore_index=True)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # shares the session dataset (about 10 s to generate)
def test_layout_manifest_columns_and_readable_maps(dataset, table):
    out, _, manifests = dataset
    assert manifests == [out / f"study-{i:02d}" / "manifest.csv" for i in range(1, N_STUDIES + 1)]
    assert (out / "dataset_description.json").is_file()
    for manifest in manifests:
        assert tuple(pd.read_csv(manifest, nrows=0).columns) == MANIFEST_COLUMNS
    assert len(table) == N_STUDIES * N_SUBJECTS and table["subject"].is_unique
    for row in table.itertuples():
        cbf = load_cbf(row.path)  # ichor's own loader accepts every map (units, finiteness, non-empty)
        tissue = sum(load_tissue_map(getattr(row, t), reference=cbf).get_fdata() for t in ("gm", "wm", "csf"))
        data = cbf.get_fdata()
        assert cbf.get_data_dtype() == np.float32
        assert np.all(data[tissue < 0.3] == 0), f"{row.path}: CBF outside the brain"
        assert np.mean(data[tissue > 0.7] != 0) > 0.99, f"{row.path}: zeros inside the brain"


@pytest.mark.slow  # shares the session dataset (about 10 s to generate)
def test_clean_scans_have_realistic_gm_and_wm_cbf(table):
    truths = [
        json.loads(Path(p.replace("_cbf.nii.gz", "_cbf.json")).read_text())["SyntheticGroundTruth"]
        for p in table["path"]
    ]
    gm_true = np.array([t["gm_cbf"] for t in truths])
    wm_true = np.array([t["wm_cbf"] for t in truths])
    assert np.all((gm_true >= GM_RANGE[0]) & (gm_true <= GM_RANGE[1]))
    assert np.all((wm_true >= WM_RANGE[0]) & (wm_true <= WM_RANGE[1]))
    assert np.all((gm_true / wm_true >= RATIO_RANGE[0] - 0.01) & (gm_true / wm_true <= RATIO_RANGE[1] + 0.01))

    clean = table[(table[list(SEVERITIES)] == 0).all(axis=1)]
    assert len(clean) >= N_STUDIES, "the default artefact rate should leave most scans clean"
    for row in clean.itertuples():
        cbf = nib.load(row.path).get_fdata()
        gm_mask = nib.load(row.gm).get_fdata() > 0.7
        wm_mask = nib.load(row.wm).get_fdata() > 0.7
        gm, wm = cbf[gm_mask].mean(), cbf[wm_mask].mean()
        # Measured with the scan's own masks, partial volume and the readout's blur pull GM down
        # and WM up (as in real maps), so the measured ratio sits below the true 2.2-3.5.
        assert 30 <= gm <= 80 and 12 <= wm <= 40, (row.path, gm, wm)
        assert 1.4 <= gm / wm <= 3.5, (row.path, gm / wm)


@pytest.mark.slow  # shares the session dataset (about 10 s to generate)
def test_studies_differ_in_grid_orientation_vendor_readout_and_space(table):
    per_study = table.groupby("study").first()
    images = {s: nib.load(p) for s, p in per_study["path"].items()}
    voxel_sizes = {tuple(np.round(img.header.get_zooms()[:3], 2)) for img in images.values()}
    axcodes = {"".join(nib.aff2axcodes(img.affine)) for img in images.values()}
    assert len(voxel_sizes) >= 3
    assert {"RAS", "LPS"} <= axcodes
    assert per_study["vendor"].nunique() == 3 and per_study["readout"].nunique() == 3
    assert set(per_study["space"]) == {"native", MNI_SPACE}
    mni = images[per_study.index[per_study["space"] == MNI_SPACE][0]]
    assert mni.shape == (121, 145, 121) and np.allclose(mni.header.get_zooms(), 1.5)
    # subjects are not perfectly aligned: the same study's maps differ in where the brain is
    study = table[table["study"] == "study-01"]
    centres = [np.argwhere(nib.load(p).get_fdata() != 0).mean(axis=0) for p in study["path"]]
    assert np.ptp(np.array(centres), axis=0).max() > 0.3


@pytest.mark.slow  # shares the session dataset (about 10 s to generate)
def test_labels_and_severities_agree_between_manifest_and_sidecar(table):
    assert set(table["diagnosis"]) == {"CN", "AD", "FTD", "SVD"}
    severities = table[list(SEVERITIES)].to_numpy()
    assert np.all((severities >= 0) & (severities <= 1))
    assert (severities > 0).any(axis=0).sum() >= 3, "several artefact kinds should occur in 24 scans"
    for row in table.itertuples():
        sidecar = json.loads(Path(row.path.replace("_cbf.nii.gz", "_cbf.json")).read_text())
        truth = sidecar["SyntheticGroundTruth"]
        assert sidecar["Units"] == "mL/100 g/min"
        assert sidecar["ArterialSpinLabelingType"] == row.asl_type
        assert sidecar["PostLabelingDelay"] == pytest.approx(row.pld)
        assert sidecar["Manufacturer"] == row.vendor and sidecar["MagneticFieldStrength"] == row.field_strength
        assert sidecar["MRAcquisitionType"] in ("2D", "3D") and sidecar["Readout"] == row.readout
        assert truth["diagnosis"] == row.diagnosis and truth["age"] == pytest.approx(row.age)
        for name in SEVERITIES:
            assert truth["severity"][name.removesuffix("_severity")] == pytest.approx(getattr(row, name))
        assert truth["rating"] == pytest.approx(row.rating, abs=1e-4)
        assert RATING_LEVELS.index(truth["rating_level"]) == round(3 * row.rating)
    levels = 3 * table["rating"].to_numpy()
    assert np.allclose(levels, np.round(levels), atol=1e-3) and set(np.round(levels)) <= {0, 1, 2, 3}


def test_class_mix_is_exact_per_study():
    for study in plan_dataset(3, 10, seed=5):
        counts = pd.Series([s.subject.diagnosis for s in study.scans]).value_counts().to_dict()
        assert counts == {"CN": 4, "AD": 2, "FTD": 2, "SVD": 2}


def test_each_disease_lowers_cbf_in_its_own_pattern():
    anatomy = base_anatomy()
    control = plan_dataset(2, 10, seed=1)[1].scans[0].subject
    control = dataclasses.replace(control, diagnosis="CN", stage=0.0, asymmetry=0.0)
    field = np.zeros(anatomy.shape, np.float32)
    healthy = tissue_cbf(control, anatomy.gm, anatomy.wm, field)

    def relative_change(diagnosis: str, region: np.ndarray) -> float:
        patient = dataclasses.replace(control, diagnosis=diagnosis, stage=1.0)
        sick = tissue_cbf(patient, anatomy.gm, anatomy.wm, field)
        return float(sick[region].mean() / healthy[region].mean() - 1)

    precuneus = (region_map("precuneus") > 0.5) & (anatomy.gm > 0.5)
    frontal = (region_map("medial_prefrontal") > 0.5) & (anatomy.gm > 0.5)
    deep_wm = (region_map("watershed_deep") > 0.5) & (anatomy.wm > 0.7)
    assert -0.30 < relative_change("AD", precuneus) < -0.15
    assert relative_change("AD", frontal) > -0.08
    assert -0.30 < relative_change("FTD", frontal) < -0.15
    assert relative_change("FTD", precuneus) > -0.08
    assert relative_change("SVD", deep_wm) < -0.25


def test_disease_is_measurable_in_a_rendered_map():
    """Same subject, same noise, only the diagnosis differs: the precuneus loses 10-25 %."""
    plan = next(s for s in plan_dataset(2, 5, seed=2)[1].scans)  # study-02 delivers MNI-space maps
    plan = dataclasses.replace(plan, artefacts=Artefacts())
    cn = dataclasses.replace(plan, subject=dataclasses.replace(plan.subject, diagnosis="CN", stage=0.0))
    ad = dataclasses.replace(plan, subject=dataclasses.replace(plan.subject, diagnosis="AD", stage=0.8))
    scans = [render_scan(p) for p in (cn, ad)]
    world = np.indices(scans[0].cbf.shape).reshape(3, -1).T @ scans[0].affine[:3, :3].T + scans[0].affine[:3, 3]
    offset = np.column_stack([np.abs(world[:, 0]) - 7, world[:, 1] + 62, world[:, 2] - 42])
    precuneus = np.linalg.norm(offset, axis=1) < 12
    precuneus = precuneus.reshape(scans[0].cbf.shape) & (scans[0].gm > 0.5)
    change = scans[1].cbf[precuneus].mean() / scans[0].cbf[precuneus].mean() - 1
    assert -0.25 < change < -0.08


@pytest.mark.parametrize("artefact", ["att", "labelfail", "motion", "dropout"])
def test_recorded_artefact_changes_the_map(artefact):
    plan = plan_dataset(3, 3, seed=4)[2].scans[0]  # study-03: native 2D EPI
    clean = dataclasses.replace(plan, artefacts=Artefacts())
    broken = dataclasses.replace(plan, artefacts=Artefacts(**{artefact: 0.8}))
    a, b = render_scan(clean), render_scan(broken)
    brain = a.cbf != 0
    gm = a.gm > 0.6
    if artefact == "att":  # bright intravascular signal
        assert np.percentile(b.cbf[brain], 99.5) > 1.3 * np.percentile(a.cbf[brain], 99.5)
    elif artefact == "labelfail":  # globally low CBF, more negative voxels
        assert b.cbf[gm].mean() < 0.5 * a.cbf[gm].mean()
        assert np.mean(b.cbf[brain] < 0) > 2 * np.mean(a.cbf[brain] < 0)
    elif artefact == "motion":  # noisier map, worst at the brain edge
        assert np.std(b.cbf[brain] - a.cbf[brain]) > 5
    else:  # signal loss low in the frontal lobe
        world = np.indices(a.cbf.shape).reshape(3, -1).T @ a.affine[:3, :3].T + a.affine[:3, 3]
        assert a.cbf.mean() > b.cbf.mean()
        low_frontal = (
            brain
            & (world[:, 1] > np.median(world[:, 1])).reshape(a.cbf.shape)
            & (world[:, 2] < np.percentile(world[:, 2], 35)).reshape(a.cbf.shape)
        )
        assert b.cbf[low_frontal].mean() < 0.9 * a.cbf[low_frontal].mean()


def test_individual_anatomy_has_crisp_tissue_and_its_own_folding():
    """The template's smeared cortex becomes a person's: crisp grey/white borders, sulcal CSF, own pattern."""
    anatomy = base_anatomy()
    rng = np.random.default_rng(0)
    folds = [smooth_field(rng, anatomy.shape, (BASE_VOXEL_MM,) * 3, FOLDING_MM) for _ in range(2)]
    (gm, wm, csf), (other_gm, _, _) = (individual_tissue(f) for f in folds)
    np.testing.assert_allclose(gm + wm + csf, anatomy.gm + anatomy.wm + anatomy.csf, atol=1e-5)
    parenchyma = (anatomy.gm + anatomy.wm) > 0.5

    def mixed(grey, white):  # parenchyma voxels that are neither clearly grey nor clearly white
        share = grey[parenchyma] / (grey + white)[parenchyma]
        return np.mean((share > 0.3) & (share < 0.7))

    assert mixed(gm, wm) < 0.6 * mixed(anatomy.gm, anatomy.wm)
    cortex = ndimage.binary_dilation(anatomy.gm > 0.4, iterations=1) & (edge_distance_mm() > -12)
    assert np.mean(csf[cortex] > 0.5) > 1.25 * np.mean(anatomy.csf[cortex] > 0.5)  # sulci between gyri
    assert np.corrcoef(gm[cortex], other_gm[cortex])[0, 1] < 0.9  # two people, two foldings


def test_transit_signal_is_far_above_tissue_along_vessels_and_dropout_a_sharp_void():
    """Raters' descriptions (domain.md): bright serpiginous intravascular signal; signal voids with sharp borders."""
    vessels = blurred("vessel", (4.0, 4.0, 6.0))
    _, vascular = art.transit_effects(0.8, vessels, np.zeros_like(vessels))
    assert vascular.max() > 2 * 60  # well above grey-matter CBF, at the field's mean
    beading = smooth_field(np.random.default_rng(0), vessels.shape, (BASE_VOXEL_MM,) * 3, 10.0)
    _, vascular = art.transit_effects(0.8, vessels, beading)
    assert np.mean(vascular[vessels > 0.3] > 0) > 0.8  # the vessel tree lights up along its length, not in blobs
    loss = art.dropout_multiplier(0.8, "2D EPI", 0.0)
    void, partial = loss < 0.3, (loss > 0.3) & (loss < 0.95)
    assert void.sum() * BASE_VOXEL_MM**3 > 5_000  # at least 5 mL gone
    border_mm = ndimage.distance_transform_edt(~void)[partial].max() * BASE_VOXEL_MM
    assert border_mm <= 8  # from gone to intact within a few millimetres


def scan_qei(scan) -> float:
    """QEI of a rendered scan with its own tissue maps (what `ichor qei` computes from the files)."""
    return compute_qei(*(nib.Nifti1Image(getattr(scan, m), scan.affine) for m in ("cbf", "gm", "wm", "csf")))


def test_labelling_failure_lowers_snr_and_turns_territories_negative():
    """Real failed labelling is low CBF *and* low SNR with negative voxels, so QEI sees it (domain.md)."""
    plan = plan_dataset(1, 1, seed=4)[0].scans[0]  # study-01: native 3D GRASE
    scans = {s: render_scan(dataclasses.replace(plan, artefacts=Artefacts(labelfail=s))) for s in (0.0, 0.3, 0.9)}
    clean, brain = scans[0.0], scans[0.0].cbf != 0
    gm = clean.gm > 0.7
    relative_noise = {
        s: np.std(scan.cbf[brain] - clean.cbf[brain]) / scan.cbf[gm].mean() for s, scan in scans.items() if s
    }
    assert relative_noise[0.9] > 5 * relative_noise[0.3]
    quality = {s: scan_qei(scan) for s, scan in scans.items()}
    assert quality[0.0].qei > quality[0.3].qei > quality[0.9].qei
    assert (
        quality[0.3].neg_gm < 0.005 and quality[0.9].neg_gm > 0.05
    )  # negative after 5 mm smoothing: whole territories
    assert quality[0.9].qei < 0.7


def test_ratings_follow_artefacts_and_snr_on_four_levels():
    good_snr, clean = SNR_GOOD, Artefacts()
    assert rating(latent_quality(clean, good_snr, 0.0)) == 1.0
    assert rating(latent_quality(clean, good_snr / 3, 0.0)) < 1.0  # a noisy protocol costs a level
    levels = [rating(latent_quality(Artefacts(labelfail=s), good_snr, 0.0)) for s in (0.0, 0.3, 0.55, 0.8)]
    assert levels == [1.0, 2 / 3, 1 / 3, 0.0]  # unacceptable, poor, average, excellent, as severity rises
    assert rating(latent_quality(Artefacts(dropout=0.3), good_snr, 0.0)) == 1.0  # mild dropout: still excellent
    # the shipped demo plan has every level, most scans average or excellent; rater noise moves some
    plans = [scan for study in plan_dataset(4, 50, seed=0) for scan in study.scans]
    counts = pd.Series([p.rating for p in plans]).value_counts()
    assert sorted(counts.index) == [0, 1 / 3, 2 / 3, 1] and counts[2 / 3] + counts[1] > 0.6 * len(plans)
    exact = [scan for study in plan_dataset(4, 50, seed=0, options=SynthOptions(rater_noise=0)) for scan in study.scans]
    assert all(rating(round(latent_quality(p.artefacts, p.protocol.snr, 0.0), 3)) == p.rating for p in exact)
    assert sum(a.rating != b.rating for a, b in zip(plans, exact)) > 10
    assert [p.artefacts for p in plans] == [p.artefacts for p in exact]  # the rater draw comes last


def test_same_seed_same_bytes_whatever_the_workers_and_other_seed_differs(tmp_path):
    hashes = []
    for name, seed, workers in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1)):
        generate_dataset(tmp_path / name, 2, 2, seed=seed, workers=workers, progress=False)
        hashes.append(tree_hashes(tmp_path / name))
    assert hashes[0] == hashes[1]
    assert hashes[0].keys() == hashes[2].keys()
    assert all(hashes[0][k] != hashes[2][k] for k in hashes[0] if k.endswith(".nii.gz"))


@pytest.mark.slow  # shares the session dataset (about 10 s to generate)
def test_manifests_only_writes_the_same_manifests_without_volumes(dataset, tmp_path):
    out, manifest_dir, _ = dataset
    generate_dataset(
        tmp_path / "data", N_STUDIES, N_SUBJECTS, seed=0, manifest_dir=tmp_path / "manifests", manifests_only=True
    )
    quick = tree_hashes(tmp_path)
    assert not any(k.endswith(".nii.gz") for k in quick)
    full = {
        **{f"data/{k}": v for k, v in tree_hashes(out).items()},
        **{f"manifests/{k}": v for k, v in tree_hashes(manifest_dir).items()},
    }
    assert quick == {k: v for k, v in full.items() if k in quick} and len(quick) == N_STUDIES * 2 + 1


@pytest.mark.slow  # shares the session dataset (about 10 s to generate)
def test_manifest_dir_paths_point_at_the_data(dataset):
    out, manifest_dir, manifests = dataset
    for manifest in manifests:
        shipped = read_manifest(manifest_dir / f"{manifest.parent.name}.csv")
        local = read_manifest(manifest)
        assert list(shipped["path"]) == list(local["path"]) and all(Path(p).is_file() for p in shipped["gm"])


def test_study_draws_do_not_depend_on_the_number_of_studies():
    assert plan_dataset(1, 5, seed=9)[0] == plan_dataset(3, 5, seed=9)[0]


def test_shipped_demo_manifests_match_the_generator():
    """data_manifests/demo/ (if the repo ships it) is what `make demo-data` would write."""
    repo = Path(__file__).resolve().parents[2]
    shipped = sorted((repo / "data_manifests" / "demo").glob("study-*.csv"))
    if not shipped:
        pytest.skip("no shipped demo manifests")
    studies = plan_dataset(len(shipped), 50, seed=0)
    for path, study in zip(shipped, studies):
        prefix = os.path.relpath(repo / "data" / "demo" / study.study, path.parent).replace(os.sep, "/") + "/"
        assert path.read_text() == manifest_text(study, prefix), f"{path} differs from the generator's output"


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="unknown diagnosis"):
        SynthOptions(class_mix=(("PD", 1.0),))
    with pytest.raises(ValueError, match="at least 1 study"):
        plan_dataset(0, 3)
    with pytest.raises(ValueError, match="rater_noise"):
        SynthOptions(rater_noise=-0.1)


def test_cli_help_documents_every_knob(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for knob in (
        "--out",
        "--studies",
        "--subjects-per-study",
        "--seed",
        "--workers",
        "--manifest-dir",
        "--manifests-only",
        "--class-mix",
        "--artefact-rate",
        "--effect-scale",
        "--snr-scale",
        "--rater-noise",
        "--overwrite",
    ):
        assert knob in text
    assert text.count("(default:") >= 12
    assert "unacceptable, poor, average or" in text and "rating" in text  # the rating model is documented


def test_cli_refuses_non_empty_out_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = [
        "synth",
        "--out",
        str(out),
        "--studies",
        "3",
        "--subjects-per-study",
        "2",
        "--manifests-only",
        "--no-progress",
    ]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err and sorted(os.listdir(out)) == ["notes.txt"]
    assert main([*args, "--overwrite"]) == 0
    assert (out / "study-03" / "manifest.csv").is_file()
    # a smaller dataset over it removes the old study folders, and nothing else
    assert main([*args[:4], "2", *args[5:], "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == ["dataset_description.json", "notes.txt", "study-01", "study-02"]
    assert (out / "notes.txt").read_text() == "mine"
