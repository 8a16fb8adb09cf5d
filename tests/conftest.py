"""Shared test fixtures: paths to the real fixtures in ../shared (compat checkpoint, vectors, images)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZOOMLDM_SHARED", REPO.parent / "shared")).resolve()
COMPAT = SHARED / "compat"
DATA = SHARED / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config: pytest.Config) -> None:
    if not COMPAT.is_dir():
        raise pytest.UsageError(f"shared fixtures not found at {SHARED}; set ZOOMLDM_SHARED")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; CI machines have none (run on the lent GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    return COMPAT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def small_checkpoint() -> Path:
    return COMPAT / "small_checkpoint.ckpt"


@pytest.fixture(scope="session")
def small_config() -> Path:
    return COMPAT / "small_config.yaml"


@pytest.fixture(scope="session")
def vectors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(COMPAT / "vectors.safetensors"))
