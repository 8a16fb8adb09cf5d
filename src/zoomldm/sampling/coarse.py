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

The canvas is decoded (the official sliding-window VQ decode, :func:`.decode.decode_large_to`) and serves
as the *fixed* guide of the next cascade stage, as a super-resolution input does. It runs out of core
(:mod:`.coarse_bands`): latents, window contexts and decoded pixels live in a zarr group of the run's
state, the sampler holds one window row and the bands it overlaps (O(width)), a crashed run resumes from
its last finished band, and the bands are sharded over the processes of a multi-GPU launch. The coarse
level is the coarsest one that two scale pairs reach from the target (:func:`.stages.coarse_level`):
0.15625x for 20x with 256² patches, 1.25x with the 64² patches of the small test model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..scales import Magnification
from .coarse_bands import grid_read_bytes, run_coarse_canvas
from .decode import DecodeConfig, decode_large, window_starts
from .levels import require_level
from .newton import JointSamplingConfig

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


#: band-sized ``[C, L, W]`` float32 tensors alive in the band sampler (:mod:`.coarse_bands`): the ε sums of
#: two bands, the latents of three and their concatenation (two), a finished band's ε, x̂0, noise, update
#: and its CPU copy (five), the noise generator's tile row and its slice (two)
COARSE_BAND_COPIES = 14


@dataclass(frozen=True)
class CoarseCost:
    """Work of the coarse stage: windows, UNet rows (cond and uncond count separately), VQ decoder passes
    (one per decode window), canvas latent shape; its peak host memory (MiB: the band sampler's buffers,
    without the networks' activations) and its disk (bytes: latents, contexts, pixels)."""

    windows: int
    steps: int
    unet_rows: int
    vq_passes: int
    latent_shape: tuple[int, int, int]
    buffers_mib: float
    disk_bytes: int = 0
    window_grid: tuple[int, int] = (0, 0)


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
    level: Magnification | None = None,
    window_batch: int = 8,
) -> CoarseCost:
    """What the coarse stage costs (no model work): its work, the band sampler's host buffers and its disk
    (:mod:`.coarse_bands`); ``level`` (the canvas' magnification) sizes the grid box a window chunk reads."""
    config = config or JointSamplingConfig()
    decode = decode or _decode_config(pipe)
    L, C = pipe.config.latent_size, pipe.unet.config.in_channels
    n = len(coarse_windows(pipe, rows, cols, window_stride))
    steps = len(range(config.t0, 0, -config.stride))
    per_row = 1 if config.guidance_w == 0 else 2
    dec = len(window_starts(rows * L, decode.window, decode.stride)) * len(
        window_starts(cols * L, decode.window, decode.stride)
    )
    D, g = pipe.config.context_dim, (level.grid_size if level is not None else 1)
    stride = coarse_window_stride(pipe, window_stride)
    n_wy = len(window_starts(rows * L, L, stride))
    n_wx = len(window_starts(cols * L, L, stride))
    band = C * L * cols * L * 4
    context_row = n_wx * 65 * D * 4
    step_tiles = max(g * stride // L, 1)
    grid_box = grid_read_bytes(pipe.config.ssl_channels, g, step_tiles, min(window_batch, n_wx))
    host = COARSE_BAND_COPIES * band + 2 * context_row + grid_box
    disk = 2 * C * rows * L * cols * L * 4 + n * 65 * D * 4 + rows * cols * pipe.config.image_size**2 * 3
    return CoarseCost(
        n, steps, n * steps * per_row, dec, (C, rows * L, cols * L), host / 2**20, disk, (n_wy, n_wx)
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
    folder: Path | None = None,
    fingerprint: str = "",
    fresh: bool = True,
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
        folder, fingerprint, fresh: where the canvas' zarr state lives (None: in memory) and whether a
            state there made with the same ``fingerprint`` is continued (:mod:`.coarse_bands`; the
            gigapixel path runs :func:`.coarse_bands.run_coarse_canvas` itself, with the decode).

    The whole latent is returned (O(canvas)): for canvases of any size use
    :func:`.coarse_bands.run_coarse_canvas`, which leaves it in its zarr group.
    """
    config = config or JointSamplingConfig()
    mag = require_level(pipe, magnification, "coarse magnification")
    if rows < 1 or cols < 1:
        raise ConfigError(f"the coarse canvas needs at least 1×1 patches; got {rows}×{cols}")
    if window_batch < 1:
        raise ConfigError(f"window_batch must be >= 1; got {window_batch}")
    check_coarse_grid(pipe, grid, mag, rows, cols)
    stride = coarse_window_stride(pipe, window_stride)
    coarse_windows(pipe, 1, 1, stride)  # validates the stride
    run = run_coarse_canvas(
        pipe,
        mag,
        grid,
        rows,
        cols,
        folder=folder,
        fingerprint=fingerprint,
        fresh=fresh,
        seed=seed,
        config=config,
        window_batch=window_batch,
        window_stride=stride,
        decode=None,
        progress=progress,
    )
    return torch.from_numpy(np.asarray(run.latent[:, :, :])).float()


def _decode_config(pipe) -> DecodeConfig:
    L = pipe.config.latent_size
    return DecodeConfig(window=L, stride=max(L // 4, 1))


def decode_coarse_canvas(
    pipe, latent: torch.Tensor, decode: DecodeConfig | None = None, *, progress: bool = True
) -> np.ndarray:
    """The coarse canvas as the next stage's fixed guide: uint8 ``[rows·S, cols·S, 3]`` by the official
    sliding-window VQ decode (windows of one latent tile, stride 1/4, Gaussian blend; SPEC §4.4)."""
    return decode_large(pipe.vae, latent, decode or _decode_config(pipe), output="uint8", progress=progress)
