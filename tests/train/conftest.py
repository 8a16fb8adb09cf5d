"""Fixtures for the training tests: a real multi-scale store and small training configs.

The store is made by the data engineer's ``prepare_dataset`` from real pixels: a 1024² crop of
``brca_001.jpeg`` (20x, 0.5 µm/px) written as a pyramidal tiled TIFF, giving 16 samples at 20x, 4 at 10x
and 1 at 5x. The SSL encoder is a random 2-block timm ViT with 32-d embeddings (the width of the compat
small Summarizer); the VQ-f4 is a narrow random diffusers ``VQModel`` (8 channels: the compat VQ costs
~0.5 CPU-s per 256² image, 16× more). Training runs use the compat small architecture
(``small_config.yaml``, initialised from ``small_checkpoint.ckpt``) with ``model.vae`` pointing at the
narrow VQ, so the trained model decodes with the autoencoder that made its latents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float, levels: int = 3) -> Path:
    """Tiled JPEG TIFF, full resolution first, each 2× reduced level a further page, resolution in px/cm."""
    import tifffile

    ppcm = 1e4 / mpp
    options = dict(tile=(256, 256), compression="jpeg", photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, resolution=(ppcm, ppcm), **options)
        level = image
        for i in range(1, levels):
            level = np.asarray(Image.fromarray(level).reduce(2))
            tif.write(level, subfiletype=1, resolution=(ppcm / 2**i, ppcm / 2**i), **options)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on the shared 2-core machine two threads thrash (measured 5-10× slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each Trainer builds its own Accelerator; accelerate keeps process-wide singletons, reset them."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def compat_pipeline(small_checkpoint: Path, small_config: Path):
    from zoomldm.pipeline import ZoomLDMPipeline

    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=True)


@pytest.fixture(scope="session")
def tiny_vae():
    """A narrow random VQ-f4 (256² → 3×64×64), cheap enough to encode and decode on CPU."""
    from diffusers import VQModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 8, 8),
            layers_per_block=1,
            latent_channels=3,
            num_vq_embeddings=64,
            vq_embed_dim=3,
            norm_num_groups=4,
            mid_block_add_attention=False,
            scaling_factor=1.0,
        )
    return vae.eval()


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory: pytest.TempPathFactory, compat_pipeline, tiny_vae) -> Path:
    """Our format holding the narrow VQ (what ``model.vae`` points at in the test configs)."""
    from zoomldm.pipeline import ZoomLDMPipeline

    p = compat_pipeline
    out = tmp_path_factory.mktemp("vae") / "narrow_vq"
    return ZoomLDMPipeline(p.unet, tiny_vae, p.summarizer, p.config).save_pretrained(out)


@pytest.fixture(scope="session")
def train_store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_vae) -> Path:
    """A store prepared from a 1024² crop of brca_001 (levels 20x, 10x, 5x: 16 + 4 + 1 samples)."""
    from zoomldm.data.encoders import build_encoder
    from zoomldm.data.prepare import PrepareSettings, prepare_dataset

    root = tmp_path_factory.mktemp("train_store")
    with Image.open(data_dir / "brca_001.jpeg") as image:
        crop = np.asarray(image.convert("RGB"))[1024:2048, 1024:2048]
    slides = root / "slides"
    slides.mkdir()
    write_pyramid_tiff(slides / "brca_crop.tif", np.ascontiguousarray(crop), mpp=0.5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = build_encoder(
            "timm:vit_tiny_patch16_224", weights="random", embed_dim=32, depth=2, num_heads=2, img_size=64
        )
    store = root / "brca.zarr"
    report = prepare_dataset(
        slides,
        store,
        encoder,
        tiny_vae,
        PrepareSettings(domain="pathology", levels=(0, 1, 2), tissue_threshold=0.0, batch_size=8),
        vae_info={"source": "tests/train narrow VQ"},
        progress=False,
    )
    assert report.totals == {"20x": 16, "10x": 4, "5x": 1}, report.totals
    return store


@pytest.fixture
def make_config(tmp_path: Path, train_store: Path, small_config: Path, small_checkpoint: Path, vae_dir: Path):
    """``make_config(**sections)`` → a validated TrainConfig for the compat small model on the test store."""
    from zoomldm.train.config import TrainConfig, apply_overrides

    def make(output_dir: Path | None = None, overrides: list[str] | None = None):
        base = {
            "output_dir": str(output_dir or tmp_path / "run"),
            "seed": 7,
            "model": {
                "config": str(small_config),
                "init": "official",
                "checkpoint": str(small_checkpoint),
                "vae": str(vae_dir),
            },
            "data": {"store": str(train_store), "batch_size": 1, "num_workers": 0},
            "optim": {"lr": 1.0e-3, "warmup_steps": 0},
            "train": {"max_steps": 4, "mixed_precision": "no"},
            "checkpoint": {"every": 1000, "keep": 2},
            "logging": {"every": 1000, "trackers": [], "sample_every": 0},
        }
        return TrainConfig.from_dict(apply_overrides(base, overrides or []), source="test")

    return make
