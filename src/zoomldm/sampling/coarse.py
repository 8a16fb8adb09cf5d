"""The coarse stage: images larger than one guide patch covers (issue 14) — our extension, not the paper's.

Joint sampling (SPEC §4) starts from **one** guide patch at the coarsest level; a cascade of scale pairs
then reaches at most ``k_total × tile`` pixels (32768² at 20x with the brca model: one 0.15625x patch).
A larger request starts instead from a *coarse canvas*: ``rows × cols`` patches at that coarsest level,
generated from pure noise by sliding-window joint denoising (MultiDiffusion, Bar-Tal et al. 2023):

* windows of one patch (``L²`` latent px, ``L`` = the model's latent size) at stride ``L/4`` (measured:
  patch borders 0.91–1.40× as rough as elsewhere against 1.03–1.64× at ``L/2`` and 1.25–2.13× for
  independent patches, 2×2 canvases, seeds 0–3; the extra windows cost nothing next to the stages after);
* at every strided step (the grid of :mod:`.strided`, ``t0 = 1000``, stride 50 by default, the UNet at
  ``t``, coefficients at ``t − 1``) each window predicts its guided ε (``(w+1)·ε_c − w·ε_u``), the ε of the
  overlapping windows are averaged uniformly per latent pixel (equivalently their x̂0, or their updates:
  all three are affine in ε with the same ``x``), and the whole canvas takes the strided update with the
  variance-preserving coefficients of the guide patch;
* each window is conditioned on the Summarizer context of *its* region of the reference SSL grid: the
  window's ``g × g`` base tiles (``g`` = the level's grid size) cropped from the grid covering the whole
  request, pooled to ≤ 8×8 and standardised (:func:`~zoomldm.conditioning.prepare_grid`, exactly the
  guide condition of joint sampling; a window offset that is not a whole number of base tiles — only
  possible when ``g`` is odd — is interpolated as the post-processing windows are,
  :func:`.conditions.window_grids`);
* the noise (initial and per step) is keyed per canvas patch and step on the guide's streams
  (``guide_init``, ``guide_step``; patch id ``r·cols + c``), so the result does not depend on the window
  batch or the window order, and a 1 × 1 canvas **is** the one-patch guide of joint sampling (same noise,
  same context, same arithmetic: bitwise).

The canvas is decoded (the official sliding-window VQ decode, :func:`.decode.decode_large`) and serves as
the *fixed* guide of the next cascade stage, as a super-resolution input does. The coarse stage is always
small — a 131072² image at 20x is 1024² px at 0.15625x, 4 × 4 patches, a ``[3, 256, 256]`` latent — so it
lives in memory: the canvas, its ε sums, the ``(4·rows − 3)(4·cols − 3)`` window contexts and the
decoded pixels take ``O(rows · cols)`` small buffers (≈ 36 MiB for 4 × 4 with the brca model). It has no
resume state: it is a tiny part of the run (169 windows × 20 steps at 131072²).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..conditioning import prepare_grid
from ..errors import ConfigError, InputError
from ..progress import make_progress, progress_enabled
from ..scales import Magnification
from .conditions import summarize, window_grids
from .decode import DecodeConfig, decode_large, window_starts
from .guidance import guided_eps
from .levels import require_level
from .newton import JointSamplingConfig
from .noise import keyed_normal
from .strided import predict_x0, strided_steps, strided_update

__all__ = [
    "CoarseCost",
    "coarse_canvas_cost",
    "coarse_canvas_needed",
    "coarse_window_stride",
    "check_coarse_grid",
    "coarse_windows",
    "decode_coarse_canvas",
    "generate_coarse_canvas",
]


def coarse_canvas_needed(
    pipe, guide_mag: Magnification, target_mag: Magnification, size: int
) -> tuple[int, int] | None:
    """``(rows, cols)`` of the coarse canvas at ``guide_mag`` for a ``size²`` image at ``target_mag``, or
    None when one guide patch covers it (``size ≤ k·tile``, ``k`` = the downsample ratio of the levels).

    A larger ``size`` must be a whole number of guide-patch fields of view (``size = n·k·tile``): the
    canvas is then ``n × n`` patches. This is geometry only (no model work); ``k`` may exceed the ratio one
    scale pair allows (the cascade of :func:`.joint.plan_stages` bridges it).
    """
    gmag = require_level(pipe, guide_mag, "guide magnification")
    tmag = require_level(pipe, target_mag, "target magnification")
    if gmag.domain != tmag.domain or gmag.downsample <= tmag.downsample:
        raise ConfigError(f"the coarse level {gmag} must be coarser than the target {tmag}")
    span = gmag.downsample // tmag.downsample * pipe.config.image_size
    if size <= span:
        return None
    if size % span:
        raise ConfigError(
            f"a {size}² image at {tmag} is larger than one {gmag} patch ({span}² px) and must be a whole "
            f"number of them (e.g. {(size // span + 1) * span})"
        )
    n = size // span
    return n, n


@dataclass(frozen=True)
class CoarseCost:
    """Work of the coarse stage: windows, UNet rows (cond and uncond count separately), VQ decoder passes
    (one per decode window), canvas latent shape and peak host memory of its buffers (MiB)."""

    windows: int
    steps: int
    unet_rows: int
    vq_passes: int
    latent_shape: tuple[int, int, int]
    buffers_mib: float


def coarse_window_stride(pipe, window_stride: int | None = None) -> int:
    """The window stride in latent px: ``window_stride``, by default ``L/4`` (see the module docstring)."""
    return window_stride or max(pipe.config.latent_size // 4, 1)


def coarse_windows(pipe, rows: int, cols: int, window_stride: int | None = None) -> torch.Tensor:
    """Top-left corners ``[N, 2]`` (y, x) in latent px of the canvas' windows, row-major."""
    L = pipe.config.latent_size
    stride = coarse_window_stride(pipe, window_stride)
    if not 1 <= stride <= L:
        raise ConfigError(f"the coarse window stride must be in 1..{L} latent px; got {stride}")
    ys, xs = window_starts(rows * L, L, stride), window_starts(cols * L, L, stride)
    return torch.tensor([(y, x) for y in ys for x in xs], dtype=torch.long)


def coarse_canvas_cost(
    pipe,
    rows: int,
    cols: int,
    config: JointSamplingConfig | None = None,
    decode: DecodeConfig | None = None,
    window_stride: int | None = None,
) -> CoarseCost:
    """What :func:`generate_coarse_canvas` + :func:`decode_coarse_canvas` cost (no model work)."""
    config = config or JointSamplingConfig()
    decode = decode or _decode_config(pipe)
    L, C = pipe.config.latent_size, pipe.unet.config.in_channels
    n = len(coarse_windows(pipe, rows, cols, window_stride))
    steps = len(range(config.t0, 0, -config.stride))
    per_row = 1 if config.guidance_w == 0 else 2
    dec = len(window_starts(rows * L, decode.window, decode.stride)) * len(
        window_starts(cols * L, decode.window, decode.stride)
    )
    canvas = C * rows * L * cols * L * 4
    contexts = n * 65 * pipe.config.context_dim * 4
    pixels = rows * cols * pipe.config.image_size**2 * 3 * 4
    return CoarseCost(
        n, steps, n * steps * per_row, dec, (C, rows * L, cols * L), (4 * canvas + contexts + pixels) / 2**20
    )


def check_coarse_grid(pipe, grid: torch.Tensor, mag: Magnification, rows: int, cols: int) -> None:
    """The reference grid must be the unpooled ``[C_ssl, rows·g, cols·g]`` base grid of the whole request
    (check it before any model work)."""
    g = mag.grid_size
    if grid.dim() != 3 or tuple(grid.shape[-2:]) != (rows * g, cols * g):
        raise InputError(
            f"the reference grid {tuple(grid.shape)} does not cover the coarse canvas of {rows}×{cols} {mag} "
            f"patches: it must be [C, {rows * g}, {cols * g}] ({g}×{g} base tiles per patch)"
        )
    if grid.shape[0] != pipe.config.ssl_channels:
        raise InputError(
            f"the reference grid has {grid.shape[0]} channels; the model expects {pipe.config.ssl_channels}"
        )


def _window_contexts(pipe, grid: torch.Tensor, mag: Magnification, positions: torch.Tensor) -> torch.Tensor:
    """Contexts ``[N, 65, D]``: each window's ``g × g`` region of the grid, prepared as the guide's."""
    L, g = pipe.config.latent_size, mag.grid_size
    grids = []
    for y, x in positions.tolist():
        if (y * g) % L == 0 and (x * g) % L == 0:
            r, c = y * g // L, x * g // L
            grids.append(prepare_grid(grid[:, r : r + g, c : c + g]))
        else:  # half a base tile (odd g): interpolated as the post-processing windows
            grids.append(window_grids(grid, torch.tensor([[y, x]]), L, mag)[0])
    return summarize(pipe, grids, mag)


def _tile_noise(shape, seed: int, stream: str, rows: int, cols: int, step: int) -> torch.Tensor:
    """``[1, C, rows·L, cols·L]``: patch ``(r, c)`` keyed by id ``r·cols + c`` and ``step``."""
    C, L = shape
    ids = list(range(rows * cols))
    noise = keyed_normal((C, L, L), seed, stream, ids, step)
    return noise.reshape(rows, cols, C, L, L).permute(2, 0, 3, 1, 4).reshape(1, C, rows * L, cols * L)


def generate_coarse_canvas(
    pipe,
    magnification: Magnification,
    grid: torch.Tensor,
    rows: int,
    cols: int,
    *,
    seed: int = 0,
    config: JointSamplingConfig | None = None,
    window_batch: int = 8,
    window_stride: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Sample a ``rows × cols``-patch latent canvas ``[C, rows·L, cols·L]`` (float32, CPU) at
    ``magnification`` by sliding-window joint denoising (see the module docstring).

    Args:
        pipe: a :class:`~zoomldm.ZoomLDMPipeline`.
        magnification: the (coarsest) level of the canvas, parsed (:mod:`.levels`).
        grid: the unpooled reference base grid ``[C_ssl, rows·g, cols·g]`` covering the whole request.
        rows, cols: the canvas in patches (:func:`coarse_canvas_needed`).
        seed: noise seed (patch- and step-keyed, streams ``guide_init`` / ``guide_step``).
        config: the strided grid, guidance and update of joint sampling (``t0``, ``stride``,
            ``guidance_w``, ``variance_preserving_update``; the Newton settings are not used).
        window_batch: windows per UNet call (each is 2 rows with guidance); does not change the noise.
        window_stride: in latent px (default ``L/4``); ``L`` tiles the canvas without overlap, i.e. samples
            the patches independently (the baseline of the seam test).
        progress: progress bar.
    """
    config = config or JointSamplingConfig()
    mag = require_level(pipe, magnification, "coarse magnification")
    if rows < 1 or cols < 1:
        raise ConfigError(f"the coarse canvas needs at least 1×1 patches; got {rows}×{cols}")
    if window_batch < 1:
        raise ConfigError(f"window_batch must be >= 1; got {window_batch}")
    check_coarse_grid(pipe, grid, mag, rows, cols)
    L, C, device = pipe.config.latent_size, pipe.unet.config.in_channels, pipe.device
    positions = coarse_windows(pipe, rows, cols, window_stride)
    count = torch.zeros(1, 1, rows * L, cols * L, device=device)
    for y, x in positions.tolist():
        count[..., y : y + L, x : x + L] += 1
    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    s_guid = config.guidance_w + 1.0
    order = positions.tolist()
    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext(), torch.no_grad():
        contexts = _window_contexts(pipe, grid, mag, positions).to(device=device, dtype=torch.float32)
        task = bar.add_task(f"coarse canvas {rows}×{cols}: steps", total=len(steps)) if bar else None
        x = _tile_noise((C, L), seed, "guide_init", rows, cols, 0).to(device)
        for step in steps:
            t = torch.tensor(float(step.t), device=device)  # float t, as the guide patch's ε
            eps_sum = torch.zeros_like(x)
            for i in range(0, len(order), window_batch):
                batch = order[i : i + window_batch]
                xw = torch.cat([x[..., y : y + L, xx : xx + L] for y, xx in batch])
                e = guided_eps(pipe.unet, xw, t, contexts[i : i + len(batch)], s_guid)
                for (y, xx), ew in zip(batch, e, strict=True):  # fixed (row-major) summation order
                    eps_sum[0, :, y : y + L, xx : xx + L] += ew
            eps = eps_sum / count
            x0 = predict_x0(x, eps, step)
            xi = _tile_noise((C, L), seed, "guide_step", rows, cols, step.index).to(device)
            x = strided_update(x0, eps, xi, step, config.variance_preserving_update)
            if bar:
                bar.advance(task)
    return x[0].float().cpu()


def _decode_config(pipe) -> DecodeConfig:
    L = pipe.config.latent_size
    return DecodeConfig(window=L, stride=max(L // 4, 1))


def decode_coarse_canvas(
    pipe, latent: torch.Tensor, decode: DecodeConfig | None = None, *, progress: bool = True
) -> np.ndarray:
    """The coarse canvas as the next stage's fixed guide: uint8 ``[rows·S, cols·S, 3]`` by the official
    sliding-window VQ decode (windows of one latent tile, stride 1/4, Gaussian blend; SPEC §4.4)."""
    return decode_large(pipe.vae, latent, decode or _decode_config(pipe), output="uint8", progress=progress)
