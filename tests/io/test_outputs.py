"""Outputs stay inside the folder the user named, whatever the manifest's labels hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ichor.explain.run import scan_stem
from ichor.io import confined


@pytest.mark.parametrize("relative", ["../x.csv", "a/../../x.csv", "/etc/passwd", "group/../../x"])
def test_a_name_that_leaves_the_folder_is_refused(tmp_path, relative):
    with pytest.raises(ValueError, match="leaves"):
        confined(tmp_path / "out", relative)


def test_a_name_inside_the_folder_is_kept(tmp_path):
    assert confined(tmp_path, "study-01/sub-1_attribution.png") == tmp_path / "study-01" / "sub-1_attribution.png"


@pytest.mark.parametrize(
    ("subject", "session", "study"),
    [
        ("../../evil", "", "study-01"),
        ("01", "../..", "s"),
        ("01", "", ".."),
        ("a/b", "1", "../../../tmp"),
        ("..", ".", "."),
    ],
)
def test_explain_file_names_from_hostile_labels_stay_inside_out(tmp_path, subject, session, study):
    stem = scan_stem(SimpleNamespace(subject=subject, session=session, study=study))
    path = confined(tmp_path, f"{stem}_attribution.nii.gz")  # would raise if the label escaped
    assert path.resolve().parent.parent == tmp_path.resolve()
