"""Condition inversion (SPEC §5.1): find the base-resolution SSL grid that explains a low-resolution patch.

For a patch at magnification MAG (its latent ``z``), a free grid ``F ~ N(0, I)`` of shape ``[C, k, k]``
(``k = MAG.grid_size``: one embedding per base tile under the patch) is optimised with Adam so that the
frozen UNet, conditioned on ``Summarizer(standardise(F), MAG)``, predicts the noise of ``z``'s noised
versions. Iteration ``i`` uses ``t_i = int(linspace(950, 50, 200))[i]`` (coarse to fine), fresh noise ε and::

    x_t = √ā·z + √(1−ā)·ε                     (ā = alphas_cumprod[t − 1]; the UNet sees t)
    L   = mean(√ā·(1−ā)·(ε̂ − ε)²) − 0.05·mean(S)

with ``S`` the Gram matrix of the unit-normalised tokens of ``F`` (the second term rewards similar
neighbouring tiles). Only ``F`` is updated. Grids larger than the Summarizer accepts (k > 8, i.e. a 1.25x
input) are average-pooled to 8×8 *inside* the loop before standardising (the training order); the
official code fails there.

Weights: the official inversion calls the UNet outside ``ema_scope`` (live weights); we use the pipeline's
UNet (EMA when loaded with ``ema=True``) unless ``unet=`` is given — pass the live UNet
(``from_official(ckpt, ema=False).unet``) to reproduce the official choice. Patches are optimised in
batches of ``batch`` (independent problems: the batch loss is the sum of the per-patch losses, so each
grid gets its own gradient).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..progress import make_progress, progress_enabled
from ..scales import Magnification
from ..schedule import official_alphas_cumprod
from .guidance import unet_eps
from .levels import require_level
from .noise import keyed_normal


@dataclass
class InversionConfig:
    """Condition-inversion settings; defaults are the official values (SPEC §5.1, §11).

    Attributes:
        steps: Adam iterations.
        t_start, t_end: timesteps of the first and last iteration (``linspace``, cast to int).
        lr: Adam learning rate.
        sim_weight: weight of the token-similarity reward.
        batch: low-resolution patches optimised together.
    """

    steps: int = 200
    t_start: int = 950
    t_end: int = 50
    lr: float = 0.1
    sim_weight: float = 0.05
    batch: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"inversion steps must be >= 1; got {self.steps}")
        if not (1 <= self.t_end <= 1000 and 1 <= self.t_start <= 1000):
            raise ConfigError(f"inversion timesteps must be in 1..1000; got {self.t_start}..{self.t_end}")
        if not 0 < self.lr < math.inf:  # NaN fails every comparison
            raise ConfigError(f"inversion lr (--inversion-lr) must be > 0 and finite; got {self.lr}")
        if not -math.inf < self.sim_weight < math.inf:
            raise ConfigError(f"sim_weight (--sim-weight) must be finite; got {self.sim_weight}")
        if self.batch < 1:
            raise ConfigError(f"inversion batch must be >= 1; got {self.batch}")

    def timesteps(self) -> list[int]:
        return [int(t) for t in np.linspace(self.t_start, self.t_end, self.steps).astype(int)]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InversionResult:
    """Inverted grids ``[N, C, k, k]`` (standardised per token, CPU) and the mean loss per iteration."""

    grids: torch.Tensor
    losses: list[float] = field(default_factory=list)


def conditioning_grid(free: torch.Tensor, max_side: int = 8) -> torch.Tensor:
    """``[B, C, k, k]`` free grids → what the Summarizer gets: pooled to ≤ ``max_side`` (only k > 8), then
    standardised per token (unbiased std + 1e-8, as :func:`zoomldm.conditioning.prepare_grid`)."""
    k = free.shape[-1]
    g = F.adaptive_avg_pool2d(free, (max_side, max_side)) if k > max_side else free
    return (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True) + 1e-8)


def token_similarity(free: torch.Tensor) -> torch.Tensor:
    """Mean of the Gram matrix of the unit-normalised tokens of each grid ``[B, C, k, k]`` → ``[B]``."""
    tokens = free.flatten(2)  # [B, C, n]
    unit = tokens / tokens.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (unit.transpose(1, 2) @ unit).mean(dim=(1, 2))


def inversion_loss(
    pipe,
    latents: torch.Tensor,
    free: torch.Tensor,
    t: int,
    noise: torch.Tensor,
    magnification: Magnification,
    sim_weight: float = 0.05,
    unet=None,
) -> torch.Tensor:
    """Per-patch loss ``[B]`` of SPEC §5.1 at timestep ``t`` with noise ``noise`` (differentiable in ``free``)."""
    ac = official_alphas_cumprod(pipe.config.schedule)
    a = float(ac[t - 1])
    x_t = a**0.5 * latents + (1 - a) ** 0.5 * noise
    summarizer = pipe.summarizer
    ctx = summarizer(conditioning_grid(free, summarizer.max_side).to(summarizer.dtype), magnification.index)
    t_in = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
    eps_hat = unet_eps(unet or pipe.unet, x_t, t_in, ctx)
    weighted = (a**0.5 * (1 - a)) * (eps_hat - noise) ** 2
    return weighted.flatten(1).mean(dim=1) - sim_weight * token_similarity(free)


def invert_conditions(
    pipe,
    images: torch.Tensor,
    magnification: Magnification,
    *,
    config: InversionConfig | None = None,
    seed: int = 0,
    unet=None,
    patch_ids: list[int] | None = None,
    progress: bool = True,
) -> InversionResult:
    """Invert the base grids of low-resolution patches ``images`` ``[N, 3, S, S]`` in [-1, 1] at
    ``magnification``. ``patch_ids`` key the noise (default 0..N−1). Returns standardised grids
    ``[N, C, k, k]`` with ``k = magnification.grid_size``."""
    config = config or InversionConfig()
    mag = require_level(pipe, magnification, "magnification")
    size = pipe.config.image_size
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise InputError(f"inversion needs patches [N, 3, {size}, {size}]; got {tuple(images.shape)}")
    ids = list(range(images.shape[0])) if patch_ids is None else list(patch_ids)
    k, channels = mag.grid_size, pipe.config.ssl_channels
    ts = config.timesteps()
    device = pipe.device
    grids, history = [], np.zeros(len(ts))
    batches = [list(range(i, min(i + config.batch, len(ids)))) for i in range(0, len(ids), config.batch)]
    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext():
        task = bar.add_task("condition inversion", total=len(ts) * len(batches)) if bar else None
        for batch in batches:
            bids = [ids[i] for i in batch]
            latents = pipe.encode_images(images[batch].to(device))
            free = keyed_normal((channels, k, k), seed, "inversion_init", bids, 0, device).requires_grad_(
                True
            )
            opt = torch.optim.Adam([free], lr=config.lr)
            for i, t in enumerate(ts):
                noise = keyed_normal(latents.shape[1:], seed, "inversion_step", bids, i, device)
                with torch.enable_grad():
                    loss = inversion_loss(pipe, latents, free, t, noise, mag, config.sim_weight, unet)
                    (grad,) = torch.autograd.grad(loss.sum(), [free])  # no gradients for the frozen weights
                opt.zero_grad(set_to_none=True)
                free.grad = grad
                opt.step()
                history[i] += float(loss.detach().sum())
                if bar:
                    bar.advance(task)
            with torch.no_grad():
                grids.append(conditioning_grid(free.detach(), max_side=k).cpu())
    return InversionResult(torch.cat(grids), (history / len(ids)).tolist())
