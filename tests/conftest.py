"""Shared fixtures: one small synthetic multi-study dataset per test session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_manifests(tmp_path_factory) -> list[Path]:
    """4 studies x 4 subjects from `ichor synth` (seed 0): the per-study manifest paths."""
    from ichor.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    return generate_dataset(out, n_studies=4, subjects_per_study=4, seed=0, workers=2, progress=False)
