"""Shared fixtures: small data sets and a tiny encoder, each made once per test session.

Plain helper functions and constants are in tests/helpers.py (``from helpers import ...``).
The fixtures import what they need when first used, so that test modules which use none of
them do not pay for importing the models.
"""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_manifests(tmp_path_factory) -> list[Path]:
    """4 studies x 4 subjects from `ichor synth` (seed 0): the per-study manifest paths."""
    from ichor.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    return generate_dataset(out, n_studies=4, subjects_per_study=4, seed=0, workers=2, progress=False)


@pytest.fixture(scope="session")
def downstream_manifests(tmp_path_factory) -> list[str]:
    """`helpers.make_dataset` with its defaults: 2 studies x 6 subjects of 20^3 maps at 4 mm, CN/AD alternating.

    Read-only: a test that changes manifests or scans makes its own with ``make_dataset``.
    """
    from helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("downstream") / "data")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """`helpers.make_encoder` with its defaults: an exported untrained mae_vit_micro (patch 8) with
    the harmonisation of ``downstream_manifests`` (4 mm, 16^3 grid, ``relative``). Read-only."""
    from helpers import make_encoder

    return make_encoder(tmp_path_factory.mktemp("encoder"))
