"""Manifests: reading for training, and `ichor manifest check` naming manifest, row and file of every problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import brain, save  # 16^3 CBF sphere; NIfTI on 3 x 3 x 4 mm voxels

from ichor.cli import main
from ichor.data.manifest import ManifestError, Problem, check_manifests, read_manifest, read_manifests


def write_csv(path, header, *rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


@pytest.fixture
def study(tmp_path):
    """A good two-row manifest with relative paths, in tmp_path/m/study-01.csv, and a third map for added rows."""
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz")
    save(tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz", brain(1))
    save(tmp_path / "m" / "scans" / "sub-03_cbf.nii.gz", brain(2))
    return write_csv(
        tmp_path / "m" / "study-01.csv",
        "subject,path,study,session,age,pld,field_strength,diagnosis,severity",
        "01,scans/sub-01_cbf.nii.gz,study-01,1,71,1.8,3,AD,2",
        "02,scans/sub-02_cbf.nii.gz,study-01,1,65.5,1.8,3,CN,",
    )


def only_problem(manifests, **kwargs) -> Problem:
    problems = check_manifests(manifests, **kwargs)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def add_row(manifest, row):
    with open(manifest, "a") as stream:
        stream.write(row + "\n")


# ---- reading -------------------------------------------------------------------------


def test_read_resolves_relative_and_absolute_paths_and_numbers_rows(study, tmp_path):
    absolute = save(tmp_path / "elsewhere" / "sub-03_cbf.nii.gz", brain(3))
    add_row(study, f"03,{absolute},study-01,1,,,,,")
    table = read_manifest(study)
    folder = tmp_path / "m" / "scans"
    assert table["path"].tolist() == [
        str(folder / "sub-01_cbf.nii.gz"),
        str(folder / "sub-02_cbf.nii.gz"),
        str(absolute),
    ]
    assert table["row"].tolist() == [1, 2, 3]
    assert set(table["manifest"]) == {study}


def test_read_keeps_labels_as_text_and_numbers_as_floats(study):
    table = read_manifest(study)
    assert table["subject"].tolist() == ["01", "02"]  # not 1, 2
    assert table["age"].tolist() == [71.0, 65.5]
    assert table["severity"].iloc[0] == 2.0 and np.isnan(table["severity"].iloc[1])
    assert table["diagnosis"].tolist() == ["AD", "CN"]


def test_read_manifests_concatenates_studies(study, tmp_path):
    save(tmp_path / "b" / "x.nii.gz", brain(4))
    other = write_csv(tmp_path / "b" / "study-02.csv", "subject,path,study", "B01,x.nii.gz,study-02")
    table = read_manifests([study, other])
    assert table["study"].tolist() == ["study-01", "study-01", "study-02"]
    assert table["session"].tolist() == ["1", "1", ""]  # session always present, "" when absent


def test_read_lists_every_structural_problem_in_one_error_without_opening_images(study, tmp_path):
    (tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz").write_text("not an image")  # not read
    add_row(study, "01,scans/sub-02_cbf.nii.gz,study-01,1,,,,,")  # duplicate subject/session
    add_row(study, ",scans/sub-03_cbf.nii.gz,study-01,2,old,,,,")  # empty subject, bad age
    with pytest.raises(ManifestError) as caught:
        read_manifest(study)
    message = str(caught.value)
    assert message.startswith("3 problems")
    assert f"{study} row 3 (sub-02_cbf.nii.gz): duplicate of row 1 (subject '01' session '1')" in message
    assert f"{study} row 4 (sub-03_cbf.nii.gz): empty subject" in message
    assert f"{study} row 4 (sub-03_cbf.nii.gz): age 'old' is not a number" in message


def test_spreadsheet_byte_order_mark_and_padding_are_ignored(tmp_path):
    save(tmp_path / "a.nii.gz")
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("\ufeffsubject, path ,study\n 001 , a.nii.gz ,s\n".encode("utf-8"))
    table = read_manifest(manifest)
    assert table.loc[0, ["subject", "path", "study"]].tolist() == ["001", str(tmp_path / "a.nii.gz"), "s"]


# ---- check: one test per kind of problem ----------------------------------------------


def test_good_manifest_has_no_problems_and_exits_0(study, capsys):
    assert check_manifests([study]) == []
    assert main(["manifest", "check", "--quiet", study]) == 0
    assert "no problems in 1 manifest, 2 rows checked" in capsys.readouterr().out


def test_manifest_not_found(tmp_path):
    problem = only_problem([str(tmp_path / "nope.csv")])
    assert str(problem) == f"{tmp_path / 'nope.csv'}: manifest not found"


def test_unreadable_csv(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"")
    assert "unreadable CSV" in str(only_problem([str(manifest)]))
    manifest.write_text('subject,path,study\n"01,a.nii.gz,s\n')  # unterminated quote
    assert str(only_problem([str(manifest)])).startswith(f"{manifest}: unreadable CSV")


def test_missing_required_columns(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "subject,file", "01,a.nii.gz")
    assert str(only_problem([manifest])) == f"{manifest}: missing required column(s) path, study (has: subject, file)"


def test_empty_required_value(study):
    add_row(study, "03,scans/sub-03_cbf.nii.gz,,1,,,,,")
    assert str(only_problem([study])) == f"{study} row 3 (sub-03_cbf.nii.gz): empty study"


def test_missing_cbf_file(study, tmp_path):
    add_row(study, "03,scans/sub-04_cbf.nii.gz,study-01,1,,,,,")
    problem = only_problem([study])
    assert (
        str(problem)
        == f"{study} row 3 (sub-04_cbf.nii.gz): file not found: {tmp_path / 'm' / 'scans' / 'sub-04_cbf.nii.gz'}"
    )


def test_missing_and_misaligned_tissue_maps(study, tmp_path):
    save(tmp_path / "m" / "scans" / "gm.nii.gz", (brain() > 0).astype(np.float32))
    save(tmp_path / "m" / "scans" / "wm.nii.gz", (brain() > 0).astype(np.float32), np.diag([2.0, 2, 2, 1]))
    manifest = write_csv(
        tmp_path / "m" / "t.csv",
        "subject,path,study,gm,wm,csf",
        "01,scans/sub-01_cbf.nii.gz,s,scans/gm.nii.gz,scans/wm.nii.gz,scans/csf.nii.gz",
    )
    lines = [str(p) for p in check_manifests([manifest])]
    assert lines == [
        f"{manifest} row 1 (wm.nii.gz): wm map: affine differs from the CBF map's; it must be on the CBF grid",
        f"{manifest} row 1 (csf.nii.gz): csf map: file not found: {tmp_path / 'm' / 'scans' / 'csf.nii.gz'}",
    ]


def test_unreadable_image(study, tmp_path):
    (tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz").write_bytes(b"\x1f\x8b garbage")
    assert str(only_problem([study])).startswith(f"{study} row 2 (sub-02_cbf.nii.gz): cannot read as NIfTI")


def test_duplicate_rows_within_a_manifest(study):
    add_row(study, "02,scans/sub-01_cbf.nii.gz,study-01,1,,,,,")
    assert (
        str(only_problem([study]))
        == f"{study} row 3 (sub-01_cbf.nii.gz): duplicate of row 2 (subject '02' session '1')"
    )


def test_same_subject_in_another_session_is_not_a_duplicate(study):
    add_row(study, "02,scans/sub-03_cbf.nii.gz,study-01,2,,,,,")
    assert check_manifests([study]) == []


def test_duplicate_rows_across_manifests_of_one_study(study, tmp_path):
    other = write_csv(
        tmp_path / "m" / "more.csv", "subject,path,study,session", "01,scans/sub-02_cbf.nii.gz,study-01,1"
    )
    problem = only_problem([study, other])
    assert str(problem) == f"{other} row 1 (sub-02_cbf.nii.gz): duplicate of {study} row 1 (subject '01' session '1')"


def test_subject_in_two_studies(study, tmp_path):
    other = write_csv(tmp_path / "m" / "study-02.csv", "subject,path,study", "02,scans/sub-02_cbf.nii.gz,study-02")
    problem = only_problem([study, other])
    assert str(problem).startswith(
        f"{other} row 1 (sub-02_cbf.nii.gz): subject '02' is also in study 'study-01' ({study} row 2)"
    )


def test_4d_series(study, tmp_path):
    save(tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz", np.stack([brain(), brain(1)], axis=-1))
    assert str(only_problem([study])).startswith(f"{study} row 2 (sub-02_cbf.nii.gz): 4D series with 2 volumes")


def test_non_finite_voxels_inside_the_brain(study, tmp_path):
    data = brain()
    data[6:10, 6:10, 6:10] = np.nan
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz", data)
    expected = f"{study} row 1 (sub-01_cbf.nii.gz): 64 non-finite voxels (NaN/Inf) inside the brain"
    assert str(only_problem([study])).startswith(expected)


def test_nan_background_passes_the_check_with_a_note(study, tmp_path, capsys):
    data = brain()
    data[data == 0] = np.nan  # as ExploreASL writes maps
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz", data)
    assert main(["manifest", "check", "--quiet", study]) == 0
    out = capsys.readouterr().out
    assert (
        f"note: {study} row 1 (sub-01_cbf.nii.gz): {int((data != data).sum())} non-finite voxels outside the brain read as 0"
        in out
    )
    assert "no problems in 1 manifest, 2 rows checked; " in out and "notes (above)" in out


def test_thin_map_is_a_row_problem(study, tmp_path):
    save(tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz", np.full((16, 16, 2), 50.0, np.float32))
    assert str(only_problem([study])) == (
        f"{study} row 2 (sub-02_cbf.nii.gz): too thin to harmonise: z (2) voxel(s) along this axis, "
        "at least 4 needed (a single slice, or a map cut to a slab?)"
    )


def test_repeated_column_is_refused(tmp_path):
    save(tmp_path / "scans" / "sub-01_cbf.nii.gz")
    manifest = write_csv(tmp_path / "m.csv", "subject,path,study,session,session", "01,scans/sub-01_cbf.nii.gz,s,1,2")
    assert str(only_problem([manifest])) == f"{manifest}: repeated column(s) session"
    with pytest.raises(ManifestError, match="repeated column"):
        read_manifest(manifest)


def test_values_in_wrong_units(study, tmp_path):
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz", brain() / 100)  # mL/g/min
    message = str(only_problem([study]))
    assert message.startswith(f"{study} row 1 (sub-01_cbf.nii.gz): median of the non-zero voxels is 0.4")
    assert "wrong units" in message


def test_all_zero_map(study, tmp_path):
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz", np.zeros((16, 16, 16), np.float32))
    assert str(only_problem([study])) == f"{study} row 1 (sub-01_cbf.nii.gz): all voxels are zero (empty map)"


def test_degenerate_affine(study, tmp_path):
    singular = np.array([[3, 3, 0, 0], [3, 3, 0, 0], [0, 0, 4, 0], [0, 0, 0, 1.0]])
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz", affine=singular)
    assert str(only_problem([study])).startswith(f"{study} row 1 (sub-01_cbf.nii.gz): degenerate affine")


@pytest.mark.parametrize(("column", "value"), [("age", "seventy"), ("pld", "1.8s"), ("field_strength", "3T")])
def test_non_numeric_numbers(study, column, value):
    values = {"age": "", "pld": "", "field_strength": "", column: value}
    add_row(
        study, f"03,scans/sub-03_cbf.nii.gz,study-01,2,{values['age']},{values['pld']},{values['field_strength']},,"
    )
    assert str(only_problem([study])) == f"{study} row 3 (sub-03_cbf.nii.gz): {column} {value!r} is not a number"


# ---- check: all at once, read-only, CLI ---------------------------------------------------


def test_check_reports_every_problem_and_the_cli_exits_1(study, tmp_path, capsys):
    save(tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz", brain() * 50)  # raw signal scale
    add_row(study, "03,scans/missing.nii.gz,study-01,1,x,,,,")
    broken = write_csv(tmp_path / "m" / "broken.csv", "subject,path", "9,a.nii.gz")
    assert main(["manifest", "check", study, broken]) == 1
    lines = capsys.readouterr().out.splitlines()
    notes, out = [x for x in lines if x.startswith("note: ")], [x for x in lines if not x.startswith("note: ")]
    assert notes == [
        f"note: {study} row 1 (sub-01_cbf.nii.gz): partial coverage: " + notes[0].split("coverage: ", 1)[1]
    ]
    assert out[:-1] == [
        f"{study} row 2 (sub-02_cbf.nii.gz): " + out[0].split("): ", 1)[1],
        f"{study} row 3 (missing.nii.gz): age 'x' is not a number",
        f"{study} row 3 (missing.nii.gz): file not found: {tmp_path / 'm' / 'scans' / 'missing.nii.gz'}",
        f"{broken}: missing required column(s) study (has: subject, path)",
    ]
    assert "median of the non-zero voxels" in out[0]
    assert out[-1] == "4 problems in 2 manifests, 3 rows checked; 1 note (above)"


def test_progress_bar_goes_to_stderr(study, capsys):
    assert main(["manifest", "check", study]) == 0
    captured = capsys.readouterr()
    assert "checking scans" in captured.err and "checking scans" not in captured.out


def test_no_images_checks_tables_and_existence_only(study, tmp_path, capsys):
    data = brain()
    data[0, 0, 0] = np.nan
    save(tmp_path / "m" / "scans" / "sub-01_cbf.nii.gz", data)
    assert main(["manifest", "check", "--no-images", study]) == 0
    (tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz").unlink()
    assert main(["manifest", "check", "--no-images", study]) == 1
    assert "row 2 (sub-02_cbf.nii.gz): file not found" in capsys.readouterr().out


def test_check_never_modifies_its_inputs(study, tmp_path):
    add_row(study, "01,scans/sub-01_cbf.nii.gz,study-01,1,bad,,,,")  # problems, so nothing is "fixed"
    files = [tmp_path / "m" / "study-01.csv", *sorted((tmp_path / "m" / "scans").iterdir())]
    before = {f: (f.read_bytes(), os.stat(f).st_mtime_ns) for f in files}
    listing = sorted(os.listdir(tmp_path / "m"))
    assert main(["manifest", "check", "--quiet", study]) == 1
    assert {f: (f.read_bytes(), os.stat(f).st_mtime_ns) for f in files} == before
    assert sorted(os.listdir(tmp_path / "m")) == listing


def test_implausible_numbers_are_noted_not_refused(study, capsys):
    add_row(study, "03,scans/sub-03_cbf.nii.gz,study-01,2,860,1800,3,CN,")  # age in months, PLD in ms
    notes: list[Problem] = []
    assert check_manifests([study], notes=notes) == []
    ranges = [str(note) for note in notes if "is outside" in note.message]
    assert ranges == [
        f"{study} row 3 (sub-03_cbf.nii.gz): pld 1800 is outside 0.1-5 seconds (post-labelling delay in ms?)",
        f"{study} row 3 (sub-03_cbf.nii.gz): age 860 is outside 0-120 years (age in months or days?)",
    ]


# ---- identity: one scan in one row, by label and by content --------------------------------


def same_map_problem(problem: Problem, row: int, earlier: str, how: str) -> None:
    assert problem.row == row, problem
    assert problem.message.startswith(f"same CBF map as {earlier}"), problem
    assert how in problem.message, problem


@pytest.mark.parametrize(
    ("spelling", "how"),
    [
        ("scans/sub-01_cbf.nii.gz", "the same file"),  # a copy-pasted row under another subject
        ("./scans/../scans/sub-01_cbf.nii.gz", "the same file"),  # the same path spelled differently
        ("{absolute}", "the same file"),  # absolute beside relative
        ("link/sub-01_cbf.nii.gz", "the same file"),  # through a symbolic link to the folder
        ("hard.nii.gz", "the same file"),  # a hard link
        ("copy/sub-01_cbf.nii.gz", "a byte-identical copy"),  # a copy at another path
    ],
)
def test_one_cbf_map_under_two_subjects_is_refused_naming_both_rows(study, tmp_path, spelling, how):
    scans = tmp_path / "m" / "scans"
    (tmp_path / "m" / "link").symlink_to(scans)
    os.link(scans / "sub-01_cbf.nii.gz", tmp_path / "m" / "hard.nii.gz")
    (tmp_path / "m" / "copy").mkdir()
    (tmp_path / "m" / "copy" / "sub-01_cbf.nii.gz").write_bytes((scans / "sub-01_cbf.nii.gz").read_bytes())
    spelling = spelling.format(absolute=scans / "sub-01_cbf.nii.gz")
    add_row(study, f"07,{spelling},study-01,1,,,,,")
    same_map_problem(only_problem([study]), 3, "row 1 (subject '01' session '1')", how)
    with pytest.raises(ManifestError, match=rf"row 3 \({os.path.basename(spelling)}\): same CBF map as row 1"):
        read_manifest(study)


def test_same_map_in_another_manifest_or_study_or_session_is_refused(study, tmp_path):
    copy = tmp_path / "other" / "x.nii.gz"
    copy.parent.mkdir()
    copy.write_bytes((tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz").read_bytes())
    other = write_csv(tmp_path / "other" / "study-09.csv", "subject,path,study", "S9,x.nii.gz,study-09")
    same_map_problem(only_problem([study, other]), 1, f"{study} row 2 (subject '02' session '1')", "byte-identical")
    add_row(study, "02,scans/sub-02_cbf.nii.gz,study-01,2,,,,,")  # one visit's map again as another visit
    problems = check_manifests([study])
    assert len(problems) == 1 and problems[0].row == 3 and "same CBF map as row 2" in problems[0].message


def test_same_size_different_bytes_and_missing_files_are_not_the_same_scan(study, tmp_path):
    a, b = (save(tmp_path / "m" / "scans" / f"{n}.nii", brain(i)) for i, n in enumerate(("a", "b")))
    assert a.stat().st_size == b.stat().st_size  # uncompressed: same size, other bytes
    add_row(study, "03,scans/a.nii,study-01,1,,,,,")
    add_row(study, "04,scans/b.nii,study-01,1,,,,,")
    add_row(study, "05,scans/gone.nii,study-01,1,,,,,")
    add_row(study, "06,scans/gone.nii,study-01,1,,,,,")  # two missing files: each reported as missing
    problems = check_manifests([study], read_images=False)
    assert [p.row for p in problems] == [5, 6] and all("file not found" in p.message for p in problems)


@pytest.mark.parametrize(("first", "second"), [("sub-01", "01"), ("01", "sub-01")])
def test_a_subject_spelled_with_and_without_sub_is_refused(study, first, second, tmp_path):
    save(tmp_path / "m" / "scans" / "v2.nii.gz", brain(7))
    text = (tmp_path / "m" / "study-01.csv").read_text().replace("\n01,", f"\n{first},")
    (tmp_path / "m" / "study-01.csv").write_text(text)
    add_row(study, f"{second},scans/v2.nii.gz,study-01,2,,,,,")  # another visit, other file: one person
    problem = only_problem([study])
    assert problem.row == 3
    assert problem.message.startswith(f"subject {second!r} is written {first!r} in row 1; one person needs one label")


def test_a_copied_map_never_reaches_a_split(tmp_path):
    from ichor.data import CBFDataModule

    rows = ["subject,path,study"]
    for i in range(6):
        save(tmp_path / f"s{i}.nii.gz", brain(i))
        rows.append(f"P{i},s{i}.nii.gz,one")
    rows.append("P9,s0.nii.gz,one")  # P0's map under another subject
    manifest = write_csv(tmp_path / "m.csv", *rows)
    dm = CBFDataModule([manifest], cache_dir=str(tmp_path / "cache"), spacing=4.0, shape=(16, 16, 16), progress=False)
    with pytest.raises(ManifestError, match=r"m.csv row 7 \(s0.nii.gz\): same CBF map as row 1 \(subject 'P0'\)"):
        dm.setup("fit")


def test_check_opens_each_map_once_however_many_rows_name_it(study, tmp_path, monkeypatch):
    import ichor.data.manifest as manifest_module

    opened = []
    original = manifest_module.load_cbf

    def counting(path, *args, **kwargs):
        opened.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "load_cbf", counting)
    for i in range(3, 40):
        add_row(study, f"{i:02d},scans/sub-02_cbf.nii.gz,study-01,1,,,,,")
    problems = check_manifests([study], workers=0)
    assert sorted(opened) == sorted({str(tmp_path / "m" / "scans" / f"sub-0{i}_cbf.nii.gz") for i in (1, 2)})
    assert [p.row for p in problems] == list(range(3, 40))  # each repeat named, with its row


def test_parallel_check_finds_what_the_serial_one_finds(study, tmp_path):
    save(tmp_path / "m" / "scans" / "sub-02_cbf.nii.gz", brain() * 50)  # wrong units
    for i in range(3, 3 + 20):
        save(tmp_path / "m" / "scans" / f"p{i}.nii.gz", brain(10 + i))
        add_row(study, f"{i:02d},scans/p{i}.nii.gz,study-01,1,,,,,")
    serial_notes: list[Problem] = []
    parallel_notes: list[Problem] = []
    serial = check_manifests([study], workers=0, notes=serial_notes)
    parallel = check_manifests([study], workers=2, notes=parallel_notes)
    assert serial == parallel and len(serial) == 1 and serial[0].row == 2
    assert serial_notes == parallel_notes and [n.row for n in serial_notes] == sorted(n.row for n in serial_notes)


@pytest.mark.parametrize(
    "content",
    [
        b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40,  # a spreadsheet (xlsx) named .csv
        "subject,path,study\n01,a.nii.gz,s\n".encode("utf-16"),  # Excel's "Unicode text"
        __import__("gzip").compress(b"subject,path,study\n01,a.nii.gz,s\n"),  # a compressed table
        b"subject,path,study\n0\x001,a.nii.gz,s\n",  # a NUL inside a label
    ],
)
def test_a_binary_file_is_refused_in_one_line_naming_it(tmp_path, content):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    assert (
        str(only_problem([str(manifest)])) == f"{manifest}: a binary file, not a CSV text table (save it as CSV, UTF-8)"
    )


@pytest.mark.parametrize("marker", ["n/a", "N/A", "NA", "NaN", "nan"])
def test_missing_value_markers_are_empty_in_optional_columns(study, marker, tmp_path):
    """BIDS writes n/a: never a diagnosis class, never a number that fails to parse."""
    lines = Path(study).read_text().splitlines()
    lines[1] = lines[1].replace(",71,", f",{marker},").replace(",AD,", f",{marker},")
    manifest = write_csv(tmp_path / "m" / "marked.csv", *lines)
    rows = read_manifest(manifest)
    assert np.isnan(rows.loc[0, "age"]) and rows.loc[0, "diagnosis"] == ""
    assert check_manifests([manifest], workers=0) == []
    lines[1] = lines[1].replace("01,", f"{marker},", 1)  # a required column keeps the text
    assert read_manifest(write_csv(tmp_path / "m" / "subject.csv", *lines)).loc[0, "subject"] == marker
