"""Fixtures for the data-preparation tests: real slides built from ../shared/data, tiny models.

The slides are crops of ``brca_001.jpeg`` written by ``_fixtures.write_pyramid_tiff`` (pyramidal tiled
JPEG TIFFs at 0.5 µm/px, read by OpenSlide as "generic-tiff"); ``brca_image``, ``pyramid_tiff``,
``brca_slide_1024`` and ``tiny_encoder`` (a random 2-block timm ViT with 32-d embeddings) come from
tests/conftest.py. The VQ-f4 here is the narrowest diffusers one (4 channels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _fixtures import tiny_vq, write_pyramid_tiff


@pytest.fixture(scope="session")
def brca_slide(tmp_path_factory: pytest.TempPathFactory, brca_image: np.ndarray) -> Path:
    """A 2048² crop of brca_001 as a 4-level pyramidal TIFF at 0.5 µm/px (20x)."""
    folder = tmp_path_factory.mktemp("brca_slide")
    return write_pyramid_tiff(folder / "brca_2048.tif", brca_image[:2048, :2048], mpp=0.5)


@pytest.fixture(scope="session")
def small_slides(tmp_path_factory: pytest.TempPathFactory, brca_image: np.ndarray) -> Path:
    """A folder of three 512² slides (different crops of brca_001) at 0.5 µm/px."""
    folder = tmp_path_factory.mktemp("small_slides")
    for name, (y, x) in {"s1": (0, 0), "s2": (1024, 2048), "s3": (3072, 512)}.items():
        write_pyramid_tiff(folder / f"{name}.tif", brca_image[y : y + 512, x : x + 512], mpp=0.5, levels=2)
    return folder


@pytest.fixture(scope="session")
def tiny_vae():
    """A narrow random VQ-f4 (diffusers VQModel: 256² → 3×64×64, 4 channels), cheap enough to encode every
    sample."""
    return tiny_vq(4)
