"""`ichor manifest from-bids`: manifests from fake ASLPrep and ExploreASL trees, which then pass `check`."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import brain
from helpers import save as save_map

from ichor.cli import main
from ichor.data.bids import DerivativesError, build_manifest
from ichor.data.manifest import check_manifests, read_manifest

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
MNI = "MNI152NLin2009cAsym"
save = partial(save_map, affine=AFFINE)  # helpers.save, on this module's 2 mm grid


def save_population(study: Path, *names: str) -> None:
    """ExploreASL's ``study/Population``: a CBF map ``qCBF_<name>.nii`` per name, each another brain (seed 0, 1, ...)."""
    for seed, name in enumerate(names):
        save(study / "Population" / f"qCBF_{name}.nii", brain(seed))


def snapshot(root: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def aslprep(tmp_path) -> Path:
    """ds001/derivatives/aslprep: sub-01 with two sessions and variants, sub-02 with one map."""
    root = tmp_path / "ds001" / "derivatives" / "aslprep"
    for session, seed in (("1", 1), ("2", 2)):
        perf = root / "sub-01" / f"ses-{session}" / "perf"
        stem = f"sub-01_ses-{session}"
        save(perf / f"{stem}_space-{MNI}_cbf.nii.gz", brain(seed))
        save(perf / f"{stem}_space-T1w_cbf.nii.gz", brain(seed + 10))
        save(perf / f"{stem}_space-{MNI}_desc-basil_cbf.nii.gz", brain(seed + 20))
        save(perf / f"{stem}_space-{MNI}_desc-timeseries_cbf.nii.gz", np.stack([brain(), brain(1)], -1))
        (perf / f"{stem}_space-{MNI}_cbf.json").write_text(
            json.dumps(
                {
                    "Units": "mL/100 g/min",
                    "ArterialSpinLabelingType": "PCASL",
                    "PostLabelingDelay": 1.8,
                    "MagneticFieldStrength": 3,
                    "Manufacturer": "Siemens",
                    "MRAcquisitionType": "3D",
                    "PulseSequenceType": "3D_GRASE",
                }
            )
        )
        qc = {"FD": [0.1], "qei_cbf": [0.5 + int(session) / 10], "qei_cbf_basil": [0.3 + int(session) / 10]}
        pd.DataFrame(qc).to_csv(perf / f"{stem}_desc-qualitycontrol_cbf.tsv", sep="\t", index=False)
    save(root / "sub-01" / "anat" / f"sub-01_space-{MNI}_label-GM_probseg.nii.gz", (brain() > 0) * np.float32(0.9))
    save(
        root / "sub-01" / "anat" / f"sub-01_space-{MNI}_label-WM_probseg.nii.gz",  # 1 mm: not the CBF grid
        (brain() > 0) * np.float32(0.9),
        affine=np.diag([1.0, 1, 1, 1]),
    )
    save(root / "sub-02" / "perf" / f"sub-02_space-{MNI}_cbf.nii.gz", brain(5))
    (tmp_path / "ds001" / "participants.tsv").write_text(
        "participant_id\tage\tsex\tdiagnosis\nsub-01\t71\tF\tAD\nsub-02\tn/a\tM\tCN\nsub-03\t50\tM\tCN\n"
    )
    return root


def test_aslprep_rows_columns_and_check(aslprep, tmp_path, capsys):
    out = tmp_path / "manifests" / "ds001.csv"
    before = snapshot(tmp_path / "ds001")
    assert main(["manifest", "from-bids", str(aslprep), "--out", str(out)]) == 0
    assert snapshot(tmp_path / "ds001") == before  # derivatives untouched
    assert "used MNI152NLin2009cAsym" in capsys.readouterr().err

    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns[:4]) == ["subject", "session", "path", "study"]
    assert table[["subject", "session"]].values.tolist() == [["01", "1"], ["01", "2"], ["02", ""]]
    assert (
        table["path"].iloc[0] == f"../ds001/derivatives/aslprep/sub-01/ses-1/perf/sub-01_ses-1_space-{MNI}_cbf.nii.gz"
    )
    assert set(table["study"]) == {"ds001"}
    assert table["qei_cbf"].tolist() == ["0.6", "0.7", ""]
    assert table[["asl_type", "pld", "field_strength", "vendor", "readout"]].iloc[0].tolist() == [
        "PCASL",
        "1.8",
        "3.0",
        "Siemens",
        "3D_GRASE",
    ]
    assert table[["age", "sex", "diagnosis"]].values.tolist() == [["71", "F", "AD"], ["71", "F", "AD"], ["", "M", "CN"]]
    assert table["gm"].iloc[0].endswith(f"sub-01_space-{MNI}_label-GM_probseg.nii.gz")
    assert "wm" not in table.columns  # the only WM map is on another grid

    assert check_manifests([str(out)]) == []
    assert main(["manifest", "check", "--quiet", str(out)]) == 0
    assert read_manifest(out)["path"].iloc[2] == str(aslprep / "sub-02" / "perf" / f"sub-02_space-{MNI}_cbf.nii.gz")


def test_desc_picks_another_cbf_variant_and_skips_scans_without_it(aslprep, tmp_path):
    result = build_manifest(aslprep, tmp_path / "basil.csv", desc="basil", study="adni")
    assert [Path(p).name for p in result.rows["path"]] == [
        f"sub-01_ses-1_space-{MNI}_desc-basil_cbf.nii.gz",
        f"sub-01_ses-2_space-{MNI}_desc-basil_cbf.nii.gz",
    ]
    assert set(result.rows["study"]) == {"adni"}
    assert any(note.startswith("skipped sub-02: no desc-basil CBF map") for note in result.notes)
    assert result.rows["qei_cbf"].tolist() == pytest.approx([0.4, 0.5])  # the basil map's QEI, not the mean map's
    scrub = build_manifest(aslprep, tmp_path / "scrub.csv", desc="timeseries")  # no qei_cbf_timeseries column
    assert "qei_cbf" not in scrub.rows.columns or scrub.rows["qei_cbf"].isna().all()


def test_space_option_and_ambiguous_spaces(aslprep, tmp_path):
    result = build_manifest(aslprep, tmp_path / "t1w.csv", space="T1w")
    assert [Path(p).name for p in result.rows["path"]] == [
        "sub-01_ses-1_space-T1w_cbf.nii.gz",
        "sub-01_ses-2_space-T1w_cbf.nii.gz",
    ]
    for path in aslprep.rglob(f"*space-{MNI}_cbf.nii.gz"):
        path.rename(path.with_name(path.name.replace(MNI, "MNI152NLin6Asym")))
    with pytest.raises(
        DerivativesError,
        match=r"^cannot choose one CBF map for 2 scan\(s\) \(sub-01 ses-1, sub-01 ses-2\): their maps differ in "
        r"space \(MNI152NLin6Asym, T1w: --space MNI152NLin6Asym or --space T1w\)",
    ):
        build_manifest(aslprep, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_plain_cbf_in_synth_like_layout_with_tissue_maps(tmp_path):
    """No space entity and probseg maps beside the CBF map (the `ichor synth` layout)."""
    study = tmp_path / "study-01"
    for seed, subject in enumerate(("S01P001", "S01P002")):
        folder = study / f"sub-{subject}"
        save(folder / f"sub-{subject}_cbf.nii.gz", brain(seed))
        for label in ("GM", "WM", "CSF"):
            save(folder / f"sub-{subject}_label-{label}_probseg.nii.gz", (brain() > 0) * np.float32(0.5))
    out = tmp_path / "synth.csv"
    result = build_manifest(study, out)
    assert result.rows["subject"].tolist() == ["S01P001", "S01P002"]
    table = pd.read_csv(out, dtype=str)
    assert table.loc[0, ["path", "gm", "wm", "csf"]].tolist() == [
        f"study-01/sub-S01P001/sub-S01P001_{name}.nii.gz"
        for name in ("cbf", "label-GM_probseg", "label-WM_probseg", "label-CSF_probseg")
    ]
    assert "session" not in table.columns
    assert check_manifests([str(out)]) == []


def test_older_aslprep_desc_mean_is_the_default(tmp_path):
    root = tmp_path / "old"
    save(root / "sub-01" / "perf" / "sub-01_desc-mean_cbf.nii.gz")
    save(root / "sub-01" / "perf" / "sub-01_desc-score_cbf.nii.gz")
    result = build_manifest(root, tmp_path / "m.csv")
    assert Path(result.rows["path"].iloc[0]).name == "sub-01_desc-mean_cbf.nii.gz"


def test_each_run_is_its_own_scan_with_its_qc_and_sessions_tsv(tmp_path):
    root = tmp_path / "runs"
    for seed, (session, run) in enumerate((("1", "1"), ("1", "2"), ("2", "1"))):
        perf = root / "sub-01" / f"ses-{session}" / "perf"
        save(perf / f"sub-01_ses-{session}_run-{run}_cbf.nii.gz", brain(seed))
        qc = pd.DataFrame({"qei_cbf": [0.5 + seed / 10]})
        qc.to_csv(perf / f"sub-01_ses-{session}_run-{run}_desc-qualitycontrol_cbf.tsv", sep="\t", index=False)
    save(root / "sub-02" / "perf" / "sub-02_run-3_cbf.nii.gz", brain(5))
    (root / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t70\nses-2\t72\n")
    out = tmp_path / "m.csv"
    result = build_manifest(root, out)
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table[["subject", "session", "age", "qei_cbf"]].values.tolist() == [
        ["01", "1run1", "70", "0.5"],
        ["01", "1run2", "70", "0.6"],
        ["01", "2run1", "72", "0.7"],
        ["02", "run3", "", ""],
    ]
    assert "run" not in table.columns and len(result.rows) == 4
    assert check_manifests([str(out)]) == []
    one = build_manifest(root, tmp_path / "run1.csv", entities={"run": "1"})  # a chosen run is no longer a label
    assert one.rows[["subject", "session"]].values.tolist() == [["01", "1"], ["01", "2"]]


@pytest.fixture
def variants(tmp_path) -> Path:
    """sub-01 with two acquisitions (acq-pcasl, acq-pasl) at two resolutions; sub-02 with pcasl only, at res-2."""
    root = tmp_path / "variants"
    seed = 0
    for subject, acquisitions, resolutions in (("01", ("pcasl", "pasl"), ("1", "2")), ("02", ("pcasl",), ("2",))):
        for acq in acquisitions:
            for res in resolutions:
                save(
                    root / f"sub-{subject}" / "perf" / f"sub-{subject}_acq-{acq}_space-{MNI}_res-{res}_cbf.nii.gz",
                    brain(seed),
                )
                seed += 1
    return root


def test_several_acquisitions_or_resolutions_name_every_value_and_its_flag(variants, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["manifest", "from-bids", str(variants), "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        "ichor manifest from-bids: cannot choose one CBF map for 1 scan(s) (sub-01): their maps differ in "
        "acq (pasl, pcasl: --entity acq=pasl or --entity acq=pcasl); res (1, 2: --entity res=1 or --entity res=2); "
        "a manifest row is one map (each run is its own row)"
    )
    assert not out.exists()
    assert (
        main(["manifest", "from-bids", str(variants), "--out", str(out), "--entity", "acq=pcasl", "--entity", "res=2"])
        == 0
    )
    table = pd.read_csv(out, dtype=str)
    assert [Path(p).name for p in table["path"]] == [
        f"sub-01_acq-pcasl_space-{MNI}_res-2_cbf.nii.gz",
        f"sub-02_acq-pcasl_space-{MNI}_res-2_cbf.nii.gz",
    ]
    assert check_manifests([str(out)]) == []


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("acq=casl", "--entity acq=casl: no CBF map has acq-casl (found acq: pasl, pcasl)"),
        ("echo=1", "--entity echo=1: no CBF map has a echo- entity (entities found: acq, res, space)"),
        ("acq=", "--entity acq=: no CBF map has acq- (found acq: pasl, pcasl)"),
    ],
)
def test_an_entity_selection_that_keeps_nothing_says_what_there_is(variants, tmp_path, capsys, argument, message):
    assert main(["manifest", "from-bids", str(variants), "--out", str(tmp_path / "m.csv"), "--entity", argument]) == 1
    assert capsys.readouterr().err.strip() == f"ichor manifest from-bids: {message}"


def test_entity_flag_needs_key_and_value(variants, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["manifest", "from-bids", str(variants), "--out", str(tmp_path / "m.csv"), "--entity", "acq-pcasl"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_a_map_without_the_entity_is_selected_by_an_empty_value(tmp_path):
    root = tmp_path / "mixed"
    save(root / "sub-01" / "perf" / "sub-01_cbf.nii.gz", brain(0))
    save(root / "sub-01" / "perf" / "sub-01_acq-long_cbf.nii.gz", brain(1))
    with pytest.raises(DerivativesError, match=r"acq \(\(none\), long: --entity acq= or --entity acq=long\)"):
        build_manifest(root, tmp_path / "m.csv")
    result = build_manifest(root, tmp_path / "m.csv", entities={"acq": ""})
    assert [Path(p).name for p in result.rows["path"]] == ["sub-01_cbf.nii.gz"]


def test_exploreasl_entity_selection_is_refused(tmp_path):
    save_population(tmp_path / "study", "sub-001_ASL_1")
    with pytest.raises(DerivativesError, match="apply to ASLPrep derivatives only"):
        build_manifest(tmp_path / "study", tmp_path / "m.csv", entities={"run": "1"})


def test_exploreasl_population(tmp_path):
    dataset = tmp_path / "cohort"
    population = dataset / "derivatives" / "ExploreASL" / "Population"
    save(population / "qCBF_sub-001_ASL_1.nii")
    save(population / "qCBF_sub-001_ASL_2.nii.gz", brain(1))
    save(population / "qCBF_sub-002_ASL_1.nii", brain(2))
    save(population / "PV_pGM_sub-001.nii", (brain() > 0) * np.float32(1))  # not a CBF map
    (population.parent / "Participants.tsv").write_text(
        "participant_id\tage\tgroup\nsub-001\t64\tMCI\nsub-002\t70\tCN\n"
    )
    before = snapshot(dataset)
    out = tmp_path / "cohort.csv"
    assert main(["manifest", "from-bids", str(dataset), "--out", str(out)]) == 0
    assert snapshot(dataset) == before
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table[["subject", "session", "study", "age", "group"]].values.tolist() == [
        ["001", "1", "cohort", "64", "MCI"],
        ["001", "2", "cohort", "64", "MCI"],
        ["002", "1", "cohort", "70", "CN"],
    ]
    assert table["path"].iloc[1] == "cohort/derivatives/ExploreASL/Population/qCBF_sub-001_ASL_2.nii.gz"
    assert check_manifests([str(out)]) == []


def test_exploreasl_visits_are_sessions_of_one_subject(tmp_path, capsys):
    """qCBF_<subject>_<visit>_ASL_<run>: one person's visits stay one subject (never split apart)."""
    save_population(
        tmp_path / "study",
        "sub-003_1_ASL_1",
        "sub-003_2_ASL_1",
        "sub-003_2_ASL_2",
        "002_S_0413_ASL_1",  # an ADNI ID: its digit groups are not visits
        "HC_01_ASL_1",  # zero-padded: part of the ID, two people
        "HC_02_ASL_1",
    )
    out = tmp_path / "m.csv"
    assert main(["manifest", "from-bids", str(tmp_path / "study"), "--out", str(out)]) == 0
    assert "note: read as visits of one subject (suffix _<digit>): sub-003;" in capsys.readouterr().err
    header = out.read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))  # every column once (session was written twice)
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sorted(table[["subject", "session"]].values.tolist()) == [
        ["002_S_0413", "1"],
        ["003", "1"],
        ["003", "2"],
        ["003", "2run2"],
        ["HC_01", "1"],
        ["HC_02", "1"],
    ]
    assert check_manifests([str(out)]) == []


@pytest.mark.parametrize("listed", ["sub-003_1\nsub-003_2", "003_1\n003_2"], ids=["bids-labels", "bare-labels"])
def test_exploreasl_names_listed_in_participants_are_people_not_visits(tmp_path, capsys, listed):
    """participants.tsv lists sub-003_1 and sub-003_2: two people, whatever their names look like."""
    study = tmp_path / "study"
    save_population(
        study, "sub-003_1_ASL_1", "sub-003_2_ASL_1", "sub-003_2_ASL_2", "sub-004_1_ASL_1", "sub-004_2_ASL_1"
    )
    (study / "participants.tsv").write_text(
        f"participant_id\tage\n{listed.replace(chr(10), chr(9) + '70' + chr(10))}\t71\n"
    )
    out = tmp_path / "m.csv"
    assert main(["manifest", "from-bids", str(study), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (
        "read as visits of one subject (suffix _<digit>): sub-004;" in err and "sub-003" not in err.split("visits")[1]
    )
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert table[["subject", "session", "age"]].values.tolist() == [
        ["003_1", "1", "70"],
        ["003_2", "1", "71"],
        ["003_2", "2", "71"],
        ["004", "1", ""],
        ["004", "2", ""],
    ]
    assert check_manifests([str(out)]) == []


def test_exploreasl_unknown_prefix_is_refused_by_name(tmp_path, capsys):
    """qCBF_untreated_sub-001_ASL_1 is not a subject "untreated_sub-001": refused, the file named."""
    save_population(tmp_path / "study", "sub-001_ASL_1", "untreated_sub-001_ASL_1", "old_HC_02_ASL_1", "HC_02_ASL_1")
    out = tmp_path / "m.csv"
    assert main(["manifest", "from-bids", str(tmp_path / "study"), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "2 qCBF map(s) with an unknown prefix before the subject ID" in error
    assert "qCBF_old_HC_02_ASL_1.nii, qCBF_untreated_sub-001_ASL_1.nii" in error
    assert not out.exists()


def test_no_derivatives_found_says_what_was_searched(tmp_path, capsys):
    (tmp_path / "empty" / "sub-01").mkdir(parents=True)
    assert main(["manifest", "from-bids", str(tmp_path / "empty"), "--out", str(tmp_path / "m.csv")]) == 1
    err = capsys.readouterr().err
    assert "no ASLPrep or ExploreASL CBF maps found" in err
    assert f"{tmp_path / 'empty'}/sub-*/**/sub-*_cbf.nii*" in err
    assert f"{tmp_path / 'empty' / 'derivatives/ExploreASL/Population'}/qCBF_<subject>_ASL_<n>.nii[.gz]" in err
    assert not (tmp_path / "m.csv").exists()


def test_existing_manifest_is_kept_unless_overwrite(aslprep, tmp_path, capsys):
    out = tmp_path / "m.csv"
    out.write_text("keep me\n")
    assert main(["manifest", "from-bids", str(aslprep), "--out", str(out)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert main(["manifest", "from-bids", str(aslprep), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("subject,session,path,study")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.csv")] == []  # no temp file left
    assert os.access(out, os.R_OK)


@pytest.mark.parametrize(
    "target", [f"sub-01/ses-1/perf/sub-01_ses-1_space-{MNI}_cbf.nii.gz", "../participants.tsv", "notes.txt"]
)
def test_out_is_a_csv_never_an_input_even_with_overwrite(aslprep, tmp_path, capsys, target):
    out = aslprep / target
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text("mine\n")
    before = snapshot(tmp_path / "ds001")
    assert main(["manifest", "from-bids", str(aslprep), "--out", str(out), "--overwrite"]) == 1
    assert f"{out}: a manifest is a .csv file" in capsys.readouterr().err
    assert snapshot(tmp_path / "ds001") == before


def test_sessions_tsv_is_merged_per_session(aslprep, tmp_path):
    """Raw BIDS sub-X/sub-X_sessions.tsv: per-visit values (age) win over participants.tsv."""
    (tmp_path / "ds001" / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t70\tF\nsub-02\t61\tM\n")
    sessions = tmp_path / "ds001" / "sub-01" / "sub-01_sessions.tsv"
    sessions.parent.mkdir(parents=True)
    sessions.write_text("session_id\tage\tmoca\nses-1\t70.5\t27\nses-2\t72.1\tn/a\n")
    broken = tmp_path / "ds001" / "sub-02" / "sub-02_sessions.tsv"  # no session_id: noted, the others still merge
    broken.parent.mkdir(parents=True)
    broken.write_text("visit\tage\n1\t99\n")
    result = build_manifest(aslprep, tmp_path / "m.csv")
    table = result.rows.set_index(["subject", "session"])
    assert table.loc[("01", "1"), "age"] == "70.5" and table.loc[("01", "2"), "age"] == "72.1"
    assert table.loc[("02", ""), "age"] == "61" and table.loc[("01", "1"), "sex"] == "F"
    assert table.loc[("01", "1"), "moca"] == "27" and table.loc[("01", "2"), "moca"] == ""  # n/a: unknown
    assert any("merged the sessions.tsv of 1 subject(s)" in note for note in result.notes)
    assert f"{broken}: no session_id column; not merged" in result.notes
