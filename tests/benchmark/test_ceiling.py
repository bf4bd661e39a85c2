"""The benchmark's ceiling: oracle features read from the sidecars `ichor synth` writes, refused by row elsewhere."""

from __future__ import annotations

import pytest

from ichor.benchmark.baseline import oracle_features
from ichor.data.manifest import RowError, read_manifests


def test_oracle_features_of_synthetic_scans(synthetic_manifests):
    rows = read_manifests(synthetic_manifests)
    table = oracle_features(rows)
    assert list(table.index) == list(rows.drop_duplicates("path")["path"])
    expected = {"ad_region_relative", "ftd_region_relative", "svd_region_relative", "log_brain_mean"}
    assert expected | {"att_severity", "motion_severity"} <= set(table.columns)
    assert table.notna().all().all()


def test_a_map_without_oracle_is_refused_naming_the_row(downstream_manifests):
    rows = read_manifests(downstream_manifests)  # hand-made maps: no sidecar
    with pytest.raises(RowError, match=r"row \d+ \(.*\.json\): no oracle features"):
        oracle_features(rows)
