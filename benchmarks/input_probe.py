"""Inputs as a new user brings them: over 100 cases, each built in a temporary folder and classified.

    nice -n 19 python benchmarks/input_probe.py [--only WORD] [--csv OUT.csv]

Each case makes its inputs (a manifest, a NIfTI, a derivatives tree, a benchmark config), runs one
entry point (the Python API in this process, or the ``ichor`` command in a subprocess with a short
timeout) and classifies what happened:

- ``ok``: a clear refusal that names the file or row, or a correct acceptance (for a map, its
  harmonised brain mean within 10 % of the truth; for a manifest, the rows a user meant);
- a failure, with a severity: ``high`` (a traceback, silently wrong data accepted, an input file
  changed), ``medium`` (a usable input refused, a partial output left behind, an error naming no
  file), ``low`` (a clumsy but correct refusal: several lines, a missing remedy).

Cases marked ``new`` were not among those listed in issue 24. The table and a summary (cases, new,
failures by severity and class) are printed; ``--csv`` writes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ichor.data.harmonise import HarmonisationSettings, harmonise
from ichor.data.manifest import ManifestError, check_manifests, read_manifests
from ichor.data.scans import load_cbf

GRID = (56, 64, 52)  # 3 mm voxels: 168 x 192 x 156 mm, room for a brain
VOXEL = 3.0
SETTINGS = HarmonisationSettings.create(4.0, (48, 56, 48))
ICHOR = [sys.executable, "-m", "ichor.cli"]
REFUSALS = (ValueError, OSError)  # ScanError, ManifestError, DerivativesError are ValueErrors


@dataclass
class Result:
    outcome: str  # "ok" or a failure class
    severity: str  # "", "low", "medium", "high"
    detail: str


@dataclass
class Case:
    name: str
    group: str
    new: bool
    run: Callable[[Path], Result]


OK = "ok"


# ---------------------------------------------------------------- the data a case is made of


def brain(seed: int = 0, shape: tuple[int, int, int] = GRID, voxel: float = VOXEL) -> np.ndarray:
    """An ellipsoid brain (about 1.3 L) of grey-matter rim ~60 and white-matter core ~25 mL/100g/min, 0 outside."""
    rng = np.random.default_rng(seed)
    axes = np.array([68.0, 82.0, 58.0]) / voxel
    grid = np.indices(shape).astype(np.float32) - ((np.array(shape) - 1) / 2)[:, None, None, None]
    radius = np.sqrt(sum((grid[i] / axes[i]) ** 2 for i in range(3)))
    values = np.where(radius < 0.8, 25.0, 60.0) * (1 + 0.1 * rng.standard_normal(shape))
    return np.where(radius < 1, values, 0).astype(np.float32)


def truth(data: np.ndarray) -> float:
    inside = np.isfinite(data) & (data != 0)
    return float(data[inside].mean())


def affine(voxel=(VOXEL, VOXEL, VOXEL), rotation_deg: float = 0.0) -> np.ndarray:
    out = np.diag([*voxel, 1.0])
    if rotation_deg:
        t = np.deg2rad(rotation_deg)
        turn = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
        out[:3, :3] = turn @ out[:3, :3]
    out[:3, 3] = -np.array(GRID) * np.array(voxel) / 2
    return out


def save_nifti(path: Path, data: np.ndarray, aff: np.ndarray | None = None, **header) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine() if aff is None else aff)
    for key, value in header.items():
        if key == "slope":
            image.header.set_slope_inter(*value)
        elif key == "qform":
            image.set_qform(value, code=1)
        elif key == "sform_code":
            image.header["sform_code"] = value
        elif key == "qform_code":
            image.header["qform_code"] = value
    nib.save(image, path)
    return path


def manifest(folder: Path, rows: list[dict], name: str = "study.csv", **write) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False, **write)
    return path


def row(subject: str, path: str, study: str = "s1", **extra) -> dict:
    return {"subject": subject, "session": "1", "study": study, "path": path, **extra}


def good_maps(folder: Path, count: int = 2) -> list[str]:
    return [str(save_nifti(folder / f"sub-{i:02d}_cbf.nii.gz", brain(i))) for i in range(count)]


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part in skip for part in p.parts)
    }


# ---------------------------------------------------------------- how an outcome is judged


def refused(message: str, names: tuple[str, ...]) -> Result:
    """A refusal is clear when it names the file or row; several problems are one line each, each naming it."""
    if not any(name in message for name in names):
        return Result("refusal names no file or row", "medium", message[:160])
    lines = message.strip().splitlines()
    if not all(any(name in line for name in names) for line in lines):
        return Result("refusal over several lines", "low", message[:160])
    return Result(OK, "", "refused: " + message[:160])


def expect_refusal(
    call: Callable[[], object], names: tuple[str, ...], if_accepted: str = "high", why: str = ""
) -> Result:
    """``call`` must raise a refusal naming one of ``names``; anything else is a failure."""
    try:
        value = call()
    except REFUSALS as error:
        return refused(str(error), names)
    except Exception as error:
        return Result("traceback", "high", f"{type(error).__name__}: {error}"[:160])
    return Result("accepted silently", if_accepted, f"{why} (returned {str(value)[:80]})")


def expect_accept(call: Callable[[], object], check: Callable[[object], str] | None = None) -> Result:
    """``call`` must succeed and ``check`` (a message when wrong) must pass."""
    try:
        value = call()
    except REFUSALS as error:
        return Result("usable input refused", "medium", str(error)[:160])
    except Exception as error:
        return Result("traceback", "high", f"{type(error).__name__}: {error}"[:160] + traceback.format_exc()[-200:])
    wrong = check(value) if check else ""
    return Result("accepted wrongly", "high", wrong) if wrong else Result(OK, "", "accepted")


def checked(path: Path) -> list:
    """``check_manifests`` as ``ichor manifest check`` runs it (in this process): problems raise, notes return."""
    notes: list = []
    problems = check_manifests([path], notes=notes, workers=0)
    if problems:
        raise ManifestError("\n".join(map(str, problems)))
    read_manifests([path])  # what the datamodule reads must agree
    return notes


def map_case(data_or_path, expect: str, names=("row",), aff=None, tolerance=0.1, **header) -> Callable[[Path], Result]:
    """A one-row manifest of one map; ``expect``: "accept" (harmonised brain mean within ``tolerance``) or "refuse"."""

    def run(tmp: Path) -> Result:
        if callable(data_or_path):
            path, mean = data_or_path(tmp)
        else:
            path = save_nifti(tmp / "sub-01_cbf.nii.gz", data_or_path, aff, **header)
            mean = truth(data_or_path) if "slope" not in header else None
        table = manifest(tmp, [row("sub-01", path.name)])
        if expect == "refuse":
            return expect_refusal(lambda: checked(table), names)

        def mean_right(_: object) -> str:
            scan = harmonise(load_cbf(path), SETTINGS)
            got = float(scan.cbf[scan.mask].mean())
            want = mean if mean is not None else truth(np.asanyarray(nib.load(path).dataobj, dtype=np.float64))
            return "" if abs(got - want) <= tolerance * abs(want) else f"brain mean {got:.1f}, truth {want:.1f}"

        return expect_accept(lambda: checked(table), mean_right)

    return run


def cli(args: list[str], cwd: Path, timeout: float = 240, expect_rc: int = 1, names=()) -> Result:
    """``ichor ARGS`` in a subprocess: a refusal (``expect_rc`` 1) must be one line naming one of ``names``."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run([*ICHOR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Result("hangs", "medium", f"no answer in {timeout:g} s")
    err = done.stderr + "\n" + done.stdout
    if "Traceback (most recent call last)" in err:
        return Result("traceback", "high", err.strip().splitlines()[-1][:160])
    if done.returncode == 2 and expect_rc == 1 and any(name in err for name in names):
        return Result("usage block (exit 2) around the refusal", "low", err.strip().splitlines()[-1][:160])
    if done.returncode != expect_rc:
        return Result(f"exit {done.returncode}, expected {expect_rc}", "high", err.strip()[-160:])
    if expect_rc == 0:
        return Result(OK, "", "accepted")
    said = [line for line in err.strip().splitlines() if any(name in line for name in names)]
    if not said:
        return Result("refusal names no file or row", "medium", err.strip()[-160:])
    return Result(OK, "", "refused: " + said[0][:160])


# ---------------------------------------------------------------- manifests


def table_case(
    write: Callable[[Path, list[str]], Path], expect: str, names=("row", "study.csv"), subjects=("sub-00", "sub-01")
) -> Callable:
    """A manifest written by ``write(folder, good map paths)``; refused naming it, or accepted with ``subjects``."""

    def run(tmp: Path) -> Result:
        maps = good_maps(tmp / "maps")
        path = write(tmp, maps)
        if expect == "refuse":
            return expect_refusal(lambda: checked(path), names)
        return expect_accept(lambda: checked(path), lambda _: _subjects(path, set(subjects)))

    return run


def _subjects(path: Path, wanted: set[str]) -> str:
    rows = read_manifests([path])
    return "" if set(rows["subject"]) == wanted else f"subjects read as {sorted(set(rows['subject']))}"


def text_manifest(text: str, encoding: str = "utf-8", name: str = "study.csv") -> Callable:
    """A manifest of ``text`` (``{0}``/``{1}``: the two maps' paths)."""

    def write(tmp: Path, maps: list[str]) -> Path:
        path = tmp / name
        path.write_bytes(text.format(*maps).encode(encoding))
        return path

    return write


HEADER = "subject,session,study,path\n"
GOOD = HEADER + "sub-00,1,s1,{0}\nsub-01,1,s1,{1}\n"


def manifest_cases() -> list[Case]:
    def case(name, new, text, expect, encoding="utf-8", names=("row", "study.csv")):
        return Case(name, "manifest", new, table_case(text_manifest(text, encoding), expect, names))

    cases = [
        case("good manifest", False, GOOD, "accept"),
        case("UTF-8 BOM", True, "\ufeff" + GOOD, "accept", "utf-8"),
        case("UTF-16 with BOM (Excel 'Unicode text')", True, GOOD, "refuse", "utf-16"),
        case("Latin-1 subject names", True, HEADER + "sub-é0,1,s1,{0}\nsub-01,1,s1,{1}\n", "refuse", "latin-1"),
        case("semicolon-separated (European Excel)", True, GOOD.replace(",", ";"), "refuse"),
        case("tab-separated named .csv", True, GOOD.replace(",", "\t"), "refuse"),
        case("CRLF line ends", True, GOOD.replace("\n", "\r\n"), "accept"),
        case("blank line between rows", True, HEADER + "sub-00,1,s1,{0}\n\nsub-01,1,s1,{1}\n", "accept"),
        case("row of empty cells", True, HEADER + "sub-00,1,s1,{0}\n,,,\nsub-01,1,s1,{1}\n", "refuse"),
        case("trailing blank lines", True, GOOD + "\n\n\n", "accept"),
        case(
            "duplicated column (age twice)",
            False,
            "subject,session,study,path,age,age\nsub-00,1,s1,{0},70,71\nsub-01,1,s1,{1},60,61\n",
            "refuse",
        ),  # fmt: skip
        case(
            "duplicated path column",
            True,
            "subject,session,study,path,path\nsub-00,1,s1,{0},{1}\nsub-01,1,s1,{1},{0}\n",
            "refuse",
        ),  # fmt: skip
        case("header only", True, HEADER, "refuse"),
        case("empty file", True, "", "refuse"),
        case("missing study column", True, "subject,session,path\nsub-00,1,{0}\nsub-01,1,{1}\n", "refuse"),
        case(
            "capitalised column names", True, "Subject,Session,Study,Path\nsub-00,1,s1,{0}\nsub-01,1,s1,{1}\n", "refuse"
        ),  # fmt: skip
        case(
            "spaces after commas in the header",
            True,
            "subject, session, study, path\nsub-00,1,s1,{0}\nsub-01,1,s1,{1}\n",
            "accept",
        ),  # fmt: skip
        case(
            "quoted fields",
            True,
            '"subject","session","study","path"\n"sub-00","1","s1","{0}"\n"sub-01","1","s1","{1}"\n',
            "accept",
        ),  # fmt: skip
        case(
            "age with units (65y)",
            True,
            "subject,session,study,path,age\nsub-00,1,s1,{0},65y\nsub-01,1,s1,{1},70\n",
            "refuse",
        ),  # fmt: skip
        case(
            "age NA and n/a",
            True,
            "subject,session,study,path,age\nsub-00,1,s1,{0},NA\nsub-01,1,s1,{1},n/a\n",
            "accept",
        ),  # fmt: skip
        case(
            "age in months",
            False,
            "subject,session,study,path,age\nsub-00,1,s1,{0},840\nsub-01,1,s1,{1},800\n",
            "accept",
        ),  # fmt: skip  (a note, not a refusal)
        case("subject with trailing space", True, HEADER + "sub-00 ,1,s1,{0}\nsub-01,1,s1,{1}\n", "accept"),
        case(
            "unknown extra columns",
            True,
            "subject,session,study,path,scanner_room\nsub-00,1,s1,{0},B\nsub-01,1,s1,{1},C\n",
            "accept",
        ),  # fmt: skip
        case("copied row (same file twice)", False, HEADER + "sub-00,1,s1,{0}\nsub-01,1,s1,{0}\n", "refuse"),
        case("sub-01 beside 01", False, HEADER + "sub-00,1,s1,{0}\n00,2,s1,{1}\n", "refuse"),
        case(
            "Windows backslash path", True, HEADER + "sub-00,1,s1,maps\\sub-00_cbf.nii.gz\nsub-01,1,s1,{1}\n", "refuse"
        ),  # fmt: skip
        case(
            "home-relative path (~)", True, HEADER + "sub-00,1,s1,~/sub-00_cbf.nii.gz\nsub-01,1,s1,{1}\n", "refuse"
        ),  # fmt: skip
        case("path is a folder", True, HEADER + "sub-00,1,s1,maps\nsub-01,1,s1,{1}\n", "refuse"),
        case("NUL byte in the table", True, GOOD.replace("sub-01,", "sub-\x0001,"), "refuse"),
        case("binary file named .csv (xlsx)", True, "PK\x03\x04\x14\x00\x06\x00" + "\x00" * 40, "refuse"),
    ]
    cases += [
        Case("relative paths ./ and ../", "manifest", True, table_case(_relative_paths, "accept")),
        Case("paths with spaces", "manifest", True, table_case(_spaced_paths, "accept")),
        Case("subject ids 001 and 01", "manifest", True, table_case(_leading_zeros, "accept", subjects=("001", "01"))),
        Case("gzip-compressed manifest", "manifest", True, table_case(_gzipped, "refuse", ("study.csv",))),
        Case(
            "manifest path missing",
            "manifest",
            True,
            table_case(lambda tmp, maps: tmp / "nowhere.csv", "refuse", ("nowhere.csv",)),
        ),  # fmt: skip
        Case(
            "folder without any CSV", "manifest", True, table_case(lambda tmp, maps: tmp / "maps", "refuse", ("maps",))
        ),  # fmt: skip
        Case("symlink to another row's map", "manifest", False, table_case(_symlinked, "refuse")),
        Case("same subject in two studies", "manifest", False, table_case(_two_studies, "refuse")),
        Case("tissue map column, file missing", "manifest", True, table_case(_gm_missing, "refuse")),
        Case("tissue map on another grid", "manifest", True, table_case(_gm_other_grid, "refuse")),
        Case("tissue map in percent", "manifest", True, table_case(_gm_percent, "refuse")),
        Case("tissue map with NaN", "manifest", True, table_case(_gm_nan, "refuse")),
        Case("row count 0 after a header with BOM", "manifest", True, table_case(_bom_header_only, "refuse")),
        Case(
            "label with ../ in it",
            "manifest",
            False,
            table_case(_dotdot_label, "accept", subjects=("sub-00", "../../sub-01")),
        ),  # fmt: skip
        Case("diagnosis n/a is unlabelled", "manifest", True, table_case(_na_diagnosis, "accept")),
    ]
    return cases


def _na_diagnosis(tmp: Path, maps: list[str]) -> Path:
    path = manifest(tmp, [row("sub-00", maps[0], diagnosis="AD"), row("sub-01", maps[1], diagnosis="n/a")])
    return path if read_manifests([path])["diagnosis"].tolist() == ["AD", ""] else tmp / "n-a-is-a-class.csv"


def _relative_paths(tmp: Path, maps: list[str]) -> Path:
    (tmp / "tables").mkdir()
    return manifest(
        tmp / "tables", [row("sub-00", "../maps/sub-00_cbf.nii.gz"), row("sub-01", "./../maps/sub-01_cbf.nii.gz")]
    )


def _spaced_paths(tmp: Path, maps: list[str]) -> Path:
    folder = tmp / "my scans"
    folder.mkdir()
    names = []
    for i, source in enumerate(maps):
        target = folder / f"sub 0{i} cbf.nii.gz"
        shutil.copy(source, target)
        names.append(str(target.relative_to(tmp)))
    return manifest(tmp, [row("sub-00", names[0]), row("sub-01", names[1])])


def _leading_zeros(tmp: Path, maps: list[str]) -> Path:
    path = manifest(tmp, [row("001", maps[0]), row("01", maps[1])])
    return path


def _gzipped(tmp: Path, maps: list[str]) -> Path:
    path = tmp / "study.csv"
    path.write_bytes(gzip.compress(GOOD.format(*maps).encode()))
    return path


def _symlinked(tmp: Path, maps: list[str]) -> Path:
    link = tmp / "maps" / "link.nii.gz"
    link.symlink_to(maps[0])
    return manifest(tmp, [row("sub-00", maps[0]), row("sub-01", str(link))])


def _two_studies(tmp: Path, maps: list[str]) -> Path:
    return manifest(tmp, [row("sub-00", maps[0], "s1"), row("sub-00", maps[1], "s2")])


def _gm_missing(tmp: Path, maps: list[str]) -> Path:
    return manifest(tmp, [row("sub-00", maps[0], gm="maps/gm.nii.gz"), row("sub-01", maps[1], gm="")])


def _gm(tmp: Path, data: np.ndarray, aff=None) -> str:
    return str(save_nifti(tmp / "maps" / "gm.nii.gz", data.astype(np.float32), aff))


def _gm_other_grid(tmp: Path, maps: list[str]) -> Path:
    gm = _gm(tmp, (brain() > 0) * 0.8, affine((2.0, 2.0, 2.0)))
    return manifest(tmp, [row("sub-00", maps[0], gm=gm), row("sub-01", maps[1], gm="")])


def _gm_percent(tmp: Path, maps: list[str]) -> Path:
    gm = _gm(tmp, (brain() > 0) * 80.0)
    return manifest(tmp, [row("sub-00", maps[0], gm=gm), row("sub-01", maps[1], gm="")])


def _gm_nan(tmp: Path, maps: list[str]) -> Path:
    data = (brain() > 0) * 0.8
    data[0, 0, 0] = np.nan
    gm = _gm(tmp, data)
    return manifest(tmp, [row("sub-00", maps[0], gm=gm), row("sub-01", maps[1], gm="")])


def _bom_header_only(tmp: Path, maps: list[str]) -> Path:
    path = tmp / "study.csv"
    path.write_bytes(("\ufeff" + HEADER).encode())
    return path


def _dotdot_label(tmp: Path, maps: list[str]) -> Path:
    return manifest(tmp, [row("sub-00", maps[0]), row("../../sub-01", maps[1])])


# ---------------------------------------------------------------- NIfTI maps


def _with(change: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> np.ndarray:
    return change(brain(seed).copy())


def _nan_background(data):
    data[data == 0] = np.nan
    return data


def _negative_patch(data):
    data[28:32, 30:34, 24:28] = -15.0  # a negative cluster inside the brain (noise, vessels)
    return data


def _inf_inside(data):
    data[28, 32, 26] = np.inf
    return data


def _inf_outside(data):
    data[0, 0, 0] = np.inf
    return data


def _every_other_slice(data):
    data[:, :, ::2] = 0
    return data


def _slab(data):
    data[:, :, 34:] = 0  # a 3D acquisition slab: the top of the brain cut
    return data


def _unmasked(data):
    noise = np.abs(np.random.default_rng(0).normal(10, 5, data.shape)).astype(np.float32)
    return np.where(data == 0, noise, data)


def _gm_only(data):
    grid = np.indices(GRID) - ((np.array(GRID) - 1) / 2)[:, None, None, None]
    axes = np.array([68.0, 82.0, 58.0]) / VOXEL
    radius = np.sqrt(sum((grid[i] / axes[i]) ** 2 for i in range(3)))
    data[radius < 0.8] = np.nan  # white matter masked out
    return data


def _spike(data):
    data[28, 32, 26] = 1e6
    return data


def _scaled_int16(tmp: Path, inter: float = 0.0) -> tuple[Path, float]:
    data = brain()
    stored = np.round((data - inter) / 0.01).astype(np.int16)
    stored[data == 0] = np.round(-inter / 0.01) if inter else 0
    image = nib.Nifti1Image(stored, affine())
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(0.01, inter)
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(image, path)
    return path, truth(data)


def _typed(dtype, factor: float = 1.0) -> Callable[[Path], tuple[Path, float]]:
    def make(tmp: Path) -> tuple[Path, float]:
        data = brain()
        image = nib.Nifti1Image((data * factor).astype(dtype), affine())
        path = tmp / "sub-01_cbf.nii.gz"
        nib.save(image, path)
        return path, truth((data * factor).astype(dtype).astype(np.float64))

    return make


def _four_d(volumes: int) -> Callable[[Path], tuple[Path, float]]:
    def make(tmp: Path) -> tuple[Path, float]:
        data = np.stack([brain(i) for i in range(volumes)], -1)
        return save_nifti(tmp / "sub-01_cbf.nii.gz", data), truth(data[..., 0])

    return make


def _five_d(tmp: Path) -> tuple[Path, float]:
    data = brain()[..., None, None]
    return save_nifti(tmp / "sub-01_cbf.nii.gz", data), truth(brain())


def _qform_sform_disagree(tmp: Path) -> tuple[Path, float]:
    image = nib.Nifti1Image(brain(), affine())
    image.set_qform(affine((VOXEL, VOXEL, VOXEL), rotation_deg=90), code=1)
    image.set_sform(affine(), code=1)
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(image, path)
    return path, truth(brain())


def _no_orientation(tmp: Path) -> tuple[Path, float]:
    image = nib.Nifti1Image(brain(), affine())
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(image, path)
    return path, truth(brain())


def _qform_only(tmp: Path) -> tuple[Path, float]:
    image = nib.Nifti1Image(brain(), affine())
    image.set_qform(affine(), code=1)
    image.set_sform(None, code=0)
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(image, path)
    return path, truth(brain())


def _sform_row(srow_x: list[float]) -> Callable[[Path], tuple[Path, float]]:
    """A map whose sform's first row is ``srow_x`` (nibabel will not build such an affine itself)."""

    def make(tmp: Path) -> tuple[Path, float]:
        image = nib.Nifti1Image(brain(), affine())
        image.set_qform(None, code=0)
        image.header["srow_x"] = srow_x
        image.header["sform_code"] = 1
        path = tmp / "sub-01_cbf.nii.gz"
        nib.save(nib.Nifti1Image(brain(), None, header=image.header), path)
        return path, truth(brain())

    return make


def _nifti2(tmp: Path) -> tuple[Path, float]:
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(nib.Nifti2Image(brain(), affine()), path)
    return path, truth(brain())


def _analyze(tmp: Path) -> tuple[Path, float]:
    path = tmp / "sub-01_cbf.img"
    nib.save(nib.AnalyzeImage(brain(), affine()), path)
    return path, truth(brain())


def _plain_named_gz(tmp: Path) -> tuple[Path, float]:
    plain = save_nifti(tmp / "plain.nii", brain())
    path = tmp / "sub-01_cbf.nii.gz"
    plain.rename(path)
    return path, truth(brain())


def _truncated(tmp: Path) -> tuple[Path, float]:
    path = save_nifti(tmp / "sub-01_cbf.nii.gz", brain())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, 0.0


def _text_file(tmp: Path) -> tuple[Path, float]:
    path = tmp / "sub-01_cbf.nii.gz"
    path.write_text("this is not an image\n")
    return path, 0.0


def _rgb(tmp: Path) -> tuple[Path, float]:
    data = np.zeros(GRID, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(nib.Nifti1Image(data, affine()), path)
    return path, 0.0


def _complex(tmp: Path) -> tuple[Path, float]:
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(nib.Nifti1Image(brain().astype(np.complex64), affine()), path)
    return path, 0.0


def _units_metres(tmp: Path) -> tuple[Path, float]:
    image = nib.Nifti1Image(brain(), affine((0.003, 0.003, 0.003)))
    image.header.set_xyzt_units("meter")
    path = tmp / "sub-01_cbf.nii.gz"
    nib.save(image, path)
    return path, truth(brain())


def _voxel(size: float, shape=GRID) -> Callable[[Path], tuple[Path, float]]:
    def make(tmp: Path) -> tuple[Path, float]:
        data = brain(0, shape, size)
        return save_nifti(tmp / "sub-01_cbf.nii.gz", data, np.diag([size, size, size, 1.0])), truth(data)

    return make


def _mislabelled_voxel(size: float) -> Callable[[Path], tuple[Path, float]]:
    """A 3 mm brain whose header says ``size`` mm voxels (a wrong pixdim)."""

    def make(tmp: Path) -> tuple[Path, float]:
        return save_nifti(tmp / "sub-01_cbf.nii.gz", brain(), np.diag([size, size, size, 1.0])), truth(brain())

    return make


def _anisotropic(tmp: Path) -> tuple[Path, float]:
    shape = (56, 64, 26)
    data = brain(0, shape, 6.0)
    data = _anisotropic_brain()
    return save_nifti(tmp / "sub-01_cbf.nii.gz", data, np.diag([3.0, 3.0, 6.0, 1.0])), truth(data)


def _anisotropic_brain() -> np.ndarray:
    shape = (56, 64, 26)
    grid = np.indices(shape).astype(np.float32) - ((np.array(shape) - 1) / 2)[:, None, None, None]
    axes = np.array([68.0 / 3, 82.0 / 3, 58.0 / 6])
    radius = np.sqrt(sum((grid[i] / axes[i]) ** 2 for i in range(3)))
    values = np.where(radius < 0.8, 25.0, 60.0)
    return np.where(radius < 1, values, 0).astype(np.float32)


def _symlink_map(tmp: Path) -> tuple[Path, float]:
    target = save_nifti(tmp / "elsewhere" / "cbf.nii.gz", brain())
    path = tmp / "sub-01_cbf.nii.gz"
    path.symlink_to(target)
    return path, truth(brain())


def nifti_cases() -> list[Case]:
    def case(name, new, data, expect, names=("row",), **options):
        return Case(name, "nifti", new, map_case(data, expect, names, **options))

    return [
        case("float32 masked map", False, brain(), "accept"),
        case("float64 map", True, brain().astype(np.float64), "accept"),
        case("int16 with scl_slope", True, lambda tmp: _scaled_int16(tmp), "accept"),
        case("int16 with scl_slope and scl_inter", False, lambda tmp: _scaled_int16(tmp, 0.5), "accept"),
        case("uint8 map (rounded CBF)", True, _typed(np.uint8), "accept"),
        case("int16 map stored x10, no slope", True, _typed(np.int16, 10.0), "refuse"),
        case("4D with one volume", True, _four_d(1), "accept"),
        case("4D with three volumes", True, _four_d(3), "refuse"),
        case("5D (x, y, z, 1, 1)", True, _five_d, "accept"),
        case("2D single slice", True, brain()[:, :, 26], "refuse"),
        case("3 slices thick", True, brain()[:, :, 24:27], "refuse"),
        case("qform and sform disagree", True, _qform_sform_disagree, "refuse", ("qform", "sform")),
        case("qform only (sform code 0)", True, _qform_only, "accept"),
        case("no orientation (both codes 0)", True, _no_orientation, "refuse", ("orientation", "qform", "sform")),
        case("NIfTI-2", True, _nifti2, "accept"),
        case("ANALYZE .img/.hdr", True, _analyze, "refuse"),
        case("uncompressed bytes named .nii.gz", True, _plain_named_gz, "accept"),
        case("truncated .nii.gz", False, _truncated, "refuse"),
        case("text named .nii.gz", False, _text_file, "refuse"),
        case("RGB datatype", True, _rgb, "refuse"),
        case("complex64 datatype", True, _complex, "refuse"),
        case("zeros everywhere", True, np.zeros(GRID, np.float32), "refuse"),
        case("NaN everywhere", True, np.full(GRID, np.nan, np.float32), "refuse"),
        case("Inf inside the brain", True, _with(_inf_inside), "refuse"),
        case("Inf in the background", True, _with(_inf_outside), "accept"),
        case("negative CBF cluster", True, _with(_negative_patch), "accept"),
        case("all negative", True, -brain(), "refuse"),
        case("one voxel at 1e6", True, _with(_spike), "accept", tolerance=0.5),
        case("NaN background (ExploreASL)", False, _with(_nan_background), "accept"),
        case("grey-matter-only mask (NaN in WM)", False, _with(_gm_only), "refuse"),
        case("every other slice empty", False, _with(_every_other_slice), "refuse"),
        case("slab (top cut)", False, _with(_slab), "accept", tolerance=0.2),
        case("unmasked (noise outside)", False, _with(_unmasked), "refuse"),
        case("mL/g/min (x0.01)", False, brain() * 0.01, "refuse"),
        case("raw M0-like signal (x40)", True, brain() * 40, "refuse"),
        case("tiny voxels (0.3 mm: a 17 mm 'brain')", True, _mislabelled_voxel(0.3), "refuse", ("row",)),
        case("huge voxels (10 mm: a 560 mm 'brain')", True, _mislabelled_voxel(10.0), "refuse"),
        case("voxel size in metres", True, _units_metres, "refuse"),
        case("1 mm brain", True, _voxel(1.5, (112, 128, 104)), "accept"),
        case("anisotropic 3 x 3 x 6 mm", True, _anisotropic, "accept"),
        case("oblique (30 degrees)", True, brain(), "accept", aff=affine(rotation_deg=30)),
        case("LPS orientation (x flipped)", True, brain(), "accept", aff=np.diag([-VOXEL, -VOXEL, VOXEL, 1.0])),
        case("NaN in the affine (sform)", True, _sform_row([np.nan, 0, 0, 0]), "refuse"),
        case("zero voxel size (sform)", True, _sform_row([0.0, 0, 0, 0]), "refuse"),
        case("symlinked map", True, _symlink_map, "accept"),
    ]


# ---------------------------------------------------------------- derivatives layouts


MNI = "MNI152NLin2009cAsym"


def _aslprep(tmp: Path, subjects=("01", "02"), extra: Callable[[Path], None] | None = None) -> Path:
    root = tmp / "ds" / "derivatives" / "aslprep"
    for i, subject in enumerate(subjects):
        save_nifti(root / f"sub-{subject}" / "perf" / f"sub-{subject}_space-{MNI}_cbf.nii.gz", brain(i))
    (tmp / "ds" / "participants.tsv").write_text(
        "participant_id\tage\tsex\n" + "".join(f"sub-{s}\t7{i}\tF\n" for i, s in enumerate(subjects))
    )
    if extra:
        extra(root)
    return tmp / "ds"


def _population(tmp: Path, names=("001", "002")) -> Path:
    for i, name in enumerate(names):
        save_nifti(tmp / "study" / "Population" / f"qCBF_{name}_ASL_1.nii", _with(_nan_background, i))
    return tmp / "study"


def bids_case(make: Callable[[Path], Path], expect: str, names=("aslprep", "ExploreASL", "sub-", "qCBF"),
              rows: int | None = None, out_name: str = "out/study.csv", **options) -> Callable:  # fmt: skip
    """``build_manifest`` of the tree ``make`` builds; accepted cases must give ``rows`` rows that pass ``check``."""
    from ichor.data.bids import build_manifest

    def run(tmp: Path) -> Result:
        root = make(tmp)
        before = snapshot(root)
        out = tmp / out_name if not out_name.startswith("/") else root / out_name[1:]
        if expect == "refuse":
            result = expect_refusal(lambda: build_manifest(root, out, **options), names)
        else:

            def right(value) -> str:
                if rows is not None and len(value.rows) != rows:
                    return f"{len(value.rows)} rows, expected {rows}"
                problems = check_manifests([out], workers=0)
                return "; ".join(map(str, problems))[:160]

            result = expect_accept(lambda: build_manifest(root, out, **options), right)
        after = snapshot(root)
        if {k: v for k, v in after.items() if k in before} != before:
            return Result("input changed", "high", "a file of the derivatives was written")
        return result

    return run


def _runs(root: Path) -> None:
    for run in ("1", "2"):
        save_nifti(root / "sub-01" / "perf" / f"sub-01_run-{run}_space-{MNI}_cbf.nii.gz", brain(10 + int(run)))
    (root / "sub-01" / "perf" / f"sub-01_space-{MNI}_cbf.nii.gz").unlink()


def _spaces(root: Path) -> None:
    for subject in ("01", "02"):
        save_nifti(root / f"sub-{subject}" / "perf" / f"sub-{subject}_space-T1w_cbf.nii.gz", brain(20 + int(subject)))


def _sessions(root: Path) -> None:
    for session in ("1", "2"):
        save_nifti(root / "sub-03" / f"ses-{session}" / "perf" / f"sub-03_ses-{session}_space-{MNI}_cbf.nii.gz",
                   brain(30 + int(session)))  # fmt: skip


def _bad_sidecar(root: Path) -> None:
    (root / "sub-01" / "perf" / f"sub-01_space-{MNI}_cbf.json").write_text("{not json")


def _bom_participants(tmp: Path) -> Path:
    ds = _aslprep(tmp)
    text = (ds / "participants.tsv").read_text()
    (ds / "participants.tsv").write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode())
    return ds


def _na_participants(tmp: Path) -> Path:
    ds = _aslprep(tmp)
    (ds / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\tn/a\tn/a\nsub-02\t\tM\n")
    return ds


def _raw_bids(tmp: Path) -> Path:
    save_nifti(tmp / "ds" / "sub-01" / "perf" / "sub-01_asl.nii.gz", np.stack([brain()] * 4, -1))
    return tmp / "ds"


def _both_layouts(tmp: Path) -> Path:
    ds = _aslprep(tmp)
    for i, name in enumerate(("001", "002")):
        save_nifti(ds / "derivatives" / "ExploreASL" / "Population" / f"qCBF_{name}_ASL_1.nii", brain(i))
    return ds


def _visits_participants(tmp: Path) -> Path:
    study = _population(tmp, ("003_1", "003_2", "004_1"))
    (study / "participants.tsv").write_text("participant_id\tage\n003_1\t70\n003_2\t71\n004_1\t60\n")
    return study


def _visits(tmp: Path) -> Path:
    return _population(tmp, ("003_1", "003_2", "004_1"))


def _aslprep_timeseries_only(tmp: Path) -> Path:
    root = tmp / "ds" / "derivatives" / "aslprep"
    save_nifti(root / "sub-01" / "perf" / f"sub-01_space-{MNI}_desc-timeseries_cbf.nii.gz", np.stack([brain()] * 3, -1))
    return tmp / "ds"


def _empty(tmp: Path) -> Path:
    (tmp / "ds").mkdir()
    return tmp / "ds"


def bids_cases() -> list[Case]:
    def case(name, new, make, expect, **options):
        return Case(name, "derivatives", new, bids_case(make, expect, **options))

    return [
        case("ASLPrep, one map a subject", False, _aslprep, "accept", rows=2),
        case("ASLPrep, two runs", False, lambda t: _aslprep(t, extra=_runs), "accept", rows=3),
        case("ASLPrep, two spaces (default MNI)", True, lambda t: _aslprep(t, extra=_spaces), "accept", rows=2),
        case("ASLPrep, --space T1w", True, lambda t: _aslprep(t, extra=_spaces), "accept", rows=2, space="T1w"),
        case("ASLPrep, --space that is not there", True, _aslprep, "refuse", names=("space", "T2w"), space="T2w"),
        case("ASLPrep, sessions", True, lambda t: _aslprep(t, ("01", "02"), _sessions), "accept", rows=4),
        case(
            "ASLPrep, broken sidecar JSON",
            True,
            lambda t: _aslprep(t, extra=_bad_sidecar),
            "refuse",
            names=("cbf.json",),
        ),  # fmt: skip
        case("participants.tsv with BOM and CRLF", True, _bom_participants, "accept", rows=2),
        case("participants.tsv with n/a", True, _na_participants, "accept", rows=2),
        case("raw BIDS, no derivatives", True, _raw_bids, "refuse", names=("ASLPrep", "aslprep")),
        case("empty folder", True, _empty, "refuse", names=("ASLPrep", "aslprep")),
        case("ASLPrep and ExploreASL both present", True, _both_layouts, "refuse", names=("found both",)),
        case("ASLPrep time series only", True, _aslprep_timeseries_only, "refuse", names=("timeseries", "cbf")),
        case("ExploreASL Population", False, _population, "accept", rows=2),
        case("ExploreASL visits (_1, _2)", False, _visits, "accept", rows=3),
        case("ExploreASL visits listed as participants", False, _visits_participants, "accept", rows=3),
        case(
            "--out inside the derivatives", True, _aslprep, "accept", rows=2, out_name="/derivatives/aslprep/study.csv"
        ),  # fmt: skip
        case(
            "--out over an input map (--overwrite)",
            True,
            _aslprep,
            "refuse",
            names=("input", "cbf.nii.gz"),
            out_name=f"/derivatives/aslprep/sub-01/perf/sub-01_space-{MNI}_cbf.nii.gz",
            overwrite=True,
        ),  # fmt: skip
        case(
            "--out over participants.tsv (--overwrite)",
            True,
            _aslprep,
            "refuse",
            names=("participants.tsv", "input"),
            out_name="/participants.tsv",
            overwrite=True,
        ),  # fmt: skip
        case(
            "--out exists",
            True,
            lambda t: _aslprep(t) if (t / "out").mkdir() or (t / "out" / "study.csv").write_text("x") else None,
            "refuse",
            names=("exists",),
        ),  # fmt: skip
    ]


# ---------------------------------------------------------------- the command line


def _good_dataset(tmp: Path) -> Path:
    maps = good_maps(tmp / "maps")
    return manifest(tmp, [row("sub-00", maps[0]), row("sub-01", maps[1])])


def cli_cases() -> list[Case]:
    def case(name, new, run):
        return Case(name, "cli", new, run)

    def interrupted_from_bids(tmp: Path) -> Result:
        ds = _aslprep(tmp, tuple(f"{i:02d}" for i in range(60)))
        out = tmp / "out" / "study.csv"
        process = subprocess.Popen([*ICHOR, "manifest", "from-bids", str(ds), "--out", str(out)], cwd=tmp,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(6)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if out.exists():
            try:
                rows = read_manifests([out])
            except REFUSALS as error:
                return Result("partial output after Ctrl-C", "medium", str(error)[:160])
            if len(rows) != 60:
                return Result("partial output after Ctrl-C", "medium", f"{len(rows)} rows of 60")
        if "Traceback" in err and "KeyboardInterrupt" not in err:
            return Result("traceback", "high", err.strip().splitlines()[-1])
        return Result(OK, "", "no partial manifest")

    def interrupted_embed_scan_writes(tmp: Path) -> Result:
        out = tmp / "synth"
        process = subprocess.Popen([*ICHOR, "synth", "--out", str(out), "--studies", "2", "--subjects-per-study", "40", "--workers", "1"],
                                   cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(12)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
        broken = []
        for path in out.rglob("*.nii.gz"):
            try:
                np.asanyarray(nib.load(path).dataobj)
            except Exception:
                broken.append(path.name)
        for path in out.rglob("*.csv"):
            try:
                pd.read_csv(path)
            except Exception:
                broken.append(path.name)
        if broken:
            return Result("partial output after Ctrl-C", "medium", ", ".join(broken[:3]))
        return Result(OK, "", "every file left is whole")

    def check(args: Callable[[Path], list[str]], rc: int = 1, names=()) -> Callable[[Path], Result]:
        return lambda tmp: cli(args(tmp), tmp, expect_rc=rc, names=names)

    return [
        case(
            "manifest check, missing file",
            False,
            check(lambda t: ["manifest", "check", "nowhere.csv"], names=("nowhere.csv",)),
        ),  # fmt: skip
        case(
            "manifest check, good manifest",
            True,
            check(lambda t: ["manifest", "check", str(_good_dataset(t)), "--quiet", "--workers", "0"], rc=0),
        ),  # fmt: skip
        case(
            "manifest check, path with spaces",
            True,
            check(
                lambda t: ["manifest", "check", str(_good_dataset(t / "a folder")), "--quiet", "--workers", "0"], rc=0
            ),
        ),  # fmt: skip
        case(
            "manifest check, a NIfTI instead of a CSV",
            True,
            check(lambda t: ["manifest", "check", good_maps(t)[0]], names=("sub-00_cbf.nii.gz",)),
        ),  # fmt: skip
        case(
            "fit, missing config", False, check(lambda t: ["fit", "--config", "nowhere.yaml"], names=("nowhere.yaml",))
        ),  # fmt: skip
        case(
            "fit, manifest missing",
            False,
            check(
                lambda t: [
                    "fit",
                    "--config",
                    str(Path(__file__).parents[1] / "lightning_configs" / "common" / "demo.yaml"),
                    "--config",
                    str(Path(__file__).parents[1] / "lightning_configs" / "pretrain_demo.yaml"),
                    "--data.init_args.manifests=[nowhere.csv]",
                    "--trainer.accelerator=cpu",
                ],
                names=("nowhere.csv",),
            ),
        ),  # fmt: skip
        case(
            "embed, encoder missing",
            True,
            check(
                lambda t: [
                    "embed",
                    "--encoder",
                    "nowhere",
                    "--manifest",
                    str(_good_dataset(t)),
                    "--out",
                    str(t / "e.csv"),
                ],
                names=("nowhere",),
            ),
        ),  # fmt: skip
        case(
            "embed --out over its manifest",
            False,
            check(
                lambda t: [
                    "embed",
                    "--encoder",
                    "nowhere",
                    "--manifest",
                    str(_good_dataset(t)),
                    "--out",
                    str(t / "study.csv"),
                ],
                names=("study.csv",),
            ),
        ),  # fmt: skip
        case(
            "from-bids, not a folder",
            True,
            check(lambda t: ["manifest", "from-bids", str(t / "none"), "--out", str(t / "m.csv")], names=("none",)),
        ),  # fmt: skip
        case("from-bids, Ctrl-C mid-run", True, interrupted_from_bids),
        case("synth, Ctrl-C mid-write", True, interrupted_embed_scan_writes),
        case(
            "benchmark, missing config",
            True,
            check(lambda t: ["benchmark", "--config", "nowhere.yaml", "--out", str(t / "b")], names=("nowhere.yaml",)),
        ),  # fmt: skip
    ]


# ---------------------------------------------------------------- benchmarks (fail fast)


def benchmark_case(change: Callable[[dict, dict], None], names: tuple[str, ...]) -> Callable[[Path], Result]:
    """A small benchmark config with one fault; it must be refused before pre-training, naming it."""

    def run(tmp: Path) -> Result:
        from ichor.benchmark import load_config, run_benchmark

        repo = Path(__file__).resolve().parents[1]
        demo = [str(repo / "lightning_configs" / "common" / "demo.yaml")]
        cohorts = {name: _cohort(tmp / name, name, seed) for seed, name in enumerate(("lab", "pool", "sel"))}
        task = {"name": "AD", "target": "diagnosis", "target_values": ["CN", "AD"], "head": "classification",
                "metric": "auroc", "config": [*demo, str(repo / "lightning_configs" / "finetune_diagnosis.yaml")]}  # fmt: skip
        config = {
            "pretrain": {"mae": {"config": [*demo, str(repo / "lightning_configs" / "pretrain_demo.yaml")]}},
            "tasks": [task],
            "selection": {"manifests": cohorts["sel"]},
            "pretrain_overrides": {"data": {"init_args": {"manifests": cohorts["pool"]}}},
            "overrides": {"data": {"init_args": {"manifests": cohorts["lab"], "cache_dir": str(tmp / "cache")}}},
        }
        change(config, cohorts)
        import ichor.benchmark.run as run_module

        def no_pretraining(*args, **kwargs):
            raise RuntimeError("pre-training started before the fault was found")

        saved, run_module.pretrain = run_module.pretrain, no_pretraining
        try:
            return expect_refusal(
                lambda: run_benchmark(
                    load_config(repo / "lightning_configs" / "benchmark_demo.yaml", config), tmp / "o"
                ),
                names,
            )
        finally:
            run_module.pretrain = saved

    return run


def _cohort(root: Path, prefix: str, seed: int) -> list[str]:
    manifests = []
    for study in (1, 2):
        rows = []
        for i in range(4):
            name = f"{prefix}{study}{i}"
            path = save_nifti(root / f"{name}.nii.gz", brain(seed * 100 + study * 10 + i))
            rows.append(row(name, path.name, f"{prefix}-{study}", diagnosis=("CN", "AD")[i % 2]))
        manifests.append(str(manifest(root, rows, f"study-{study}.csv")))
    return manifests


def _leak(config: dict, cohorts: dict) -> None:
    table = pd.read_csv(cohorts["lab"][0])
    pool = pd.read_csv(cohorts["pool"][0])
    pool = pd.concat([pool, table.iloc[:1].assign(path=str(Path(cohorts["lab"][0]).parent / table.iloc[0]["path"]),
                                                  study=pool.iloc[0]["study"])])  # fmt: skip
    pool.to_csv(cohorts["pool"][0], index=False)


def benchmark_cases() -> list[Case]:
    def case(name, new, change, names):
        return Case(name, "benchmark", new, benchmark_case(change, names))

    def task(**changes):
        return lambda config, cohorts: config["tasks"][0].update(changes)

    return [
        case("misspelt target", False, task(target="diagnosys"), ("diagnosys",)),
        case("target_values matching nothing", False, task(target_values=["CN", "Alzheimer"]), ("Alzheimer",)),
        case("pool shares a labelled subject", False, _leak, ("pre-training pool", "lab10")),
    ]


# ---------------------------------------------------------------- running


def all_cases() -> list[Case]:
    return manifest_cases() + nifti_cases() + bids_cases() + cli_cases() + benchmark_cases()


def run_case(case: Case) -> Result:
    with tempfile.TemporaryDirectory(prefix="ichor-probe-") as folder:
        tmp = Path(folder)
        quiet = io.StringIO()
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                result = case.run(tmp)
        except Exception as error:
            return Result("probe error", "high", f"{type(error).__name__}: {error}"[:160])
        if result.outcome == "usable input refused" and case.name in EXPECT_EITHER:
            return Result(OK, "", "refused (either is fine): " + result.detail)
        return result


# Cases where a clear refusal and a correct acceptance are both right.
EXPECT_EITHER = {"label with ../ in it", "NIfTI-2", "1 mm brain", "uncompressed bytes named .nii.gz", "float16 map"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the cases whose name or group contains this text")
    parser.add_argument("--csv", help="write the table here")
    args = parser.parse_args()
    cases = [c for c in all_cases() if not args.only or args.only.lower() in (c.name + " " + c.group).lower()]
    started = time.perf_counter()
    records = []
    for case in cases:
        t0 = time.perf_counter()
        result = run_case(case)
        records.append(
            {
                "group": case.group,
                "case": case.name,
                "new": case.new,
                "outcome": result.outcome,
                "severity": result.severity,
                "seconds": round(time.perf_counter() - t0, 1),
                "detail": result.detail,
            }  # fmt: skip
        )
        mark = "ok" if result.outcome == OK else f"{result.severity.upper()}: {result.outcome}"
        print(f"{case.group:11s} {case.name[:48]:48s} {mark:40s} {result.detail[:110]}", flush=True)
    table = pd.DataFrame(records)
    if args.csv:
        table.to_csv(args.csv, index=False)
    failures = table.loc[table["outcome"] != OK]
    print(f"\n{len(table)} cases ({int(table['new'].sum())} new) in {time.perf_counter() - started:.0f} s; "
          f"{len(failures)} failures: " + ", ".join(f"{(failures['severity'] == s).sum()} {s}"
                                                    for s in ("high", "medium", "low")))  # fmt: skip
    for outcome, count in failures["outcome"].value_counts().items():
        print(f"  {count} x {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
