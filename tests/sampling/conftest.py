"""Fixtures of the large-image tests: the compat model, and the compat model with a linear autoencoder.

The compat checkpoint's VQ has random weights: its decoder does not invert its encoder (the change a
finite-difference encoder step produces in the decoded image has cosine ≈ 0.02 with the intended image
change), so no constraint can pull its decodes toward a guide. Tests of the constraint's *effect* therefore
pair the compat UNet and Summarizer with :class:`AreaAutoencoder` — a real (linear, exactly known)
f4 autoencoder: 4×4 area averaging down, bicubic up. Everything else runs with the full compat model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from torch import nn

from zoomldm import ZoomLDMPipeline


class AreaAutoencoder(nn.Module):
    """An f4 autoencoder with the diffusers VQModel interface: encode = 4×4 mean, decode = bicubic ×4."""

    def __init__(self, factor: int = 4) -> None:
        super().__init__()
        self.factor = factor
        self.gain = nn.Parameter(torch.ones(()))  # gives the module a device and dtype
        self.config = type("Config", (), {"block_out_channels": [1] * (factor.bit_length())})()

    def encode(self, x: torch.Tensor) -> VQEncoderOutput:
        return VQEncoderOutput(latents=F.avg_pool2d(x, self.factor) * self.gain)

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> DecoderOutput:
        up = F.interpolate(z / self.gain, scale_factor=self.factor, mode="bicubic", align_corners=False)
        return DecoderOutput(sample=up)


@pytest.fixture(scope="session")
def compat_pipe(small_checkpoint, small_config) -> ZoomLDMPipeline:
    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)


@pytest.fixture(scope="session")
def area_pipe(compat_pipe) -> ZoomLDMPipeline:
    return ZoomLDMPipeline(compat_pipe.unet, AreaAutoencoder(), compat_pipe.summarizer, compat_pipe.config)


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
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
