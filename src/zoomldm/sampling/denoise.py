"""The one denoising loop over a diffusers scheduler (patch sampling, CDM-conditioned sampling, tests).

Joint multi-scale sampling and post-processing use their own time grid (SPEC §4.3 passes ``t`` to the
UNet with coefficients at ``t − 1``, which no diffusers scheduler does) but share :func:`guided_eps`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..progress import track
from .guidance import guided_eps

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def denoise(
    unet,
    scheduler,
    latents: torch.Tensor,
    context: torch.Tensor,
    num_inference_steps: int = 50,
    guidance_scale: float = 2.0,
    uncond: torch.Tensor | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Run the guided reverse process from ``latents`` (x_T) and return x_0 (float32).

    ``callback(i, t, x_t, eps)`` is called before each scheduler step (x_t is the input of the call).
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    accepted = set(inspect.signature(scheduler.step).parameters)
    extra = {k: v for k, v in {"eta": eta, "generator": generator}.items() if k in accepted}
    x = latents.float() * scheduler.init_noise_sigma
    for i, t in enumerate(track(scheduler.timesteps, "denoising", enabled=progress)):
        x_in = scheduler.scale_model_input(x, t)
        eps = guided_eps(unet, x_in, t, context, guidance_scale, uncond, chunk_size)
        if callback is not None:
            callback(i, int(t), x, eps)
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x
