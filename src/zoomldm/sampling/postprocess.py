"""Seam removal after joint sampling (SPEC §4.5): partial re-noising, then sliding-window denoising with
slerp-interpolated conditions and uniform x̂0 averaging.

1. ``x = √ā[t0−1]·z + √(1−ā[t0−1])·ξ`` over the whole latent canvas (t0 = 300);
2. one condition per window, computed once: the window's grid interpolated from the nearest tile
   embeddings (:func:`.conditions.window_grids`), standardised, Summarizer at the target level;
3. per strided step (t = 300, 250, …, 50; UNet at t, coefficients at t − 1): ε of every window with
   ``(1+g)·ε_c − g·ε_u``, ``x̂0`` per window averaged uniformly over overlapping windows, ε recomputed from
   the averaged x̂0, and the variance-preserving update ``√ā_prev·x̂0 + √(1−ā_prev−β̃)·ε + √β̃·ξ``.

Differences from the official ``postprocess.py`` (both are options or have no effect on the result):

* weights: the official code calls the **live** UNet (it does not enter ``ema_scope``); we use the
  pipeline's UNet (EMA when loaded with ``ema=True``, as every other sampler). ``use_live_weights=True``
  reproduces the official choice; because a pipeline holds one UNet, the caller then passes the live UNet
  (``ZoomLDMPipeline.from_official(ckpt, ema=False).unet``) as ``unet=``;
* the official code runs all windows (×2 for guidance) as one batch (3,721 windows at 4096²); we run
  ``window_batch`` windows at a time, and keep the window contexts on the device only while they fit
  ``context_cache_mib`` (otherwise they are recomputed per chunk — same values);
* the window grid: positions ``range(0, H − window + 1, stride)``, plus one window aligned to the far edge
  when the stride does not divide (never the case for whole tiles and the default stride);
* out of core (:func:`postprocess_canvas`): the canvas is read and written in row bands of zarr arrays and
  the x̂0 sums live in a band one window high, so memory does not grow with the image height; the
  sums are made in the same window order, and the count map is the (exact) product of the two 1-D counts;
* the noise ξ (re-noising and every step) is keyed per canvas tile and step (:mod:`.noise`), not one draw
  of the whole canvas, so that a band's noise is drawn without the rest (a different draw than the
  official ``randn_like``, the same distribution).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..progress import make_progress, progress_enabled
from ..scales import Magnification
from .canvas import LatentView
from .decode import window_starts
from .guidance import guided_eps
from .levels import require_level
from .post_bands import _PostBuffers, _RowReader, _TileNoise
from .post_windows import (
    _axis_counts,
    _WindowContexts,
    window_counts,  # noqa: F401 - re-exported: its old home
    window_positions,  # noqa: F401 - re-exported: its old home
)
from .strided import predict_x0, strided_steps, strided_update

INTERPOLATIONS = {"slerp": 0.9995, "linear": -1.0}  # interp → slerp dot threshold (−1: always linear)


@dataclass
class PostprocessConfig:
    """Post-processing settings; defaults are the official values (SPEC §4.5, §11).

    Attributes:
        t0, stride: re-noising level and the strided grid (6 steps for 300/50).
        guidance_w: ``g`` in ``(1+g)·ε_c − g·ε_u``.
        window: window size in latent pixels (None: the model's latent tile size, 64 for the published
            models).
        window_stride: window stride in latent pixels (None: window/4, i.e. 16).
        interp: ``"slerp"`` (official) or ``"linear"`` interpolation of the tile embeddings.
        window_batch: windows per UNet call (each window is 2 rows: cond + uncond).
        use_live_weights: the official quirk (live instead of EMA UNet); needs ``unet=`` (the live UNet).
        variance_preserving_update: the official post-processing update (keep True).
        context_cache_mib: keep all window contexts on the device up to this size.
    """

    t0: int = 300
    stride: int = 50
    guidance_w: float = 2.0
    window: int | None = None
    window_stride: int | None = None
    interp: str = "slerp"
    window_batch: int = 16
    use_live_weights: bool = False
    variance_preserving_update: bool = True
    context_cache_mib: float = 2048.0

    def __post_init__(self) -> None:
        if self.interp not in INTERPOLATIONS:
            raise ConfigError(f"interp must be one of {', '.join(INTERPOLATIONS)}; got {self.interp!r}")
        if self.window_batch < 1:
            raise ConfigError(f"window_batch must be >= 1; got {self.window_batch}")
        if not 0 <= self.guidance_w < math.inf:  # NaN fails every comparison
            raise ConfigError(
                f"post-processing guidance_w (--post-guidance-w) must be >= 0 and finite; got {self.guidance_w}"
            )
        if not 1 <= self.stride <= self.t0 <= 1000:
            raise ConfigError(f"need 1 <= stride <= t0 <= 1000; got t0={self.t0}, stride={self.stride}")
        if self.window is not None and (self.window < 8 or self.window % 8):
            raise ConfigError(f"window must be a multiple of 8 latent pixels; got {self.window}")
        if self.window_stride is not None and self.window_stride < 1:
            raise ConfigError(f"window_stride must be >= 1; got {self.window_stride}")

    def resolved(self, latent_size: int) -> tuple[int, int]:
        """``(window, stride)`` in latent pixels for a model with ``latent_size`` tiles."""
        window = self.window or latent_size
        stride = self.window_stride or max(window // 4, 1)
        if stride > window:
            raise ConfigError(f"window_stride {stride} must not exceed the window {window}")
        return window, stride

    def to_dict(self) -> dict:
        return asdict(self)


def _check_canvas(pipe, shape, base_grid, tmag) -> tuple[int, int, int]:
    P = pipe.config.latent_size
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    channels, height, width = (int(v) for v in shape)
    if height % P or width % P:
        raise InputError(f"the latent canvas {height}×{width} is not made of whole {P}-px tiles")
    g = tmag.grid_size
    if tuple(base_grid.shape[-2:]) != (height // P * g, width // P * g):
        raise InputError(
            f"the base grid {tuple(base_grid.shape[-2:])} does not match the canvas of "
            f"{height // P}×{width // P} tiles at {tmag} ({g}×{g} embeddings per tile)"
        )
    return channels, height, width


def _post_step(unet, step, src, dst, xi, contexts, order, counts, window, config, advance) -> None:
    """One strided step of SPEC §4.5 over the canvas, window row by window row (see
    :func:`postprocess_canvas`): ``src`` reads the canvas at the step's start, ``dst`` receives the next."""
    count_y, count_x = counts
    device = count_y.device
    channels, width = dst.shape[0], dst.shape[2]
    t = torch.tensor(float(step.t), device=device)
    s_guid = config.guidance_w + 1.0
    acc = torch.zeros(channels, window, width, device=device)  # x̂0 sums of rows [top, top + window)
    top = emitted = 0

    def flush(upto: int) -> None:
        nonlocal acc, emitted
        n = upto - emitted
        if n <= 0:
            return
        x = src.rows(emitted, upto).to(device)
        x0 = acc[:, :n] / (count_y[emitted:upto, None] * count_x[None, :])
        eps = (x - step.alpha**0.5 * x0) / (1 - step.alpha) ** 0.5
        noise = xi.rows(emitted, upto).to(device)
        new = strided_update(x0, eps, noise, step, config.variance_preserving_update)
        dst[:, emitted:upto, :] = new.cpu().numpy()
        acc = torch.cat([acc[:, n:], torch.zeros_like(acc[:, :n])], dim=1)
        emitted = upto

    for i in range(0, len(order), config.window_batch):
        batch = order[i : i + config.window_batch]
        base = min(emitted, batch[0][0])
        rows = src.rows(base, batch[-1][0] + window)
        xw = torch.stack([rows[:, y - base : y - base + window, x : x + window] for y, x, _ in batch]).to(
            device
        )
        ctx = torch.cat([contexts.row(y)[j : j + 1] for y, _, j in batch])
        x0w = predict_x0(xw, guided_eps(unet, xw, t, ctx, s_guid), step)
        for (y, x, _), v in zip(batch, x0w, strict=True):
            if y != top:  # first window of a new window row: the rows above it are final
                flush(y)
                top = y
            acc[:, y - top : y - top + window, x : x + window] += v
        advance(len(batch))
    flush(dst.shape[1])


def postprocess_latent(
    pipe,
    latent: torch.Tensor,
    base_grid: torch.Tensor,
    *,
    target_magnification: Magnification | None = None,
    config: PostprocessConfig | None = None,
    seed: int = 0,
    unet=None,
    progress: bool = True,
) -> torch.Tensor:
    """Remove tile seams from a latent canvas ``[C, H, W]`` (H, W multiples of the latent tile size).

    ``base_grid`` is the ``[C_ssl, H/P·g, W/P·g]`` base grid of the canvas (the per-tile embeddings, or the
    inverted ones for super-resolution). Returns the new canvas (float32, CPU). ``unet`` is required with
    ``use_live_weights`` (the live UNet) and otherwise optional (default: the pipeline's UNet). This is
    :func:`postprocess_canvas` in memory; the noise is keyed by the canvas' own tile ids.
    """
    if latent.dim() == 4 and latent.shape[0] == 1:
        latent = latent[0]
    view = postprocess_canvas(
        pipe,
        latent,
        base_grid,
        target_magnification=target_magnification,
        config=config,
        seed=seed,
        unet=unet,
        progress=progress,
    )
    return torch.from_numpy(np.ascontiguousarray(view[:, :, :]))


def postprocess_canvas(
    pipe,
    latent,
    base_grid: torch.Tensor,
    *,
    target_magnification: Magnification | None = None,
    config: PostprocessConfig | None = None,
    seed: int = 0,
    unet=None,
    folder: Path | None = None,
    key: str = "",
    fresh: bool = False,
    tile_origin: tuple[int, int] = (0, 0),
    tiles_per_row: int | None = None,
    progress: bool = True,
):
    """Seam removal (SPEC §4.5) out of core: ``latent`` ``[C, H, W]`` (tensor, zarr array or
    :class:`~.canvas.LatentView`) is read in row bands and the result is a zarr array ``[C, H, W]``
    (in ``folder``, or in memory), returned.

    Each step slides the windows row by row (row-major, ``window_batch`` at a time, as the in-memory
    loop): the x̂0 sums live in a band of one window height × the width, and rows that no later window
    touches are finished — divided by their (separable) window count, updated, written. Memory is a few
    window heights × the width, whatever the height; the window contexts are kept across steps only while
    all of them fit ``config.context_cache_mib``. The noise ξ is keyed per canvas tile: ``tile_origin`` and
    ``tiles_per_row`` place the canvas in the full image's tile grid (region requests draw the full
    image's noise for their tiles). With ``folder``, each finished step is recorded there and a rerun with
    the same ``key`` continues after the last finished step (``fresh`` starts over).
    """
    config = config or PostprocessConfig()
    if config.use_live_weights and unet is None:
        raise ConfigError(
            "use_live_weights needs the live UNet: pass unet=ZoomLDMPipeline.from_official(ckpt, ema=False).unet"
        )
    unet = unet or pipe.unet
    tmag = require_level(pipe, target_magnification, "target magnification")
    P = pipe.config.latent_size
    channels, height, width = _check_canvas(pipe, tuple(latent.shape), base_grid, tmag)
    if len(latent.shape) == 4:
        latent = latent[0]
    window, stride = config.resolved(P)
    if window > min(height, width):
        raise InputError(f"the canvas ({height}×{width} latent px) is smaller than the window ({window})")
    device = pipe.device
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    count_y, count_x = _axis_counts(height, ys, window).to(device), _axis_counts(width, xs, window).to(device)
    g = tmag.grid_size
    chunk = max(1, min(256, 16384 // g**2))  # windows per grid interpolation (g² tokens each)
    contexts = _WindowContexts(
        pipe, base_grid, xs, P, tmag, INTERPOLATIONS[config.interp], config.context_cache_mib, chunk, len(ys)
    )
    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    tiles_per_row = tiles_per_row or width // P
    shape = (channels, height, width)
    buffers = _PostBuffers(folder, shape, key, fresh, stride)
    order = [(y, x, j) for y in ys for j, x in enumerate(xs)]  # row-major, as the official loop
    band_rows = max(stride, 1)

    def noise(stream: str, step_index: int) -> _TileNoise:
        return _TileNoise(seed, stream, step_index, shape, P, tiles_per_row, tile_origin)

    done = buffers.done_steps()
    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext(), torch.no_grad():
        outer = bar.add_task("post-processing: steps", total=len(steps), completed=done) if bar else None
        inner = bar.add_task("post-processing: windows", total=len(order)) if bar else None
        if done == 0:  # 1. re-noise to t0 (SPEC §4.5 step 1), band by band into buffer 0
            a0 = steps[0].alpha
            xi, source, target = noise("post_init", 0), _RowReader(latent), buffers.array(0)
            for a in range(0, height, band_rows * 4):
                b = min(height, a + band_rows * 4)
                x = a0**0.5 * source.rows(a, b).to(device) + (1 - a0) ** 0.5 * xi.rows(a, b).to(device)
                target[:, a:b, :] = x.cpu().numpy()
        for s in range(done, len(steps)):
            if bar:
                bar.reset(inner, total=len(order))
                bar.update(inner, description=f"post-processing: step {s + 1}/{len(steps)}, windows")
            _post_step(
                unet,
                steps[s],
                _RowReader(buffers.array(s)),
                buffers.array(s + 1),
                noise("post_step", steps[s].index),
                contexts,
                order,
                (count_y, count_x),
                window,
                config,
                lambda n: bar.advance(inner, n) if bar else None,
            )
            buffers.mark(s)
            if bar:
                bar.advance(outer)
    return LatentView(buffers.array(len(steps)), 0, 0, height, width)
