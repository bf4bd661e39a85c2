"""Realistic multi-study synthetic CBF datasets: ICHOR's demo data and the ground truth of its tests.

Modules, in the order data flows: ``anatomy`` (MNI152 tissue maps, regions), ``physiology``
(subject CBF, disease patterns), ``protocols`` (one site/protocol per study), ``plan``
(every per-scan random draw), ``artefacts``, ``rating`` (simulated expert quality ratings),
``acquisition`` (grids, pose, resampling), ``fields`` (smooth random fields, correlated
noise), ``render`` (one scan's maps), ``output`` (deterministic writing), ``generate``
(the dataset); the command is ``ichor synth``.
"""

from ichor.synth.generate import MANIFEST_COLUMNS, generate_dataset, manifest_text, write_manifests
from ichor.synth.plan import ScanPlan, StudyPlan, SynthOptions, plan_dataset
from ichor.synth.render import render_scan

__all__ = [
    "MANIFEST_COLUMNS",
    "ScanPlan",
    "StudyPlan",
    "SynthOptions",
    "generate_dataset",
    "manifest_text",
    "plan_dataset",
    "render_scan",
    "write_manifests",
]
