"""Shared test fixtures: paths to the real fixtures in ../shared (compat checkpoint, vectors, images), and
the artefacts several test folders build from them, made once per session.

The slides are real pixels: crops of ``brca_001.jpeg`` (4096² H&E at 20x) written as pyramidal tiled TIFFs
with 0.5 µm/px resolution tags, exactly as a scanner export that OpenSlide reads as "generic-tiff". The
models are tiny and random (no network): a 2-block timm ViT with 32-d embeddings (the compat small
Summarizer's input width) and narrow diffusers VQ-f4s (``_fixtures.tiny_vq``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared builders, ``from _fixtures import``

from _fixtures import tiny_vq, write_pyramid_tiff  # noqa: E402

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


@pytest.fixture(scope="session")
def brca_image(data_dir: Path) -> np.ndarray:
    """``brca_001.jpeg`` as a read-only uint8 [4096, 4096, 3] array (copy before writing)."""
    with Image.open(data_dir / "brca_001.jpeg") as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="session")
def pyramid_tiff() -> Callable[..., Path]:
    return write_pyramid_tiff


@pytest.fixture(scope="session")
def brca_slide_1024(tmp_path_factory: pytest.TempPathFactory, brca_image: np.ndarray) -> Path:
    """A 1024² crop of brca_001 (rows and columns 1024-2047) as a 3-level pyramidal TIFF at 0.5 µm/px
    (levels 1024², 512², 256²), alone in its folder: a slides folder for ``prepare_dataset``."""
    folder = tmp_path_factory.mktemp("brca_1024")
    return write_pyramid_tiff(folder / "brca_crop.tif", brca_image[1024:2048, 1024:2048], mpp=0.5, levels=3)


@pytest.fixture(scope="session")
def tiny_encoder():
    """A randomly initialised 2-block ViT with 32-d embeddings (64² input): fast and deterministic."""
    from zoomldm.models.encoders import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_encoder(
            "timm:vit_tiny_patch16_224", weights="random", embed_dim=32, depth=2, num_heads=2, img_size=64
        )


@pytest.fixture(scope="session")
def store_vae():
    """The 8-channel narrow VQ-f4 that made ``train_store``'s latents (the compat VQ costs ~0.5 CPU-s per
    256² image, 16× more); tests/train saves it as the ``model.vae`` its trained models decode with."""
    return tiny_vq(8)


@pytest.fixture(scope="session")
def train_store(
    tmp_path_factory: pytest.TempPathFactory, brca_slide_1024: Path, tiny_encoder, store_vae
) -> Path:
    """A store prepared by ``prepare_dataset`` from ``brca_slide_1024`` (levels 20x, 10x, 5x: 16 + 4 + 1
    samples) with ``tiny_encoder`` and ``store_vae``: the training data of tests/train and tests/models."""
    from zoomldm.data.prepare import PrepareSettings, prepare_dataset

    store = tmp_path_factory.mktemp("train_store") / "brca.zarr"
    report = prepare_dataset(
        brca_slide_1024.parent,
        store,
        tiny_encoder,
        store_vae,
        PrepareSettings(domain="pathology", levels=(0, 1, 2), tissue_threshold=0.0, batch_size=8),
        vae_info={"source": "tests narrow VQ (_fixtures.tiny_vq(8))"},
        progress=False,
    )
    assert report.totals == {"20x": 16, "10x": 4, "5x": 1}, report.totals
    return store
