"""Fixtures of the large-image tests: the compat model, and the compat model with the trained VQ-f4.

The compat checkpoint's VQ has random weights: its decoder does not invert its encoder (the change a
finite-difference encoder step produces in the decoded image has cosine ≈ 0.02 with the intended image
change), so no constraint can pull its decodes toward a guide. Tests of the constraint's *effect* therefore
pair the compat UNet and Summarizer (random, 64² patches, 32-d SSL grids: fast) with the **trained** VQ-f4
of the package's embedded model (``zoomldm/assets/tiny_brca``, issue 16: trained by ``zoomldm train-vae`` on
H&E, held-out PSNR 20.9 dB; the same architecture as the compat VQ: 32/64/32 channels, 3-d latents, 64
codes): a real, quantising, non-linear autoencoder whose decoder does invert its encoder, so the
constraint's finite differences through it carry the image change. Everything else runs with the full
compat model.
"""

from __future__ import annotations

import pytest

from _fixtures import one_thread
from zoomldm import ZoomLDMPipeline
from zoomldm.checkpoints import embedded_model_path


@pytest.fixture(scope="session")
def compat_pipe(small_checkpoint, small_config) -> ZoomLDMPipeline:
    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)


def trained_vq():
    """A fresh float32 copy of the embedded model's trained VQ-f4 (a missing shipped model fails)."""
    path = embedded_model_path()
    assert path is not None, "the package ships no embedded model (src/zoomldm/assets/tiny_brca)"
    return ZoomLDMPipeline.from_pretrained(path, dtype="float32").vae.eval()


@pytest.fixture(scope="session")
def trained_vq_pipe(compat_pipe) -> ZoomLDMPipeline:
    """The compat UNet and Summarizer with the embedded model's trained VQ-f4 (see the module docstring)."""
    return ZoomLDMPipeline(compat_pipe.unet, trained_vq(), compat_pipe.summarizer, compat_pipe.config)


@pytest.fixture
def no_model_work(compat_pipe, monkeypatch):
    """The compat pipeline with UNet, VQ and Summarizer calls turned into failures (for input checks)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model work started before the input was validated")

    for module in (compat_pipe.unet, compat_pipe.summarizer):
        monkeypatch.setattr(module, "forward", forbidden)
    monkeypatch.setattr(compat_pipe.vae, "encode", forbidden)
    monkeypatch.setattr(compat_pipe.vae, "decode", forbidden)
    return compat_pipe


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: these small models are 10× faster on a loaded 2-core machine than with two
    threads (measured: 0.8 s vs 7-15 s for the same generation), whose barriers wait for a descheduled
    peer (results differ only by float rounding). Module-scoped so that it covers module-scoped fixtures."""
    with one_thread():
        yield
