"""Realistic multi-study synthetic CBF datasets: ICHOR's demo data and the ground truth of its tests.

The command is ``ichor synth``; its modules in the order data flows: docs/reference/synthetic-data.md.
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
