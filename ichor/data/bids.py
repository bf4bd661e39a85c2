"""Build a manifest from ASLPrep or ExploreASL derivatives, without touching them.

ASLPrep (BIDS derivatives): ``sub-X/[ses-Y/]perf/sub-X[_ses-Y][_run-R]_..._[space-Z_][desc-D_]cbf.nii.gz``,
QC in ``*_desc-qualitycontrol_cbf.tsv`` (column ``qei_cbf``, ``qei_cbf_<desc>`` per variant),
acquisition metadata in the JSON sidecars, demographics in ``participants.tsv`` and per visit in
``sub-X_sessions.tsv``. Each run is its own scan (session ``<ses>run<R>``); any other entity
that differs between a scan's maps (space, desc, acq, res, ...) is a choice the user makes
(``--space``, ``--desc``, ``--entity key=value``). ExploreASL:
``Population/qCBF_<subject>[_<visit>]_ASL_<n>.nii[.gz]``, where a name that participants.tsv
lists is a person, not a visit. The layout is detected from the folder.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ichor.data.scans import AFFINE_ATOL_MM
from ichor.data.schema import ADDED_COLUMNS, PATH_COLUMNS, REQUIRED_COLUMNS, TISSUE_COLUMNS, manifest_columns
from ichor.io import write_csv

# ASLPrep's default output space (docs/outputs.rst); used when a scan exists in several spaces.
DEFAULT_SPACE = "MNI152NLin2009cAsym"
# Label for maps without a space- entity (ASL reference space in ASLPrep).
NATIVE_SPACE = "native"
# ASLPrep >= 0.6 writes the mean CBF as plain `_cbf`; older releases wrote `_desc-mean_cbf`.
MEAN_DESCS = (None, "mean")
# Entities that make a map another scan of the subject (one row each); any other entity is a variant to choose.
SCAN_ENTITIES = ("sub", "ses", "run")
# Entities of an output's rendering, not of the acquisition: QC tables are shared across them.
RENDERING_ENTITIES = ("space", "desc", "res", "den")
# Folder names that are pipeline or container names, not the study's name.
NOT_STUDY_NAMES = {"aslprep", "exploreasl", "derivatives", "population"}

# JSON sidecar field -> manifest column (ASL-BIDS names). PulseSequenceType ("3D_GRASE")
# says more about the readout than MRAcquisitionType ("3D"), so it wins when both exist.
SIDECAR_FIELDS = {
    "ArterialSpinLabelingType": "asl_type",
    "PostLabelingDelay": "pld",
    "MagneticFieldStrength": "field_strength",
    "Manufacturer": "vendor",
    "MRAcquisitionType": "readout",
    "PulseSequenceType": "readout",
}

_NIFTI = re.compile(r"\.nii(\.gz)?$")
# qCBF_<subject>[_<visit>]_ASL_<run>: ExploreASL appends a one-digit visit number to a longitudinal
# subject's ID (sub-003_1, sub-003_2); longer or zero-padded digit groups belong to the ID (HC_01,
# ADNI's 002_S_0413).
_EXPLOREASL = re.compile(r"^qCBF_(?P<subject>.+?)(?:_(?P<visit>[1-9]))?_ASL_(?P<run>\d+)\.nii(\.gz)?$")
_ASLPREP_GLOB = "sub-*_cbf.nii*"
_ASLPREP_DIRS = ("", "derivatives/aslprep")
_EXPLOREASL_DIRS = ("Population", "derivatives/ExploreASL/Population", "ExploreASL/Population")


class DerivativesError(ValueError):
    """The derivatives cannot be turned into a manifest; the message says why and what to do."""


@dataclass
class BuildResult:
    """What ``build_manifest`` did: the layout found, the rows written and notes for the user."""

    layout: str
    source: Path
    rows: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def build_manifest(
    root: str | PathLike,
    out: str | PathLike,
    study: str | None = None,
    desc: str | None = None,
    space: str | None = None,
    overwrite: bool = False,
    entities: dict[str, str] | None = None,
) -> BuildResult:
    """Write a manifest for the derivatives under ``root`` to ``out``; returns what was done.

    ``desc`` picks an ASLPrep CBF variant (``score``, ``scrub``, ``basil``, ...; default the
    mean map); ``space`` picks an output space (default: the only one, else
    MNI152NLin2009cAsym); ``entities`` keeps the maps with these BIDS entity values
    (``{"acq": "pcasl", "res": "2"}``; ``""`` keeps the maps without that entity).
    ``study`` defaults to the dataset's folder name.
    """
    root, out = Path(root), Path(out)
    if out.suffix.lower() != ".csv":
        raise DerivativesError(f"{out}: a manifest is a .csv file (it is never written over another kind of file)")
    if out.exists() and not overwrite:
        raise DerivativesError(f"{out} exists; pass --overwrite to replace it")
    layout, source = detect_layout(root)
    participants = find_participants(root, source)
    if layout == "aslprep":
        rows, notes = aslprep_rows(source, desc=desc, space=space, entities=entities)
    else:
        if desc or space or entities:
            raise DerivativesError("--desc, --space and --entity apply to ASLPrep derivatives only")
        rows, notes = exploreasl_rows(source, participant_ids(participants) if participants else set())
    rows.insert(2, "study", study or study_name(root))
    if participants is not None:
        rows, merge_notes = merge_participants(rows, participants)
        notes += merge_notes
    rows, session_notes = merge_sessions(rows, metadata_folders(root, source))
    notes += session_notes
    rows = _order_columns(_fold_runs(rows))
    write_manifest(rows, out)
    return BuildResult(layout, source, rows, notes)


def detect_layout(root: Path) -> tuple[str, Path]:
    """("aslprep" | "exploreasl", folder holding the derivatives) for a dataset or derivatives folder."""
    if not root.is_dir():
        raise DerivativesError(f"{root} is not a folder")
    found = [("exploreasl", root / d) for d in _EXPLOREASL_DIRS if _exploreasl_files(root / d)]
    found += [("aslprep", root / d) for d in _ASLPREP_DIRS if _aslprep_files(root / d)]
    if not found:
        searched = [f"{root / d}/sub-*/**/{_ASLPREP_GLOB} (ASLPrep)" for d in _ASLPREP_DIRS]
        searched += [f"{root / d}/qCBF_<subject>_ASL_<n>.nii[.gz] (ExploreASL)" for d in _EXPLOREASL_DIRS]
        raise DerivativesError("no ASLPrep or ExploreASL CBF maps found; searched:\n  " + "\n  ".join(searched))
    if len({layout for layout, _ in found}) > 1:
        raise DerivativesError(
            "found both "
            + " and ".join(f"{layout} ({folder})" for layout, folder in found)
            + "; pass the folder of the one you want"
        )
    return found[0]


def parse_entities(name: str) -> tuple[dict[str, str], str] | None:
    """BIDS entities and suffix of a file name, or None when it is not BIDS-shaped."""
    parts = _NIFTI.sub("", name).removesuffix(".tsv").removesuffix(".json").split("_")
    entities = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not value:
            return None
        entities[key] = value
    return (entities, parts[-1]) if "sub" in entities else None


def aslprep_rows(
    source: Path, desc: str | None = None, space: str | None = None, entities: dict[str, str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """One row per scan (subject, session, run) of ASLPrep CBF maps, with sidecar, QC and tissue-map columns.

    A run is recorded in a temporary ``run`` column (``build_manifest`` folds it into the session,
    after merging sessions.tsv). Maps of one scan that still differ after ``desc``, ``space`` and
    ``entities`` are refused, listing each differing entity's values and the flag that picks one.
    """
    selection = dict(entities or {})
    maps = _select(
        [(parsed[0], path) for path in _aslprep_files(source) if (parsed := parse_entities(path.name))], selection
    )
    groups: dict[tuple[str, str, str], list[tuple[dict[str, str], Path]]] = defaultdict(list)
    for found, path in maps:
        run = "" if "run" in selection else found.get("run", "")
        groups[found["sub"], found.get("ses", ""), run].append((found, path))
    qc = _qc_table(source)
    notes: list[str] = []
    ambiguous: list[str] = []
    differing: dict[str, set[str]] = defaultdict(set)
    several_spaces: dict[tuple[str, str], int] = defaultdict(int)
    rows = []
    for (subject, session, run), candidates in sorted(groups.items()):
        scan = f"sub-{subject}" + (f" ses-{session}" if session else "") + (f" run-{run}" if run else "")
        wanted = [c for c in candidates if c[0].get("desc") == desc] if desc else _mean_maps(candidates)
        if not wanted:
            found = sorted({c[0].get("desc", "(none)") for c in candidates})
            notes.append(
                f"skipped {scan}: no {'desc-' + desc if desc else 'mean'} CBF map (found desc: {', '.join(found)})"
            )
            continue
        spaces = sorted({e.get("space", NATIVE_SPACE) for e, _ in wanted})
        chosen = space or (spaces[0] if len(spaces) == 1 else DEFAULT_SPACE if DEFAULT_SPACE in spaces else None)
        if chosen is not None:
            if len(spaces) > 1 and not space:
                several_spaces[(chosen, ", ".join(spaces))] += 1
            wanted = [c for c in wanted if c[0].get("space", NATIVE_SPACE) == chosen]
            if not wanted:
                notes.append(f"skipped {scan}: no CBF map in space {chosen} (found: {', '.join(spaces)})")
                continue
        if len(wanted) > 1:
            ambiguous.append(scan)
            for key in {key for e, _ in wanted for key in e} - set(SCAN_ENTITIES):
                values = {e.get(key, NATIVE_SPACE if key == "space" else "") for e, _ in wanted}
                if len(values) > 1:
                    differing[key] |= values
            continue
        found, path = wanted[0]
        row = {"subject": subject, "session": session, "run": run, "path": str(path.resolve())}
        row.update(read_sidecar(path))
        row.update(_qc_for(qc, found, desc))
        row.update(_tissue_maps(source, found, path))
        rows.append(row)
    if ambiguous:
        raise DerivativesError(_ambiguity(ambiguous, differing))
    for (chosen, spaces), count in several_spaces.items():
        notes.append(f"{count} scan(s) exist in several spaces ({spaces}); used {chosen} (choose with --space)")
    if not rows:
        raise DerivativesError(f"no usable CBF map in {source}: " + "; ".join(notes))
    return pd.DataFrame(rows), notes


def _select(maps: list[tuple[dict[str, str], Path]], selection: dict[str, str]) -> list[tuple[dict[str, str], Path]]:
    """The maps whose entities have the selected values; a selection that keeps nothing says what there is."""
    for key, value in selection.items():
        values = sorted({e.get(key, "") for e, _ in maps})
        kept = [(e, p) for e, p in maps if e.get(key, "") == value]
        if not kept:
            if values == [""]:
                keys = sorted({k for e, _ in maps for k in e} - {"sub"})
                raise DerivativesError(
                    f"--entity {key}={value}: no CBF map has a {key}- entity (entities found: {', '.join(keys)})"
                )
            found = ", ".join(v or "(none)" for v in values)
            raise DerivativesError(f"--entity {key}={value}: no CBF map has {key}-{value} (found {key}: {found})")
        maps = kept
    return maps


def _ambiguity(scans: list[str], differing: dict[str, set[str]]) -> str:
    """One line: which scans have several maps, and per differing entity its values and the flag for each."""
    choices = []
    for key in sorted(differing):
        values = sorted(differing[key])
        flags = " or ".join(_flag(key, value) for value in values)
        choices.append(f"{key} ({', '.join(value or '(none)' for value in values)}: {flags})")
    listed = ", ".join(scans[:5]) + (f" and {len(scans) - 5} more" if len(scans) > 5 else "")
    return (
        f"cannot choose one CBF map for {len(scans)} scan(s) ({listed}): their maps differ in "
        + "; ".join(choices)
        + "; a manifest row is one map (each run is its own row)"
    )


def _flag(key: str, value: str) -> str:
    """The ``ichor manifest from-bids`` option that keeps the maps with entity ``key`` = ``value``."""
    if key == "space":
        return f"--space {value}"
    if key == "desc" and value:
        return f"--desc {value}"
    return f"--entity {key}={value}"


def _fold_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """Put an ASLPrep run into the session label (``<ses>run<R>``), so that (subject, session) names one scan."""
    if "run" not in rows.columns:
        return rows
    runs = rows.pop("run").fillna("").astype(str)
    rows["session"] = [f"{session}run{run}" if run else session for session, run in zip(rows["session"], runs)]
    return rows


def exploreasl_rows(population: Path, participants: Collection[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """One row per ExploreASL qCBF map: the visit (else the ASL run) becomes the session, so that one
    person's visits stay one subject and are never split apart.

    ``participants`` (the labels participants.tsv lists, without ``sub-``) decides a name ending in
    ``_<digit>``: one listed as a participant (``003_1``) is that person, not visit 1 of ``003``.
    """
    _refuse_prefixed(population)
    rows = []
    visits = defaultdict(set)
    for path in _exploreasl_files(population):
        match = _EXPLOREASL.match(path.name)
        subject, visit, run = match["subject"].removeprefix("sub-"), match["visit"], match["run"]
        if visit is not None and f"{subject}_{visit}" in participants:
            subject, visit = f"{subject}_{visit}", None
        session = run if visit is None else _visit_session(visit, run)
        if visit is not None and subject not in participants:
            visits[match["subject"]].add(visit)
        row = {"subject": subject, "session": session, "path": str(path.resolve())}
        row.update(read_sidecar(path))
        rows.append(row)
    several = sorted(subject for subject, found in visits.items() if len(found) > 1)
    notes = []
    if several:
        notes.append(
            f"read as visits of one subject (suffix _<digit>): {', '.join(several[:10])}"
            + (f" and {len(several) - 10} more" if len(several) > 10 else "")
            + "; list them in participants.tsv (participant_id sub-<name>_<digit>) if these are different people"
        )
    return pd.DataFrame(rows), notes


def participant_ids(participants: Path) -> set[str]:
    """The subject labels (``participant_id`` without ``sub-``) that a participants.tsv lists."""
    table = pd.read_csv(participants, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns:
        return set()
    return {label.strip().removeprefix("sub-") for label in table["participant_id"]}


def _refuse_prefixed(population: Path) -> None:
    """Refuse, by file name, qCBF maps whose "subject" is another subject behind an unknown prefix.

    ExploreASL variants and user copies (``qCBF_untreated_sub-001_ASL_1``, ``qCBF_old_sub-001_ASL_1``)
    match the file pattern, so read naively they become extra subjects with one person's map twice.
    A subject is prefixed when it ends in ``_<another subject>`` or holds ``_sub-`` after its start.
    """
    subjects = {path: _EXPLOREASL.match(path.name)["subject"] for path in _exploreasl_files(population)}
    known = set(subjects.values())
    prefixed = sorted(
        path.name
        for path, subject in subjects.items()
        if "_sub-" in subject or any(subject.endswith(f"_{other}") for other in known if other != subject)
    )
    if prefixed:
        raise DerivativesError(
            f"{population}: {len(prefixed)} qCBF map(s) with an unknown prefix before the subject ID: "
            + ", ".join(prefixed[:10])
            + (f" and {len(prefixed) - 10} more" if len(prefixed) > 10 else "")
            + "; ICHOR reads qCBF_<subject>[_<visit>]_ASL_<run>.nii[.gz]: move these files out of the folder"
        )


def _visit_session(visit: str, run: str) -> str:
    """Session label of visit ``visit``, ASL run ``run``: the visit alone for the first run."""
    return visit if run == "1" else f"{visit}run{run}"


def read_sidecar(image: Path) -> dict[str, object]:
    """Manifest columns from the image's JSON sidecar (same name, .json), if there is one."""
    sidecar = image.with_name(_NIFTI.sub("", image.name) + ".json")
    if not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        raise DerivativesError(f"{sidecar}: unreadable JSON sidecar ({error})") from error
    columns = {}
    for key, column in SIDECAR_FIELDS.items():
        value = meta.get(key)
        if key == "PostLabelingDelay" and isinstance(value, list):
            # multi-delay (or one value per volume): a single number only when they agree
            value = value[0] if value and len(set(value)) == 1 else None
        if value is not None and value != "":
            columns[column] = value
    return columns


def metadata_folders(root: Path, source: Path) -> list[Path]:
    """Where participant and session tables may be: the derivatives, and the raw dataset above them."""
    folders = [root, source]
    if source.name == "Population":  # ExploreASL keeps participant data beside Population/
        folders.append(source.parent)
    for folder in (root, source):
        if folder.parent.name == "derivatives":
            folders.append(folder.parent.parent)
    return list(dict.fromkeys(folders))


def find_participants(root: Path, source: Path) -> Path | None:
    """participants.tsv of the derivatives or, for ``<bids>/derivatives/<pipeline>``, of the raw dataset."""
    for folder in metadata_folders(root, source):
        for name in ("participants.tsv", "Participants.tsv"):
            if (folder / name).is_file():
                return folder / name
    return None


def merge_sessions(rows: pd.DataFrame, folders: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Add each subject's ``sub-X/sub-X_sessions.tsv`` columns to its rows, matching ``session_id`` ses-Y to session Y.

    Session values describe the person at that visit (e.g. age), so they win over participants.tsv.
    """
    tables, found, skipped = [], [], []
    for subject in rows["subject"].unique():
        path = next((f / f"sub-{subject}" / f"sub-{subject}_sessions.tsv" for f in folders
                     if (f / f"sub-{subject}" / f"sub-{subject}_sessions.tsv").is_file()), None)  # fmt: skip
        if path is None:
            continue
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False).replace("n/a", "")
        if "session_id" not in table.columns:
            skipped.append(f"{path}: no session_id column; not merged")
            continue
        table["session"] = table.pop("session_id").str.removeprefix("ses-")
        tables.append(table.assign(subject=subject))
        found.append(path)
    if not tables:
        return rows, skipped
    table = pd.concat(tables, ignore_index=True).drop_duplicates(["subject", "session"])
    reserved = {*REQUIRED_COLUMNS, *PATH_COLUMNS, *ADDED_COLUMNS}
    table = table.drop(columns=[c for c in table.columns if c in reserved and c != "subject"])
    overlap = [c for c in table.columns if c not in ("subject", "session") and c in rows.columns]
    merged = rows.merge(table, on=["subject", "session"], how="left", suffixes=("", "_sessions"))
    for column in overlap:
        per_session = merged.pop(column + "_sessions")
        merged[column] = per_session.where(per_session.notna() & (per_session != ""), merged[column])
    columns = len(table.columns) - 2
    note = f"merged the sessions.tsv of {len(found)} subject(s) ({columns} column(s); they win over participants.tsv)"
    return merged, [note, *skipped]


def merge_participants(rows: pd.DataFrame, participants: Path) -> tuple[pd.DataFrame, list[str]]:
    """Add participants.tsv columns to the rows, matching ``participant_id`` sub-X to subject X."""
    table = pd.read_csv(participants, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns:
        return rows, [f"{participants}: no participant_id column; not merged"]
    table = table.replace("n/a", "")
    reserved = {*REQUIRED_COLUMNS, *PATH_COLUMNS, "session", *ADDED_COLUMNS}
    skipped = [c for c in table.columns if c in reserved]
    table = table.drop(columns=skipped)
    table["subject"] = table.pop("participant_id").str.removeprefix("sub-")
    table = table.drop_duplicates("subject")
    # participants.tsv describes the people; a column already filled from a sidecar keeps its value
    overlap = [c for c in table.columns if c != "subject" and c in rows.columns]
    merged = rows.merge(table, on="subject", how="left", suffixes=("", "_participants"))
    for column in overlap:
        merged[column] = merged[column].where(merged[column].notna(), merged.pop(column + "_participants"))
    notes = [f"merged {participants} ({len(table.columns) - 1} column(s))"]
    unmatched = int(merged["subject"].isin(table["subject"]).eq(False).sum())
    if unmatched:
        notes.append(f"{unmatched} row(s) have no entry in {participants.name}")
    if skipped:
        notes.append(f"ignored participants.tsv column(s) {', '.join(skipped)} (reserved manifest columns)")
    return merged, notes


def study_name(root: Path) -> str:
    """The dataset's folder name, skipping pipeline folders (ds001/derivatives/aslprep -> ds001)."""
    folder = root.resolve()
    while folder.name.lower() in NOT_STUDY_NAMES and folder.parent != folder:
        folder = folder.parent
    return folder.name


def write_manifest(rows: pd.DataFrame, out: Path) -> None:
    """Write rows atomically, with path columns relative to the manifest's folder."""
    folder = out.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    table = rows.copy()
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [os.path.relpath(v, folder) if isinstance(v, str) and v else "" for v in table[column]]
    write_csv(table, out)


def _aslprep_files(folder: Path) -> list[Path]:
    """CBF maps under the subject folders (not derivatives/ or sourcedata/ below the root)."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for subject in folder.glob("sub-*")
        if subject.is_dir()
        for path in subject.rglob(_ASLPREP_GLOB)
        if _NIFTI.search(path.name) and path.is_file()
    )


def _exploreasl_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("qCBF_*") if _EXPLOREASL.match(path.name) and path.is_file())


def _mean_maps(candidates: list[tuple[dict[str, str], Path]]) -> list[tuple[dict[str, str], Path]]:
    """The mean CBF maps: plain ``_cbf`` if any, else ``_desc-mean_cbf`` (older ASLPrep)."""
    for desc in MEAN_DESCS:
        chosen = [c for c in candidates if c[0].get("desc") == desc]
        if chosen:
            return chosen
    return []


def _scan_key(entities: dict[str, str]) -> tuple:
    """Entities that identify the acquisition (everything but how an output is rendered)."""
    return tuple(sorted((k, v) for k, v in entities.items() if k not in RENDERING_ENTITIES))


def _qc_table(source: Path) -> dict[tuple, list[tuple[dict[str, str], Path]]]:
    table = defaultdict(list)
    for path in source.glob("sub-*/**/sub-*_desc-qualitycontrol_cbf.tsv"):
        parsed = parse_entities(path.name)
        if parsed:
            table[_scan_key(parsed[0])].append((parsed[0], path))
    return table


def _qc_for(qc: dict, entities: dict[str, str], desc: str | None = None) -> dict[str, float]:
    """The QEI of the chosen map from the scan's QC file (the one in the same space when there are several).

    ASLPrep's QC table has one column per CBF variant: ``qei_cbf`` for the mean map,
    ``qei_cbf_<desc>`` for the others (``qei_cbf_score``, ...). A variant without its own column
    gets no QEI rather than the mean map's.
    """
    column = "qei_cbf" if desc in MEAN_DESCS else f"qei_cbf_{desc}"
    matches = sorted(qc.get(_scan_key(entities), []), key=lambda m: m[0].get("space") != entities.get("space"))
    for _, path in matches:
        table = pd.read_csv(path, sep="\t")
        if column in table.columns and len(table):
            return {"qei_cbf": float(table[column].iloc[0])}
    return {}


def _tissue_maps(source: Path, entities: dict[str, str], cbf: Path) -> dict[str, str]:
    """gm/wm/csf from ``label-{GM,WM,CSF}_probseg`` maps of the same subject on the CBF's grid.

    Anatomical maps without a space- entity are in T1w space; only maps whose header grid
    equals the CBF map's are used, since the QEI needs them voxel-aligned.
    """
    space = entities.get("space")
    spaces = {space, None} if space in (None, "T1w") else {space}
    reference = nib.load(cbf)
    found = {}
    for column in TISSUE_COLUMNS:
        pattern = f"sub-{entities['sub']}_*label-{column.upper()}_probseg.nii*"
        for path in sorted(source.glob(f"sub-{entities['sub']}/**/{pattern}")):
            other = (parse_entities(path.name) or ({}, ""))[0]
            if other.get("ses", entities.get("ses")) != entities.get("ses") or other.get("space") not in spaces:
                continue
            image = nib.load(path)
            if image.shape[:3] == reference.shape[:3] and np.allclose(
                image.affine, reference.affine, atol=AFFINE_ATOL_MM
            ):
                found[column] = str(path.resolve())
                break
    return found


def _order_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """The schema's columns first, in its order, then the labels; drop all-empty columns."""
    rows = rows.loc[:, [c for c in rows.columns if rows[c].map(_has_value).any()]]
    return rows[manifest_columns(rows.columns)]


def _has_value(value: object) -> bool:
    return value is not None and value != "" and not (isinstance(value, float) and np.isnan(value))
