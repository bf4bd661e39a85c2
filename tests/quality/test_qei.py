"""QEI (Dolui et al. 2024, as in ASLPrep): each term against a closed-form answer, then the command."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ichor.cli import main
from ichor.data.manifest import read_manifest
from ichor.quality.qei import (
    QEIError,
    combine_qei,
    compute_qei,
    negative_gm_fraction,
    pooled_variance_index,
    smooth_cbf,
    structural_similarity,
    tissue_masks,
)

VOXEL_MM = 2.0
SHAPE = (24, 24, 24)


def grid_affine(voxel_mm: float = VOXEL_MM) -> np.ndarray:
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -voxel_mm * (np.array(SHAPE) - 1) / 2  # centre of the grid at the origin
    return affine


def phantom_tissues() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A spherical 'brain' of radius 21 mm: CSF core (r < 6), WM (6-13), GM shell (13-21), soft edges."""
    axis = (np.arange(SHAPE[0]) - (SHAPE[0] - 1) / 2) * VOXEL_MM
    radius = np.sqrt(sum(np.square(a) for a in np.meshgrid(axis, axis, axis, indexing="ij")))

    def inside(r_mm: float) -> np.ndarray:
        return 1 / (1 + np.exp((radius - r_mm) / 0.8))

    brain, core, deep = inside(21), inside(6), inside(13)
    p_csf, p_wm, p_gm = core, deep - core, brain - deep
    return p_gm, p_wm, p_csf


def clean_cbf(p_gm: np.ndarray, p_wm: np.ndarray) -> np.ndarray:
    """A healthy map: GM 60, WM 20 mL/100g/min, CSF 0, zero outside the brain (like real derivatives)."""
    return (60 * p_gm + 20 * p_wm) * (p_gm + p_wm > 0.05)


def image(data: np.ndarray, affine: np.ndarray | None = None) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), grid_affine() if affine is None else affine)


# --- the terms ------------------------------------------------------------------------------


def test_smoothing_is_5mm_fwhm_in_world_units():
    impulse = np.zeros(SHAPE)
    impulse[12, 12, 12] = 1.0
    smoothed = smooth_cbf(image(impulse))
    profile = smoothed.sum(axis=(1, 2))
    x_mm = (np.arange(SHAPE[0]) - 12) * VOXEL_MM
    sigma_mm = math.sqrt(np.sum(profile * x_mm**2) / profile.sum())
    assert sigma_mm == pytest.approx(5 / math.sqrt(8 * math.log(2)), rel=0.02)  # FWHM = 2.355 sigma


def test_pseudo_cbf_itself_has_structural_similarity_one():
    p_gm, p_wm, _ = phantom_tissues()
    assert structural_similarity(70 * (2.5 * p_gm + p_wm), p_gm, p_wm) == pytest.approx(1.0, abs=1e-12)


def test_anticorrelated_map_is_clipped_to_zero_similarity():
    p_gm, p_wm, p_csf = phantom_tissues()
    inverted = (100 - 30 * (2.5 * p_gm + p_wm)) * (p_gm + p_wm + p_csf > 0.5)
    assert structural_similarity(inverted, p_gm, p_wm) == 0.0


def test_structural_similarity_ignores_zero_voxels():
    p_gm, p_wm, _ = phantom_tissues()
    cbf = 70 * (2.5 * p_gm + p_wm)
    cbf[:, :, :4] = 0  # a cropped slab: excluded from the correlation, not compared as CBF 0
    assert structural_similarity(cbf, p_gm, p_wm) == pytest.approx(1.0, abs=1e-12)


def test_negative_gm_fraction_counts_negative_gm_voxels_only():
    gm_mask = np.zeros((10, 10), dtype=bool)
    gm_mask[:4] = True  # 40 GM voxels
    cbf = np.full((10, 10), 50.0)
    cbf[0, :6] = -5.0  # 6 negative GM voxels
    cbf[8] = -20.0  # negative but outside GM: does not count
    assert negative_gm_fraction(cbf, gm_mask) == pytest.approx(6 / 40)


def test_pooled_variance_index_matches_hand_computation():
    values = np.array([50, 60, 70, 20, 22, 5, 5, 5, 5], dtype=float)
    gm, wm, csf = (np.isin(np.arange(9), idx) for idx in ([0, 1, 2], [3, 4], [5, 6, 7, 8]))
    # population variances: GM 200/3, WM 1, CSF 0; pooled = (2*200/3 + 1*1 + 3*0) / (9 - 3); mean GM 60
    expected = (2 * 200 / 3 + 1) / 6 / 60
    assert pooled_variance_index(values, gm, wm, csf) == pytest.approx(expected)
    assert pooled_variance_index(-values, gm, wm, csf) == pytest.approx(expected)  # |mean GM|


@pytest.mark.parametrize(
    ("rho", "di", "neg", "expected"),
    [
        (1.0, 0.0, 0.0, (1 - math.exp(-3.0126)) ** (1 / 3)),
        (0.0, 0.0, 0.0, 0.0),
        (1.0, 1.0, 0.0, ((1 - math.exp(-3.0126)) * math.exp(-0.054)) ** (1 / 3)),
        (1.0, 0.0, 1.0, ((1 - math.exp(-3.0126)) * math.exp(-2.8478)) ** (1 / 3)),
        (
            0.5,
            4.0,
            0.25,
            ((1 - math.exp(-3.0126 * 0.5**2.4419)) * math.exp(-(0.054 * 4**0.9272 + 2.8478 * 0.25**0.5196))) ** (1 / 3),
        ),
    ],
)
def test_combination_formula_at_known_inputs(rho, di, neg, expected):
    assert combine_qei(rho, di, neg) == pytest.approx(expected, rel=1e-12)


def test_empty_tissue_mask_names_tissue_and_threshold():
    p_gm, p_wm, p_csf = phantom_tissues()
    with pytest.raises(QEIError, match=r"empty CSF mask.*> 0\.8"):
        tissue_masks(p_gm, p_wm, p_csf * 0.75, thresh=0.8)


# --- the whole index -------------------------------------------------------------------------


def test_clean_map_scores_high_and_noise_or_negative_voxels_lower_it():
    p_gm, p_wm, p_csf = phantom_tissues()
    tissues = [image(p) for p in (p_gm, p_wm, p_csf)]
    brain = p_gm + p_wm + p_csf > 0.05
    clean = clean_cbf(p_gm, p_wm)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SHAPE)
    by_noise = [compute_qei(image((clean + sd * noise) * brain), *tissues).qei for sd in (0, 30, 90, 200)]
    assert by_noise[0] > 0.8
    assert all(a > b for a, b in zip(by_noise, by_noise[1:])), by_noise

    gm_voxels = np.argwhere(p_gm > 0.7)
    by_negative = []
    for fraction in (0.0, 0.1, 0.3, 0.6):
        cbf = clean.copy()
        picked = gm_voxels[rng.permutation(len(gm_voxels))[: int(fraction * len(gm_voxels))]]
        cbf[tuple(picked.T)] = -60
        result = compute_qei(image(cbf), *tissues)
        by_negative.append((result.qei, result.neg_gm))
    assert all(a[0] > b[0] and a[1] <= b[1] for a, b in zip(by_negative, by_negative[1:])), by_negative


def test_compute_qei_rejects_tissue_map_on_another_grid():
    p_gm, p_wm, p_csf = phantom_tissues()
    shifted = grid_affine()
    shifted[0, 3] += VOXEL_MM
    with pytest.raises(QEIError, match="WM map affine differs"):
        compute_qei(image(clean_cbf(p_gm, p_wm)), image(p_gm), image(p_wm, shifted), image(p_csf))


# --- the command -----------------------------------------------------------------------------


def write_scan(folder: Path, label: str, cbf: np.ndarray, tissues: tuple[np.ndarray, ...], tissue_affine=None) -> dict:
    """Save a CBF map and its tissue maps under folder; returns manifest cells relative to folder."""
    row = {"subject": label, "study": "phantom", "path": f"{label}_cbf.nii.gz"}
    nib.save(image(cbf), folder / row["path"])
    for name, data in zip(("gm", "wm", "csf"), tissues):
        row[name] = f"{label}_{name}.nii.gz"
        nib.save(image(data, tissue_affine), folder / row[name])
    return row


def test_cli_scores_manifest_and_writes_annotated_copy_without_touching_inputs(tmp_path, capsys):
    tissues = phantom_tissues()
    clean = clean_cbf(tissues[0], tissues[1])
    noisy = (clean + 80 * np.random.default_rng(1).standard_normal(SHAPE)) * (sum(tissues) > 0.05)
    data = tmp_path / "data"
    data.mkdir()
    rows = [write_scan(data, "s01", clean, tissues), write_scan(data, "s02", noisy, tissues)]
    manifest = data / "manifest.csv"
    pd.DataFrame(rows).assign(age=[30, 70]).to_csv(manifest, index=False)
    before = manifest.read_bytes()

    out, annotated = tmp_path / "qei.csv", tmp_path / "elsewhere" / "manifest_qei.csv"
    status = main(
        [
            "qei",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--annotated-manifest",
            str(annotated),
            "--quiet",
            "--workers",
            "2",
        ]
    )

    assert status == 0, capsys.readouterr().err
    assert manifest.read_bytes() == before
    table = pd.read_csv(out, dtype={"session": str})
    assert list(table.columns) == ["subject", "session", "study", "path", "qei", "rho_ss", "di", "neg_gm"]
    assert list(table["subject"]) == ["s01", "s02"]
    assert table["path"][0] == str(data / "s01_cbf.nii.gz")
    assert table["qei"][0] > table["qei"][1] and table["qei"].between(0, 1).all()

    copy = read_manifest(annotated)  # still a valid manifest from its new folder
    assert list(copy["qei"]) == pytest.approx(list(table["qei"]))
    assert list(copy["path"]) == [str(data / "s01_cbf.nii.gz"), str(data / "s02_cbf.nii.gz")]
    assert list(copy["age"]) == [30, 70]


def test_cli_refuses_to_write_over_an_input_manifest(tmp_path, capsys):
    tissues = phantom_tissues()
    pd.DataFrame([write_scan(tmp_path, "s01", clean_cbf(*tissues[:2]), tissues)]).to_csv(
        tmp_path / "m.csv", index=False
    )
    before = (tmp_path / "m.csv").read_bytes()
    status = main(
        [
            "qei",
            "--manifest",
            str(tmp_path / "m.csv"),
            "--out",
            str(tmp_path / "q.csv"),
            "--annotated-manifest",
            str(tmp_path / "m.csv"),
        ]
    )
    assert status == 2
    assert "it is an input of this command" in capsys.readouterr().err
    assert (tmp_path / "m.csv").read_bytes() == before and not (tmp_path / "q.csv").exists()
    (tmp_path / "q.csv").write_text("earlier\n")  # an existing output needs --overwrite
    assert main(["qei", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "q.csv")]) == 2
    assert "q.csv exists: choose a new file, or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "q.csv").read_text() == "earlier\n"


def test_cli_reports_every_bad_row_by_manifest_row_and_file_and_keeps_good_rows(tmp_path, capsys):
    tissues = phantom_tissues()
    clean = clean_cbf(tissues[0], tissues[1])
    shifted = grid_affine()
    shifted[:3, 3] += 1.0
    rows = [  # four people: one map in two rows is refused (ichor.data.identity)
        write_scan(tmp_path, "s01", clean, tissues),
        write_scan(tmp_path, "s02", clean * 1.01, tissues, tissue_affine=shifted),  # tissue maps off the CBF grid
        write_scan(tmp_path, "s03", clean * 1.02, (tissues[0], tissues[1], tissues[2] * 0.5)),  # no CSF voxel > 0.7
        {**write_scan(tmp_path, "s04", clean * 1.03, tissues), "wm": ""},
    ]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "qei.csv"

    status = main(["qei", "--manifest", str(manifest), "--out", str(out), "--quiet"])

    err = capsys.readouterr().err
    assert status == 1
    assert f"{manifest} row 2 (s02_gm.nii.gz): gm map: affine differs" in err
    assert f"{manifest} row 3 (s03_cbf.nii.gz): empty CSF mask: no voxel has tissue probability > 0.7" in err
    assert f"{manifest} row 4 (s04_cbf.nii.gz): empty wm" in err
    assert list(pd.read_csv(out)["subject"]) == ["s01"]


def test_cli_without_tissue_columns_points_to_mni_priors(tmp_path, capsys):
    tissues = phantom_tissues()
    row = write_scan(tmp_path, "s01", clean_cbf(*tissues[:2]), tissues)
    pd.DataFrame([{k: row[k] for k in ("subject", "study", "path")}]).to_csv(tmp_path / "m.csv", index=False)
    status = main(["qei", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "q.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 1 and "no gm, wm, csf column(s)" in err and "--mni-priors" in err


def test_cli_single_scan_prints_the_index(tmp_path, capsys):
    tissues = phantom_tissues()
    row = write_scan(tmp_path, "s01", clean_cbf(*tissues[:2]), tissues)
    files = [str(tmp_path / row[k]) for k in ("path", "gm", "wm", "csf")]
    status = main(["qei", files[0], "--gm", files[1], "--wm", files[2], "--csf", files[3]])
    printed = capsys.readouterr().out.split()
    expected = compute_qei(*(nib.load(f) for f in files))
    assert status == 0
    assert float(printed[printed.index("qei") + 1]) == pytest.approx(expected.qei, abs=1e-4)


def test_mni_priors_score_a_map_on_a_4mm_mni_grid(tmp_path, capsys):
    from ichor.quality.priors import priors_on_grid

    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    grid = nib.Nifti1Image(np.zeros((46, 55, 46), dtype=np.float32), affine)
    p_gm, p_wm, p_csf = (img.get_fdata() for img in priors_on_grid(grid))
    noise = 10 * np.random.default_rng(2).standard_normal(p_gm.shape)
    cbf = (60 * p_gm + 20 * p_wm + noise) * (p_gm + p_wm + p_csf > 0.1)
    nib.save(nib.Nifti1Image(cbf.astype(np.float32), affine), tmp_path / "cbf_mni.nii.gz")
    out = tmp_path / "q.csv"

    status = main(["qei", str(tmp_path / "cbf_mni.nii.gz"), "--mni-priors", "--out", str(out)])

    err = capsys.readouterr().err
    assert status == 0, err
    assert "warning" not in err  # the grid holds the MNI brain
    row = pd.read_csv(out).iloc[0]
    assert 0 <= row["qei"] <= 1 and row["qei"] > 0.7 and row["rho_ss"] > 0.8


def test_mni_priors_warn_on_a_map_that_is_not_in_mni_space(tmp_path, capsys):
    """A native-space slab (scanner coordinates, 96 mm of the head): the priors would fall on the wrong anatomy."""
    affine = np.diag([4.0, 4.0, 6.0, 1.0])
    affine[:3, 3] = [-116, -76, -44]  # the real ds000240 map's grid: 64 x 57 x 16 voxels
    data = np.zeros((64, 57, 16), np.float32)
    data[12:52, 10:50, 2:14] = 50.0
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    nib.save(image, tmp_path / "native.nii.gz")
    assert main(["qei", str(tmp_path / "native.nii.gz"), "--mni-priors"]) in (0, 1)
    err = capsys.readouterr().err
    assert "warning: native.nii.gz: not marked as MNI space (sform/qform codes 1/" in err
    assert "does not hold the MNI152 brain" in err
