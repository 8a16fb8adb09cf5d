"""Fixtures of the feature/MIL tests: a synthetic slide-level cohort built from real tiles, trained once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mil_synthetic import FAST, SyntheticCohort, make_cohort, tile_pools  # noqa: E402

from _fixtures import one_thread  # noqa: E402
from zoomldm.features.mil import CVResult, cross_validate  # noqa: E402


@pytest.fixture(scope="session")
def pools(data_dir: Path) -> dict:
    return tile_pools(data_dir)


@pytest.fixture(scope="session")
def cohort(pools: dict, tmp_path_factory: pytest.TempPathFactory) -> SyntheticCohort:
    return make_cohort(pools, tmp_path_factory.mktemp("cohort"), n_patients=30, seed=0)


@pytest.fixture(scope="session")
def trained(cohort: SyntheticCohort, tmp_path_factory: pytest.TempPathFactory) -> CVResult:
    with one_thread():
        return cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path_factory.mktemp("cv"), FAST)
