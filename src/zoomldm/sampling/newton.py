"""The inexact-Newton tile update of joint sampling (SPEC §4.3) and its settings.

This is the piece both :mod:`.constrained` (the sampler that runs it over all tiles and steps) and
:mod:`.memory` (which measures its peak memory to size GPU batches) need; it lives here so that neither of
those modules imports the other (they used to import each other inside functions: an import cycle).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..errors import ConfigError
from .guidance import guided_eps
from .strided import StridedStep, predict_x0

__all__ = ["JointSamplingConfig", "inf_normalize", "newton_constrain"]


@dataclass
class JointSamplingConfig:
    """Hyper-parameters of joint multi-scale sampling; defaults are the official values (SPEC §4.2, §11).

    Attributes:
        t0: first timestep (the UNet sees ``t0``; coefficients at ``t0 − 1``).
        stride: timestep stride (20 outer steps for 1000/50).
        guidance_w: ``w`` in ``(w+1)·ε_c − w·ε_u`` (w = 2 ⇔ s = 3).
        h: finite-difference step of both Jacobian-vector products.
        lr: Newton update rate.
        inner_steps: Newton iterations per tile per outer step (0 = unconstrained tiles).
        tile_batch: tiles per batch (each batch is ``2·tile_batch`` UNet rows: cond + uncond), or
            ``"auto"``: the most that fit in the free GPU memory (:func:`.memory.auto_tile_batch`; 16 on a
            CPU). A fixed number keeps results bitwise repeatable across machines of one kind.
        variance_preserving_update: ``√(1−ā_prev−β̃)·ε`` (official post-processing / FCS) instead of the
            Colab notebook's ``√(1−ā_prev)·ε``.
        newton_max_t: Newton iterations only at the outer steps with ``t ≤ newton_max_t`` (1000, the
            default: at every step, as the authors do). Not in the paper: on a small model (the embedded
            one) the fixed-size ∞-normalised push at high t, where x̂0 is a blur and the finite-difference
            Jacobian mostly noise, turns tiles into blobs; iterations late in the schedule still pull the
            tiles toward the guide and keep them tissue (docs/embedded_model.md, measured).
    """

    t0: int = 1000
    stride: int = 50
    guidance_w: float = 2.0
    h: float = 0.005
    lr: float = 0.5
    inner_steps: int = 10
    tile_batch: int | str = 16
    variance_preserving_update: bool = True
    newton_max_t: int = 1000

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ConfigError(f"inner_steps must be >= 0; got {self.inner_steps}")
        if self.tile_batch != "auto" and not (isinstance(self.tile_batch, int) and self.tile_batch >= 1):
            raise ConfigError(f"tile_batch must be an integer >= 1 or 'auto'; got {self.tile_batch!r}")
        # written as "not (valid)" so that NaN (every comparison False) is refused too, and inf explicitly
        if not 0 < self.h < math.inf:
            raise ConfigError(
                f"the finite-difference step h (--fd-step) must be > 0 and finite; got {self.h}"
            )
        if not 0 <= self.guidance_w < math.inf:
            raise ConfigError(
                f"guidance_w (--guidance-w) must be >= 0 and finite (w = s − 1); got {self.guidance_w}"
            )
        if not 0 <= self.lr < math.inf:
            raise ConfigError(f"lr (--newton-lr) must be >= 0 and finite; got {self.lr}")
        if not 1 <= self.stride <= self.t0 <= 1000:
            raise ConfigError(f"need 1 <= stride <= t0 <= 1000; got t0={self.t0}, stride={self.stride}")
        if not (isinstance(self.newton_max_t, int) and 0 <= self.newton_max_t <= 1000):
            raise ConfigError(
                f"newton_max_t (--newton-max-t) must be an integer timestep in 0..1000; got {self.newton_max_t!r}"
            )

    def iterations_at(self, t: int) -> int:
        """Newton iterations at the outer step whose UNet timestep is ``t``."""
        return self.inner_steps if t <= self.newton_max_t else 0

    def to_dict(self) -> dict:
        return asdict(self)


def inf_normalize(v: torch.Tensor) -> torch.Tensor:
    """``N(v)``: each sample divided by its max-abs value (a zero sample stays zero)."""
    scale = v.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / scale.view(-1, *([1] * (v.dim() - 1)))


class _Ops:
    """VQ and UNet calls of the sampler on the pipeline's devices and dtypes."""

    def __init__(self, pipe, unet, guidance_w: float) -> None:
        self.pipe, self.unet, self.s = pipe, unet, guidance_w + 1.0
        self.vae_dtype = next(pipe.vae.parameters()).dtype
        self.unet_forwards = 0  # UNet rows evaluated (cond and uncond rows count separately)
        self.vq_passes = 0  # images through the VQ encoder or decoder

    def eps(self, x: torch.Tensor, step: StridedStep, context: torch.Tensor) -> torch.Tensor:
        t = torch.tensor(float(step.t), device=x.device)  # float t, as the official model_pred
        self.unet_forwards += x.shape[0] * (1 if self.s == 1.0 else 2)
        return guided_eps(self.unet, x, t, context, self.s)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.vq_passes += z.shape[0]
        return self.pipe.vae.decode(z.to(self.vae_dtype)).sample.float()  # quantising, not clamped

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        self.vq_passes += img.shape[0]
        return self.pipe.vae.encode(img.to(self.vae_dtype)).latents.float()


def newton_constrain(
    ops: _Ops,
    x: torch.Tensor,
    context: torch.Tensor,
    target: torch.Tensor,
    step: StridedStep,
    config: JointSamplingConfig,
    down: Callable,
    up: Callable,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One outer step's tile update of SPEC §4.3 for a batch: returns ``(x, ε, x̂0)`` after the Newton
    iterations that pull ``down(decode(x̂0))`` toward ``target`` (the footprints ``[B,3,S/k,S/k]``)."""
    eps = ops.eps(x, step, context)
    x0 = predict_x0(x, eps, step)
    h = config.h
    for _ in range(config.iterations_at(step.t)):
        img = ops.decode(x0)
        e_im = inf_normalize(up(target - down(img)))
        z, z_h = ops.encode(torch.cat([img, img + h * e_im])).chunk(2)  # both encoder passes in one call
        e_z = inf_normalize(z_h - z)
        x_h = x + h * e_z
        x0_h = predict_x0(x_h, ops.eps(x_h, step, context), step)
        x = x + config.lr * inf_normalize((x0_h - x0) / h)
        eps = ops.eps(x, step, context)
        x0 = predict_x0(x, eps, step)
    return x, eps, x0
