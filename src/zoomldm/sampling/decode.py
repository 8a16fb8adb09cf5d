"""Large latent decoding with Gaussian-blended overlapping windows (SPEC §4.4), streamed by bands.

The official ``decode_large_image`` slides 64×64-latent windows at stride 16 over the latent, VQ-decodes
each window (quantising), weights it by a Gaussian kernel (σ 0.8 over ``linspace(−1, 1)`` of the window's
pixel size, normalised to max 1), accumulates, and divides by the accumulated weights. This module does
the same arithmetic with three changes that do not alter the result:

* windows are decoded ``batch_size`` at a time;
* the image is produced in horizontal bands: the accumulator holds one window height of pixel rows, and
  rows are handed to a sink as soon as no later window can touch them, so a 32768² image never needs
  its full RGB canvas in memory (:func:`decode_large_to`);
* sizes that are not a multiple of the stride, or smaller than the window, are covered: the last window
  is aligned to the edge, and a dimension smaller than the window is decoded in one pass.

Why the weight normaliser is 1-D: the kernel is separable (``exp(−(x²+y²)/σ²) = exp(−x²/σ²)·exp(−y²/σ²)``)
and the windows form a Cartesian grid, so ``Σ_windows K = (Σ_rows k_y)·(Σ_cols k_x)``; two 1-D sums
replace the official full-size weight canvas, with equal values up to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from ..errors import ZoomLDMError
from ..progress import make_progress, progress_enabled

OutputKind = Literal["uint8", "float"]


@dataclass(frozen=True)
class DecodeConfig:
    """Sliding-window decode settings; the defaults are the official values (SPEC §4.4, §11).

    ``window`` and ``stride`` are in latent pixels, ``sigma`` is the Gaussian width over ``[−1, 1]`` of the
    window, ``batch_size`` is how many windows go through the VQ decoder at once.
    """

    window: int = 64
    stride: int = 16
    sigma: float = 0.8
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ZoomLDMError(f"decode window must be a positive number of latent pixels, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ZoomLDMError(
                f"decode stride must be between 1 and the window ({self.window}) so windows overlap or touch, "
                f"got {self.stride}"
            )
        if not self.sigma > 0:
            raise ZoomLDMError(f"decode sigma must be > 0, got {self.sigma}")
        if self.batch_size < 1:
            raise ZoomLDMError(f"decode batch_size must be >= 1, got {self.batch_size}")


class RowSink(Protocol):
    """Receives finished pixel rows in order: ``rows`` is ``[n, W, 3]`` starting at image row ``y``."""

    def write_rows(self, y: int, rows: np.ndarray) -> None: ...


@dataclass(frozen=True)
class DecodeStats:
    """What :func:`decode_large_to` did: output size, scale factor, windows decoded, largest band held."""

    height: int
    width: int
    scale_factor: int
    windows: int
    band_rows: int


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window start offsets along one axis: every ``stride`` from 0, plus one aligned to the far edge.

    A length smaller than the window gives a single window of that length at 0. For lengths where
    ``(length − window)`` is a multiple of the stride this is the official ``range(0, L − w + 1, s)``.
    """
    if length < 1:
        raise ZoomLDMError(f"latent size must be at least 1, got {length}")
    span = min(window, length)
    starts = list(range(0, length - span + 1, stride))
    if starts[-1] + span < length:
        starts.append(length - span)
    return starts


def blend_kernel_1d(size: int, sigma: float) -> torch.Tensor:
    """One axis of the official blending kernel: ``exp(−u²/σ²)`` on ``u = linspace(−1, 1, size)``, max 1.

    The 2-D kernel of SPEC §4.4 (``exp(−d²/σ²)``, ``d = ‖(u_x, u_y)‖``, normalised to max 1) is the outer
    product of two of these.
    """
    u = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    k = torch.exp(-(u**2) / sigma**2)
    return k / k.max()


def _axis_weights(length_px: int, starts: list[int], span_px: int, factor: int, sigma: float) -> torch.Tensor:
    """Sum of the 1-D kernels of all windows along one axis, in output pixels."""
    k = blend_kernel_1d(span_px, sigma)
    total = torch.zeros(length_px, dtype=torch.float64)
    for s in starts:
        total[s * factor : s * factor + span_px] += k
    return total


def vae_scale_factor(vae: Any, latent_channels: int | None = None) -> int:
    """Pixels per latent pixel of ``vae``: diffusers' ``2 ** (len(block_out_channels) − 1)`` when the model
    has a diffusers config, otherwise measured by decoding a small zero latent."""
    config = getattr(vae, "config", None)
    blocks = getattr(config, "block_out_channels", None) if config is not None else None
    if blocks is not None:
        return 2 ** (len(blocks) - 1)
    if latent_channels is None:
        raise ZoomLDMError(
            "cannot tell the VAE's scale factor: it has no diffusers config; pass latent_channels"
        )
    device, dtype = _device_dtype(vae)
    with torch.inference_mode():
        out = vae.decode(torch.zeros(1, latent_channels, 8, 8, device=device, dtype=dtype)).sample
    return int(out.shape[-1]) // 8


def _device_dtype(vae: Any) -> tuple[torch.device, torch.dtype]:
    try:
        p = next(vae.parameters())
        return p.device, p.dtype
    except (StopIteration, AttributeError):
        return torch.device("cpu"), torch.float32


def _as_latent(latent: Any) -> Any:
    """Accept ``[C,H,W]`` or ``[1,C,H,W]`` (torch tensor or numpy array, memory-mapped arrays included)."""
    shape = tuple(latent.shape)
    if len(shape) == 4:
        if shape[0] != 1:
            raise ZoomLDMError(f"decode one image at a time: latent batch must be 1, got shape {shape}")
        return latent[0]
    if len(shape) != 3:
        raise ZoomLDMError(f"latent must be [C,H,W] or [1,C,H,W], got shape {shape}")
    return latent


def _window(lat: Any, y: int, x: int, h: int, w: int) -> torch.Tensor:
    """One ``[C,h,w]`` latent window as a tensor (numpy, memory-mapped and zarr arrays are read lazily)."""
    window = lat[:, y : y + h, x : x + w]
    return window if isinstance(window, torch.Tensor) else torch.as_tensor(np.asarray(window))


class _RowBand:
    """Windows of a lazily read latent (zarr array, :class:`~.canvas.LatentView`, memory map) from one
    read per row of windows: the band ``[C, h, W]`` under the current window row (O(width) memory),
    instead of one chunked read per window."""

    def __init__(self, lat: Any, h: int) -> None:
        self.lat, self.h, self.y, self.band = lat, h, -1, None

    def __call__(self, lat: Any, y: int, x: int, h: int, w: int) -> torch.Tensor:
        if y != self.y:
            self.y, self.band = y, _window(self.lat, y, 0, self.h, int(self.lat.shape[2]))
        return self.band[:, :, x : x + w]


def _to_output(pixels: torch.Tensor, output: OutputKind) -> np.ndarray:
    """``[3,n,W]`` blended decoder output → ``[n,W,3]`` numpy: uint8 exactly as the official
    ``(clamp((x+1)/2, 0, 1)·255).to(uint8)`` (truncation), or float32 in the decoder's [-1, 1] range."""
    if output == "float":
        return pixels.permute(1, 2, 0).to(torch.float32).cpu().numpy()
    scaled = (((pixels + 1) / 2).clamp(0.0, 1.0) * 255).to(torch.uint8)
    return scaled.permute(1, 2, 0).cpu().numpy()


def decode_large_to(
    vae: Any,
    latent: Any,
    sink: RowSink | Callable[[int, np.ndarray], None],
    config: DecodeConfig | None = None,
    *,
    output: OutputKind = "uint8",
    progress: bool = True,
) -> DecodeStats:
    """Decode ``latent`` ([C,H,W] or [1,C,H,W], unquantised VQ latent) with blended windows, streaming rows.

    ``sink`` gets ``(y, rows)`` in increasing ``y``, ``rows`` being ``[n, W·f, 3]`` (uint8, or float32 in
    [-1, 1] with ``output="float"``); it is either an object with ``write_rows(y, rows)`` (e.g.
    :class:`zoomldm.io.PyramidalTiffWriter`) or a callable. Memory: the accumulator holds at most one
    window height of pixel rows (``DecodeStats.band_rows``) times the image width; the latent itself is read
    one row of windows at a time (a ``[C, window, W]`` band), so it may be a memory-mapped numpy array, a
    zarr array or the sampler's :class:`~.canvas.LatentView`: host memory is then O(width) whatever the
    height.
    """
    config = config or DecodeConfig()
    if output not in ("uint8", "float"):
        raise ZoomLDMError(f"output must be 'uint8' or 'float', got {output!r}")
    write = sink.write_rows if hasattr(sink, "write_rows") else sink
    lat = _as_latent(latent)
    channels, height, width = (int(v) for v in lat.shape)
    f = vae_scale_factor(vae, channels)
    device, dtype = _device_dtype(vae)

    # 1. window grid (Cartesian: rows of windows × columns of windows) and the separable weight sums
    ys = window_starts(height, config.window, config.stride)
    xs = window_starts(width, config.window, config.stride)
    span_y, span_x = min(config.window, height) * f, min(config.window, width) * f
    ky = blend_kernel_1d(span_y, config.sigma).to(torch.float32)
    kx = blend_kernel_1d(span_x, config.sigma).to(torch.float32)
    weight_y = _axis_weights(height * f, ys, span_y, f, config.sigma).to(torch.float32)
    weight_x = _axis_weights(width * f, xs, span_x, f, config.sigma).to(torch.float32)
    kernel = None  # 2-D kernel on the decoder's device, made with the first decoded batch

    # 2. band accumulator: one window height of pixel rows, aligned with the current row of windows
    band: torch.Tensor | None = None
    band_top = 0  # latent row at band row 0
    emitted = 0  # pixel rows already handed to the sink

    def flush(upto_px: int) -> None:
        nonlocal band, emitted
        assert band is not None
        n = upto_px - emitted
        if n <= 0:
            return
        norm = weight_y[emitted:upto_px, None].to(band.device) * weight_x[None, :].to(band.device)
        write(emitted, _to_output(band[:, :n] / norm, output))
        band = torch.cat([band[:, n:], torch.zeros_like(band[:, :n])], dim=1)  # shift up, zero the bottom
        emitted = upto_px

    order = [(y, x) for y in ys for x in xs]  # row-major, as the official loops
    read = _window if isinstance(lat, torch.Tensor) else _RowBand(lat, span_y // f)
    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext(), torch.inference_mode():
        task = bar.add_task("decode windows", total=len(order)) if bar is not None else None
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            h = torch.stack([read(lat, y, x, span_y // f, span_x // f) for y, x in batch])
            decoded = vae.decode(h.to(device=device, dtype=dtype)).sample.to(torch.float32)  # quantises
            if decoded.shape[-2:] != (span_y, span_x):
                raise ZoomLDMError(
                    f"the VAE decoded a {span_y // f}x{span_x // f} latent window to "
                    f"{tuple(decoded.shape[-2:])}, expected {(span_y, span_x)} (scale factor {f})"
                )
            if band is None:
                band = decoded.new_zeros(decoded.shape[1], span_y, width * f)
                kernel = (ky[:, None] * kx[None, :]).to(decoded.device)
            for (y, x), pixels in zip(batch, decoded, strict=True):
                if y != band_top:  # first window of a new row of windows: the rows above it are final
                    flush(y * f)
                    band_top = y
                band[:, :, x * f : x * f + span_x] += pixels * kernel
            if bar is not None:
                bar.advance(task, len(batch))
        flush(height * f)
    return DecodeStats(height * f, width * f, f, len(order), span_y)


def decode_large(
    vae: Any,
    latent: Any,
    config: DecodeConfig | None = None,
    *,
    output: OutputKind = "uint8",
    progress: bool = True,
) -> np.ndarray:
    """Decode ``latent`` into one ``[H·f, W·f, 3]`` array (uint8, or float32 with ``output="float"``).

    Same arithmetic as :func:`decode_large_to`, collected in memory: use it for images that fit; stream
    large ones to a writer with :func:`decode_large_to`.
    """
    lat = _as_latent(latent)
    f = vae_scale_factor(vae, int(lat.shape[0]))
    out = np.empty(
        (int(lat.shape[1]) * f, int(lat.shape[2]) * f, 3), dtype=np.uint8 if output == "uint8" else np.float32
    )

    def collect(y: int, rows: np.ndarray) -> None:
        out[y : y + rows.shape[0]] = rows

    decode_large_to(vae, lat, collect, config, output=output, progress=progress)
    return out
