"""The strided time grid of the large-image samplers (SPEC §4.3, §4.5) and their shared update rules.

Joint sampling, super-resolution and post-processing step through ``t = t0, t0 − stride, …, stride`` with
the authors' quirk: the UNet is called with ``t`` while the coefficients are read at index ``t − 1``::

    ā      = alphas_cumprod[t − 1]
    ā_prev = alphas_cumprod[max(t − 1 − stride, 0)]
    β̃      = betas[t − 1]·(1 − ā_prev)/(1 − ā)        # the single-step β, not the strided posterior

(at t = 1000 the UNet sees a timestep one beyond its training range; reproduced for compatibility). No
diffusers scheduler has this grid, so it lives here; the ε evaluation is the shared
:func:`zoomldm.sampling.guidance.guided_eps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ZoomLDMError
from ..schedule import official_alphas_cumprod, official_betas


@dataclass(frozen=True)
class StridedStep:
    """One step of the strided grid: the UNet timestep and the coefficients (python floats)."""

    index: int
    t: int
    alpha: float
    alpha_prev: float
    beta_tilde: float


def strided_steps(schedule: dict[str, Any], t0: int, stride: int) -> list[StridedStep]:
    """The steps ``t0, t0 − stride, …`` (> 0) with the coefficients of SPEC §4.3, from the official
    float32 buffers (``alphas_cumprod`` computed in float64 then cast, as the checkpoint stores them)."""
    total = int(schedule["num_train_timesteps"])
    if not 1 <= t0 <= total:
        raise ZoomLDMError(f"t0 must be in 1..{total}; got {t0}")
    if not 1 <= stride <= t0:
        raise ZoomLDMError(f"stride must be in 1..t0 ({t0}); got {stride}")
    ac = official_alphas_cumprod(schedule).double()
    betas = official_betas(schedule).float().double()
    steps = []
    for i, t in enumerate(range(t0, 0, -stride)):
        a = float(ac[t - 1])
        a_prev = float(ac[max(t - 1 - stride, 0)])
        beta_tilde = float(betas[t - 1]) * (1.0 - a_prev) / (1.0 - a)
        steps.append(StridedStep(i, t, a, a_prev, beta_tilde))
    return steps


def predict_x0(x: torch.Tensor, eps: torch.Tensor, step: StridedStep) -> torch.Tensor:
    """``x̂0 = (x − √(1−ā)·ε)/√ā``."""
    return (x - (1.0 - step.alpha) ** 0.5 * eps) / step.alpha**0.5


def strided_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
    step: StridedStep,
    variance_preserving: bool = True,
) -> torch.Tensor:
    """``x_prev = √ā_prev·x̂0 + c·ε + √β̃·ξ`` with ``c = √(1 − ā_prev − β̃)`` (variance preserving, the
    FCS / official post-processing form, default) or ``c = √(1 − ā_prev)`` (the Colab notebook's form)."""
    c = 1.0 - step.alpha_prev - (step.beta_tilde if variance_preserving else 0.0)
    return step.alpha_prev**0.5 * x0 + max(c, 0.0) ** 0.5 * eps + step.beta_tilde**0.5 * noise
