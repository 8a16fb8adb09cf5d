"""The noise schedule and the diffusers schedulers configured exactly as the official samplers.

The official schedule ("linear" in LDM, ``scaled_linear`` in diffusers) is
``betas = linspace(√0.0015, √0.0195, 1000, float64)²``; the checkpoint stores it as float32 buffers
computed in float64 (SPEC §2.4). diffusers recomputes ``alphas_cumprod`` in float32 (up to 2.7e-7 off),
so we overwrite it with the float64-derived values: the official buffers, bit for bit.

Scheduler settings (../shared/compat/DIFFUSERS.md): uniform "leading" spacing with ``steps_offset=1``
(timesteps 981, 961, …, 1 for 50 steps), ``set_alpha_to_one=False`` (the last step ends at ᾱ_0),
``clip_sample=False``. PLMS = ``PNDMScheduler(skip_prk_steps=True)`` (the authors' notebooks).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from .errors import ZoomLDMError


def official_betas(schedule: dict[str, Any]) -> torch.Tensor:
    """float64 betas of the official linear-in-sqrt schedule."""
    start, end, n = schedule["beta_start"], schedule["beta_end"], schedule["num_train_timesteps"]
    return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2


def official_alphas_cumprod(schedule: dict[str, Any]) -> torch.Tensor:
    """float32 ``alphas_cumprod`` exactly as the official checkpoint buffer (computed in float64)."""
    return torch.cumprod(1.0 - official_betas(schedule), dim=0).to(torch.float32)


def _common(schedule: dict[str, Any]) -> dict[str, Any]:
    return dict(
        num_train_timesteps=schedule["num_train_timesteps"],
        beta_start=schedule["beta_start"],
        beta_end=schedule["beta_end"],
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )


def _ddim(schedule: dict[str, Any]):
    return DDIMScheduler(
        **_common(schedule),
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def _plms(schedule: dict[str, Any]):
    return PNDMScheduler(
        **_common(schedule),
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def _dpm(schedule: dict[str, Any]):
    # DPM-Solver++ (2M) is not in the official code; "leading" spacing keeps its timesteps on the same grid
    return DPMSolverMultistepScheduler(
        **_common(schedule),
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="leading",
        steps_offset=1,
    )


#: scheduler name -> factory (a dict rather than if/elif, so the CLI can list the choices)
SCHEDULERS = {"ddim": _ddim, "plms": _plms, "pndm": _plms, "dpm++": _dpm, "dpmsolver++": _dpm}


def make_scheduler(name: str, schedule: dict[str, Any]):
    """A fresh diffusers scheduler ``name`` (ddim, plms/pndm, dpm++) on the official schedule."""
    try:
        factory = SCHEDULERS[name.lower()]
    except KeyError:
        raise ZoomLDMError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}") from None
    scheduler = factory(schedule)
    exact = official_alphas_cumprod(schedule)
    if isinstance(scheduler, DDIMScheduler | PNDMScheduler):
        scheduler.alphas_cumprod = exact
        scheduler.final_alpha_cumprod = exact[0]  # set_alpha_to_one=False: the official alphas_prev[0]
    return scheduler
