"""Tiled, Gaussian-blended large-latent decoding (SPEC §4.4) and its streaming by bands."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from PIL import Image

from zoomldm.errors import ZoomLDMError
from zoomldm.sampling.decode import (
    DecodeConfig,
    blend_kernel_1d,
    decode_large,
    decode_large_to,
    vae_scale_factor,
    window_starts,
)


class PixelwiseDecoder(torch.nn.Module):
    """A decoder whose output pixels depend only on the latent pixel they come from (1×1 conv, then
    nearest ×``factor``). Any correct blend of overlapping windows must reproduce its full decode exactly,
    so it tests the window grid, kernel weights and band bookkeeping apart from decoder edge effects.
    It has no diffusers config, so the decoder's scale factor is measured by a probe decode."""

    def __init__(self, channels: int = 3, factor: int = 4) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.5)
            self.conv.bias.copy_(torch.randn(3, generator=generator) * 0.1)
        self.factor = factor
        self.windows_decoded = 0

    def decode(self, h: torch.Tensor) -> DecoderOutput:
        self.windows_decoded += h.shape[0]
        up = torch.nn.functional.interpolate(self.conv(h), scale_factor=self.factor, mode="nearest")
        return DecoderOutput(sample=torch.tanh(up))


def _full(decoder: torch.nn.Module, latent: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return decoder.decode(latent[None]).sample[0].permute(1, 2, 0).float().numpy()


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip((x + 1) / 2, 0, 1) * 255).astype(np.uint8)  # the official conversion (truncation)


def test_window_starts_official_grid_and_edges():
    assert window_starts(256, 64, 16) == list(range(0, 256 - 64 + 1, 16))  # official multiples unchanged
    assert window_starts(100, 64, 16) == [0, 16, 32, 36]  # last window aligned to the edge
    assert window_starts(64, 64, 16) == [0]
    assert window_starts(40, 64, 16) == [0]  # smaller than the window: one pass
    assert window_starts(7, 3, 3) == [0, 3, 4]


def test_kernel_is_the_spec_kernel():
    size, sigma = 256, 0.8
    k2 = blend_kernel_1d(size, sigma)[:, None] * blend_kernel_1d(size, sigma)[None, :]
    u = torch.linspace(-1, 1, size, dtype=torch.float64)
    d2 = u[:, None] ** 2 + u[None, :] ** 2
    spec = torch.exp(-d2 / sigma**2)
    spec = spec / spec.max()
    assert torch.allclose(k2, spec, rtol=0, atol=1e-12)
    assert k2.max().item() == pytest.approx(1.0, abs=1e-12)
    assert k2[0, 0].item() == pytest.approx(0.044, abs=0.001)  # SPEC: corner weight ≈ 0.044


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 16, "stride": 17}, "stride must be between 1 and the window"),
        ({"stride": 0}, "stride"),
        ({"window": 0}, "window"),
        ({"sigma": 0.0}, "sigma"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ZoomLDMError, match=match):
        DecodeConfig(**kwargs)


def test_bad_latent_shapes():
    decoder = PixelwiseDecoder()
    with pytest.raises(ZoomLDMError, match="batch must be 1"):
        decode_large(decoder, torch.zeros(2, 3, 8, 8), progress=False)
    with pytest.raises(ZoomLDMError, match=r"\[C,H,W\]"):
        decode_large(decoder, torch.zeros(3, 8), progress=False)


@pytest.mark.parametrize(
    ("height", "width", "config"),
    [
        (64, 96, DecodeConfig()),  # official grid: multiples of the stride
        (37, 53, DecodeConfig(window=16, stride=8, batch_size=5)),  # not multiples: edge-aligned windows
        (10, 70, DecodeConfig(window=16, stride=6, batch_size=3)),  # height smaller than the window
        (5, 7, DecodeConfig(window=16, stride=16)),  # whole latent smaller than the window: one pass
        (20, 20, DecodeConfig(window=3, stride=1, sigma=0.3, batch_size=64)),  # many windows, sharp kernel
    ],
)
def test_blended_decode_equals_full_decode_for_a_pixelwise_decoder(height, width, config):
    decoder = PixelwiseDecoder()
    latent = torch.randn(3, height, width, generator=torch.Generator().manual_seed(height * width))
    full = _full(decoder, latent)
    tiled = decode_large(decoder, latent, config, output="float", progress=False)
    assert tiled.shape == (height * 4, width * 4, 3) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, full, rtol=0, atol=2e-6)
    tiled_u8 = decode_large(decoder, latent, config, progress=False)
    assert tiled_u8.dtype == np.uint8
    # identical up to float rounding across an integer boundary of the truncating conversion
    diff = np.abs(tiled_u8.astype(int) - _uint8(full).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_streaming_matches_in_memory_and_bounds_the_band():
    decoder = PixelwiseDecoder()
    config = DecodeConfig(window=16, stride=4, batch_size=7)
    latent = torch.randn(3, 45, 29, generator=torch.Generator().manual_seed(1))
    expected = decode_large(decoder, latent, config, progress=False)
    decoder.windows_decoded = 0

    writes: list[tuple[int, np.ndarray, int]] = []

    class Sink:
        def write_rows(self, y: int, rows: np.ndarray) -> None:
            writes.append((y, rows.copy(), decoder.windows_decoded))

    stats = decode_large_to(decoder, latent, Sink(), config, progress=False)
    total_windows = len(window_starts(45, 16, 4)) * len(window_starts(29, 16, 4))
    assert (stats.height, stats.width, stats.scale_factor, stats.windows) == (180, 116, 4, total_windows)
    # memory bound: the accumulator holds one window height of pixel rows, not the image
    assert stats.band_rows == 16 * 4 < stats.height
    # rows arrive in order, contiguous, each at most one window height, and they equal the in-memory result
    assert [y for y, _, _ in writes] == list(np.cumsum([0] + [r.shape[0] for _, r, _ in writes[:-1]]))
    assert all(r.shape[0] <= stats.band_rows for _, r, _ in writes)
    np.testing.assert_array_equal(np.concatenate([r for _, r, _ in writes]), expected)
    # streaming: the first rows leave before all windows are decoded (batches of 7 may run ahead of a row)
    assert writes[0][2] < total_windows // 2
    assert len(writes) == len(window_starts(45, 16, 4))

    # a plain callable works as a sink, and a memory-mapped numpy latent is read window by window
    got = np.zeros_like(expected)
    decode_large_to(decoder, latent.numpy(), lambda y, rows: got.__setitem__(slice(y, y + len(rows)), rows),
                    config, progress=False)  # fmt: skip
    np.testing.assert_array_equal(got, expected)


def test_batch_size_does_not_change_the_result():
    decoder = PixelwiseDecoder()
    latent = torch.randn(1, 3, 33, 21, generator=torch.Generator().manual_seed(2))
    one = decode_large(
        decoder, latent, DecodeConfig(window=12, stride=5, batch_size=1), output="float", progress=False
    )
    many = decode_large(
        decoder, latent, DecodeConfig(window=12, stride=5, batch_size=50), output="float", progress=False
    )
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-6)  # conv kernels may sum in another order


# --- the real (tiny) VQ-f4 from the compatibility checkpoint -------------------------------------------


@pytest.fixture(scope="module")
def tiny_vq_latent(small_checkpoint, small_config, data_dir):
    """The compat checkpoint's VQ-f4 and the latent of a 128×192 crop of a real H&E image."""
    from zoomldm.pipeline import ZoomLDMPipeline

    vae = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config).vae.eval()
    image = np.asarray(Image.open(data_dir / "brca_001.jpeg").convert("RGB").resize((512, 512)))[:128, :192]
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(x).latents[0]
        full = vae.decode(latent[None]).sample[0].permute(1, 2, 0).numpy()
    return vae, latent, full


def test_tiny_vq_single_window_equals_full_decode(tiny_vq_latent):
    vae, latent, full = tiny_vq_latent
    assert vae_scale_factor(vae) == 4 and latent.shape == (3, 32, 48)
    # the default 64-latent window covers the whole 32×48 latent: one pass, the same as a full decode
    tiled = decode_large(vae, latent, output="float", progress=False)
    np.testing.assert_allclose(tiled, full, rtol=0, atol=1e-5)


def test_tiny_vq_blended_windows_are_close_to_full_decode(tiny_vq_latent):
    vae, latent, full = tiny_vq_latent
    blended = decode_large(vae, latent, DecodeConfig(window=24, stride=8), output="float", progress=False)
    butted = decode_large(vae, latent, DecodeConfig(window=24, stride=24), output="float", progress=False)
    err, err_butted = np.abs(blended - full), np.abs(butted - full)
    # Random decoder weights give a wide receptive field, so windows differ from the full decode near their
    # borders (measured: mean 0.11, p99 0.48 with full-decode std 0.62); trained VQ decoders are far more
    # local. Tolerance: mean error under a quarter of the image's std, and clearly below abutting tiles.
    assert err.mean() < 0.25 * full.std()
    assert np.quantile(err, 0.99) < 0.75
    assert err.mean() < 0.8 * err_butted.mean() and err.max() < err_butted.max()
