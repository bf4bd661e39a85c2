"""Write a synthetic dataset: per-scan NIfTI maps and sidecars, per-study manifests, dataset description.

Each scan depends only on its plan, so the bytes written do not depend on ``workers``; the layout is in
docs/reference/synthetic-data.md.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from os import PathLike
from pathlib import Path

import numpy as np
from tqdm import tqdm

import ichor
from ichor.data.schema import COLUMN_NAMES
from ichor.data.workers import single_threaded
from ichor.io import write_text
from ichor.synth.output import keep_mantissa_bits, save_nifti_gz, write_json
from ichor.synth.plan import ScanPlan, StudyPlan, SynthOptions, plan_dataset
from ichor.synth.protocols import MNI_SPACE
from ichor.synth.rating import RATING_LEVELS, rating_level
from ichor.synth.render import render_scan, warm_caches

# The generator's ground truth of each scan, written after the schema's columns: labels for downstream tasks.
LABEL_COLUMNS = (
    "diagnosis",
    "att_severity",
    "labelfail_severity",
    "motion_severity",
    "dropout_severity",
    "space",
    "disease_stage",
    "rating",
)
MANIFEST_COLUMNS = (*COLUMN_NAMES, *LABEL_COLUMNS)  # the schema's order: its columns, then labels
TISSUES = ("GM", "WM", "CSF")
CBF_MANTISSA_BITS = 12
NIFTI_SCANNER, NIFTI_MNI = 1, 4  # qform/sform codes
GENERATOR_NAME = "ichor synth"  # written into dataset_description.json; marks folders this generator owns


def scan_files(plan: ScanPlan) -> dict[str, str]:
    """Paths of a scan's files relative to its study folder (keys: path, json, gm, wm, csf)."""
    stem = f"sub-{plan.label}/sub-{plan.label}"
    files = {"path": f"{stem}_cbf.nii.gz", "json": f"{stem}_cbf.json"}
    files.update({t.lower(): f"{stem}_label-{t}_probseg.nii.gz" for t in TISSUES})
    return files


def sidecar(plan: ScanPlan) -> dict:
    """BIDS-like ASL sidecar, plus the generator's ground truth for this scan."""
    p = plan.protocol
    meta = {
        "ArterialSpinLabelingType": p.asl_type,
        "PostLabelingDelay": p.pld,
        "LabelingDuration": p.labelling_duration,
        "BackgroundSuppression": p.background_suppression,
        "MRAcquisitionType": p.mr_acquisition_type,
        "PulseSequenceType": p.pulse_sequence,
        "Readout": p.readout,
        "Manufacturer": p.vendor,
        "MagneticFieldStrength": p.field_strength,
        "M0Type": "Separate",
        "Units": "mL/100 g/min",
        "AcquisitionVoxelSize": list(p.acq_voxel_mm),
        "EffectiveResolution": list(p.psf_fwhm_mm),
        "Space": p.space,
        "SyntheticGroundTruth": {
            "study": plan.study,
            "site": plan.site,
            "subject": plan.label,
            "session": plan.session,
            **plan.subject.as_dict(),
            "severity": plan.artefacts.as_dict(),
            "quality": plan.quality,
            "rating": plan.rating,
            "rating_level": RATING_LEVELS[rating_level(plan.quality)],
            "head_rotation_deg": list(plan.rotation_deg),
            "head_translation_mm": list(plan.translation_mm),
            "site_scale": round(p.scale, 4),
        },
    }
    if p.asl_type == "PASL":
        meta.update(BolusCutOffFlag=True, BolusCutOffDelayTime=p.labelling_duration, BolusCutOffTechnique="Q2TIPS")
    return meta


def manifest_rows(study: StudyPlan, prefix: str = "") -> list[dict[str, str]]:
    """Manifest rows with fixed float formatting; ``prefix`` is prepended to every file path."""
    rows = []
    for plan in study.scans:
        p, s, a, files = plan.protocol, plan.subject, plan.artefacts, scan_files(plan)
        rows.append(
            {
                "subject": plan.label,
                "session": plan.session,
                "path": prefix + files["path"],
                "study": plan.study,
                "site": plan.site,
                "vendor": p.vendor,
                "asl_type": p.asl_type,
                "readout": p.readout,
                "field_strength": f"{p.field_strength:.1f}",
                "pld": f"{p.pld:.3f}",
                "age": f"{s.age:.1f}",
                "sex": s.sex,
                "diagnosis": s.diagnosis,
                "att_severity": f"{a.att:.3f}",
                "labelfail_severity": f"{a.labelfail:.3f}",
                "motion_severity": f"{a.motion:.3f}",
                "dropout_severity": f"{a.dropout:.3f}",
                "space": p.space,
                "gm": prefix + files["gm"],
                "wm": prefix + files["wm"],
                "csf": prefix + files["csf"],
                "disease_stage": f"{s.stage:.3f}",
                "rating": f"{plan.rating:.4f}",
            }
        )
    return rows


def manifest_text(study: StudyPlan, prefix: str = "") -> str:
    """The manifest CSV of a study, as written (paths relative to where ``prefix`` leads)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(manifest_rows(study, prefix))
    return buffer.getvalue()


def _relative_prefix(study_dir: Path, manifest_dir: Path) -> str:
    return Path(os.path.relpath(study_dir.resolve(), manifest_dir.resolve())).as_posix() + "/"


def write_manifests(out_dir: Path, studies: list[StudyPlan], manifest_dir: Path | None = None) -> list[Path]:
    """Write OUT/<study>/manifest.csv (and <manifest_dir>/<study>.csv); returns the former."""
    paths = []
    for study in studies:
        path = out_dir / study.study / "manifest.csv"
        write_text(path, manifest_text(study))
        if manifest_dir is not None:
            write_text(
                manifest_dir / f"{study.study}.csv", manifest_text(study, _relative_prefix(path.parent, manifest_dir))
            )
        paths.append(path)
    return paths


def dataset_description(studies: list[StudyPlan], n_subjects: int, seed: int, options: SynthOptions) -> dict:
    return {
        "Name": "ICHOR synthetic multi-study ASL CBF dataset",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": GENERATOR_NAME, "Version": ichor.__version__}],
        "GeneratorParameters": {
            "n_studies": len(studies),
            "first_study": studies[0].index + 1,
            "subjects_per_study": n_subjects,
            "seed": seed,
            **options.as_dict(),
        },
        "Studies": {s.study: {"site": s.scans[0].site, **s.protocol.as_dict()} for s in studies},
    }


def previous_studies(out: Path) -> list[Path]:
    """Study folders of a dataset this generator wrote before into ``out`` (the only folders it may remove)."""
    try:
        description = json.loads((out / "dataset_description.json").read_text())
        names = [g.get("Name") for g in description.get("GeneratedBy", [])]
        studies = list(description.get("Studies", {}))
    except (OSError, ValueError, AttributeError):
        return []
    if GENERATOR_NAME not in names:
        return []
    return [out / s for s in studies if s.startswith("study-") and "/" not in s and (out / s).is_dir()]


def write_scan(args: tuple[ScanPlan, SynthOptions, str]) -> str:
    """Render one scan and write its files (runs in a worker); returns the CBF path."""
    plan, options, study_dir = args
    files = {k: Path(study_dir) / v for k, v in scan_files(plan).items()}
    scan = render_scan(plan, options)
    code = NIFTI_MNI if plan.protocol.space == MNI_SPACE else NIFTI_SCANNER
    save_nifti_gz(keep_mantissa_bits(scan.cbf, CBF_MANTISSA_BITS), scan.affine, files["path"], code)
    for tissue in TISSUES:
        save_nifti_gz(getattr(scan, tissue.lower()), scan.affine, files[tissue.lower()], code, np.uint8)
    meta = sidecar(plan)
    meta["SyntheticGroundTruth"]["oracle"] = scan.oracle  # measured on the map just written
    write_json(files["json"], meta)
    return str(files["path"])


def _pool(workers: int) -> multiprocessing.pool.Pool:
    """Fork where available: workers inherit the parent's warm caches instead of rebuilding them."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(workers, initializer=single_threaded, initargs=(os.getpid(),))


def generate_dataset(
    out_dir: str | PathLike,
    n_studies: int,
    subjects_per_study: int,
    seed: int = 0,
    workers: int = 1,
    manifest_dir: str | PathLike | None = None,
    progress: bool = True,
    *,
    options: SynthOptions | None = None,
    manifests_only: bool = False,
    first_study: int = 1,
) -> list[Path]:
    """Generate the dataset into ``out_dir``; returns the per-study manifest paths in study order.

    Existing files of the same names are replaced. ``manifests_only`` writes the manifests
    and dataset description (identical to a full run's) without rendering any volume.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    options = options or SynthOptions()
    out_dir = Path(out_dir)
    studies = plan_dataset(n_studies, subjects_per_study, seed, options, first_study)
    if not manifests_only:
        jobs = [(scan, options, str(out_dir / study.study)) for study in studies for scan in study.scans]
        warm_caches([study.protocol for study in studies])
        bar = dict(total=len(jobs), desc="ichor synth", unit="scan", disable=not progress)
        if workers == 1:
            for job in tqdm(jobs, **bar):
                write_scan(job)
        else:
            with _pool(min(workers, len(jobs))) as pool:
                for _ in tqdm(pool.imap(write_scan, jobs, chunksize=1), **bar):
                    pass
    manifests = write_manifests(out_dir, studies, Path(manifest_dir) if manifest_dir is not None else None)
    write_json(out_dir / "dataset_description.json", dataset_description(studies, subjects_per_study, seed, options))
    return manifests
