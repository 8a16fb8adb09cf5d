"""Fixtures for the training tests: a real multi-scale store and small training configs.

The store is the session's ``train_store`` (tests/conftest.py, shared with tests/models): made by the data
engineer's ``prepare_dataset`` from real pixels, a 1024² crop of ``brca_001.jpeg`` (20x, 0.5 µm/px) written
as a pyramidal tiled TIFF, giving 16 samples at 20x, 4 at 10x and 1 at 5x. The SSL encoder is a random
2-block timm ViT with 32-d embeddings (the width of the compat small Summarizer); the VQ-f4 is a narrow
random diffusers ``VQModel`` (``store_vae``, 8 channels: the compat VQ costs ~0.5 CPU-s per 256² image,
16× more). Training runs use the compat small architecture (``small_config.yaml``, initialised from
``small_checkpoint.ckpt``) with ``model.vae`` pointing at the narrow VQ, so the trained model decodes with
the autoencoder that made its latents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _fixtures import one_thread, reset_accelerate_state


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on the shared 2-core machine two threads thrash (measured 5-10× slower)."""
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each Trainer builds its own Accelerator; accelerate keeps process-wide singletons, reset them."""
    yield
    reset_accelerate_state()


@pytest.fixture(scope="session")
def compat_pipeline(small_checkpoint: Path, small_config: Path):
    from zoomldm.pipeline import ZoomLDMPipeline

    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=True)


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory: pytest.TempPathFactory, compat_pipeline, store_vae) -> Path:
    """Our format holding the narrow VQ (what ``model.vae`` points at in the test configs)."""
    from zoomldm.pipeline import ZoomLDMPipeline

    p = compat_pipeline
    out = tmp_path_factory.mktemp("vae") / "narrow_vq"
    return ZoomLDMPipeline(p.unet, store_vae, p.summarizer, p.config).save_pretrained(out)


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
