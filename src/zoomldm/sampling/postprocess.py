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
  when the stride does not divide (never the case for whole tiles and the default stride).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..errors import ConfigError, InputError
from ..progress import make_progress, progress_enabled
from ..scales import Magnification
from .conditions import summarize, window_grids
from .decode import window_starts
from .guidance import guided_eps
from .levels import require_level
from .noise import keyed_normal
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


def window_positions(height: int, width: int, window: int, stride: int) -> torch.Tensor:
    """Top-left corners ``[N, 2]`` (y, x) of the windows, row-major."""
    if window > min(height, width):
        raise InputError(f"the canvas ({height}×{width} latent px) is smaller than the window ({window})")
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    return torch.tensor([(y, x) for y in ys for x in xs], dtype=torch.long)


def window_counts(height: int, width: int, positions: torch.Tensor, window: int) -> torch.Tensor:
    """How many windows cover each latent pixel ``[height, width]``."""
    count = torch.zeros(height, width)
    for y, x in positions.tolist():
        count[y : y + window, x : x + window] += 1
    return count


class _WindowContexts:
    """Window contexts, computed once and kept on the device when they fit the cache budget."""

    def __init__(self, pipe, grid, positions, tile_latent, target, interp, budget_mib, chunk) -> None:
        self.pipe, self.grid, self.positions = pipe, grid, positions
        self.tile_latent, self.target, self.threshold, self.chunk = tile_latent, target, interp, chunk
        size_mib = positions.shape[0] * 65 * pipe.config.context_dim * 4 / 2**20
        self.cache = None
        if size_mib <= budget_mib:
            self.cache = torch.cat(
                [
                    self._compute(torch.arange(i, min(i + chunk, len(positions))))
                    for i in range(0, len(positions), chunk)
                ]
            )

    def _compute(self, idx: torch.Tensor) -> torch.Tensor:
        grids = window_grids(self.grid, self.positions[idx], self.tile_latent, self.target, self.threshold)
        return summarize(self.pipe, grids, self.target)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.cache[idx] if self.cache is not None else self._compute(idx)


def postprocess_latent(
    pipe,
    latent: torch.Tensor,
    base_grid: torch.Tensor,
    *,
    target_magnification: Magnification | None = None,
    config: PostprocessConfig | None = None,
    seed: int = 0,
    unet=None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    start_step: int = 0,
    state: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Remove tile seams from a latent canvas ``[C, H, W]`` (H, W multiples of the latent tile size).

    ``base_grid`` is the ``[C_ssl, H/P·g, W/P·g]`` base grid of the canvas (the per-tile embeddings, or the
    inverted ones for super-resolution). Returns the new canvas (float32, CPU). ``unet`` is required with
    ``use_live_weights`` (the live UNet) and otherwise optional (default: the pipeline's UNet).
    """
    config = config or PostprocessConfig()
    if config.use_live_weights and unet is None:
        raise ConfigError(
            "use_live_weights needs the live UNet: pass unet=ZoomLDMPipeline.from_official(ckpt, ema=False).unet"
        )
    unet = unet or pipe.unet
    tmag = require_level(pipe, target_magnification, "target magnification")
    P = pipe.config.latent_size
    if latent.dim() == 4 and latent.shape[0] == 1:
        latent = latent[0]
    channels, height, width = latent.shape
    if height % P or width % P:
        raise InputError(f"the latent canvas {height}×{width} is not made of whole {P}-px tiles")
    g = tmag.grid_size
    if tuple(base_grid.shape[-2:]) != (height // P * g, width // P * g):
        raise InputError(
            f"the base grid {tuple(base_grid.shape[-2:])} does not match the canvas of "
            f"{height // P}×{width // P} tiles at {tmag} ({g}×{g} embeddings per tile)"
        )
    window, stride = config.resolved(P)
    device = pipe.device
    positions = window_positions(height, width, window, stride)
    count = window_counts(height, width, positions, window).to(device)
    chunk = max(1, min(256, 16384 // g**2))  # windows per grid interpolation (g² tokens each)
    contexts = _WindowContexts(
        pipe, base_grid, positions, P, tmag, INTERPOLATIONS[config.interp], config.context_cache_mib, chunk
    )
    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    s = config.guidance_w + 1.0

    # 1. re-noise to t0 (SPEC §4.5 step 1) — or continue a saved run
    if state is not None:
        x = state.float().to(device)
    else:
        a0 = steps[0].alpha
        xi = keyed_normal(latent.shape, seed, "post_init", [0], 0, device)[0]
        x = a0**0.5 * latent.float().to(device) + (1 - a0) ** 0.5 * xi
    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext(), torch.no_grad():
        outer = bar.add_task("post-processing steps", total=len(steps), completed=start_step) if bar else None
        inner = bar.add_task("windows", total=len(positions)) if bar else None
        for step in steps[start_step:]:
            x0_sum = torch.zeros_like(x)
            t = torch.tensor(float(step.t), device=device)
            if bar:
                bar.reset(inner, total=len(positions))
            for i in range(0, len(positions), config.window_batch):
                idx = torch.arange(i, min(i + config.window_batch, len(positions)))
                pos = positions[idx].tolist()
                xw = torch.stack([x[:, y : y + window, c : c + window] for y, c in pos])
                eps = guided_eps(unet, xw, t, contexts[idx], s)
                x0w = predict_x0(xw, eps, step)
                for (y, c), v in zip(pos, x0w, strict=True):
                    x0_sum[:, y : y + window, c : c + window] += v
                if bar:
                    bar.advance(inner, len(idx))
            x0 = x0_sum / count
            eps = (x - step.alpha**0.5 * x0) / (1 - step.alpha) ** 0.5
            xi = keyed_normal(x.shape, seed, "post_step", [0], step.index, device)[0]
            x = strided_update(x0, eps, xi, step, config.variance_preserving_update)
            if on_step is not None:
                on_step(step.index, x.cpu())
            if bar:
                bar.advance(outer)
    return x.cpu()
