"""Fixtures for the data-preparation tests: real slides built from ../shared/data, tiny models.

The slides are real pixels: crops of ``brca_001.jpeg`` (4096² H&E at 20x) written as pyramidal tiled
TIFFs with 0.5 µm/px resolution tags, exactly as a scanner export that OpenSlide reads as
"generic-tiff". The models are tiny and random (no network): a 2-block timm ViT with 32-d embeddings
(the small summarizer's input width) and a narrow diffusers VQ-f4.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float, levels: int = 4) -> Path:
    """Tiled JPEG TIFF, full resolution first, each 2× reduced level as a further page (subfiletype 1),
    resolution in pixels per centimetre (CONVENTIONS: what OpenSlide reads back as openslide.mpp-x)."""
    import tifffile

    ppcm = 1e4 / mpp
    options = dict(tile=(256, 256), compression="jpeg", photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, resolution=(ppcm, ppcm), **options)
        level = image
        for i in range(1, levels):
            if min(level.shape[:2]) < 512:
                break
            level = np.asarray(Image.fromarray(level).reduce(2))
            tif.write(level, subfiletype=1, resolution=(ppcm / 2**i, ppcm / 2**i), **options)
    return path


@pytest.fixture(scope="session")
def brca_image(data_dir: Path) -> np.ndarray:
    with Image.open(data_dir / "brca_001.jpeg") as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="session")
def pyramid_tiff() -> Callable[..., Path]:
    return write_pyramid_tiff


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
def tiny_encoder():
    """A randomly initialised 2-block ViT with 32-d embeddings (64² input): fast and deterministic."""
    from zoomldm.data.encoders import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_encoder(
            "timm:vit_tiny_patch16_224", weights="random", embed_dim=32, depth=2, num_heads=2, img_size=64
        )


@pytest.fixture(scope="session")
def tiny_vae():
    """A narrow random VQ-f4 (diffusers VQModel: 256² → 3×64×64), cheap enough to encode every sample."""
    from diffusers import VQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(4, 4, 4),
            layers_per_block=1,
            latent_channels=3,
            num_vq_embeddings=64,
            vq_embed_dim=3,
            norm_num_groups=2,
            mid_block_add_attention=False,
            scaling_factor=1.0,
        )
    return vae.eval()
