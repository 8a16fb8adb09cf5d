"""Sample generators for FID: unconditional patches from the CDM + ZoomLDM (the authors' CDM protocol).

A generator is ``generator(start, count)`` → uint8 ``[count, H, W, 3]`` for sample indices
``start … start + count − 1``; every batch is seeded from ``seed + start`` (CDM noise and UNet noise),
so :func:`~zoomldm.evaluation.fid.write_generated_samples` can resume after a crash and make exactly the
images an uninterrupted run would have made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ZoomLDMError


def cdm_patch_generator(
    pipe: Any,
    cdm: Any,
    magnification: Any,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.75,
    scheduler: str = "plms",
    cdm_steps: int = 200,
    seed: int = 0,
) -> Any:
    """``generator(start, count)``: CDM tokens (DDIM, ``cdm_steps``) → ``pipe(context=tokens)``.

    Defaults are the authors' ``cdm_measure_fid.py``: CDM DDIM 200 steps (eta 0), then ZoomLDM PLMS 50
    steps with guidance s = 1.75 (zero context as the unconditional branch).
    """
    from ..models.cdm_diffusion import sample_cdm

    level = pipe.magnification(magnification)
    if cdm.config.token_dim != pipe.config.context_dim:
        raise ZoomLDMError(
            f"the CDM makes {cdm.config.token_dim}-d tokens but the UNet's context is {pipe.config.context_dim}-d"
        )
    if cdm.config.num_magnifications != len(pipe.scales):
        raise ZoomLDMError(
            f"the CDM knows {cdm.config.num_magnifications} magnifications, the ZoomLDM {len(pipe.scales)}"
        )
    device = next(cdm.parameters()).device

    def generate(start: int, count: int) -> np.ndarray:
        generator = torch.Generator(device).manual_seed(seed + start)
        tokens = sample_cdm(cdm, level.index, batch_size=count, num_steps=cdm_steps, generator=generator)
        out = pipe(
            context=tokens,
            magnification=level,
            num_images=count,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            seed=seed + start,
            batch_size=count,
            progress=False,
        )
        return out.images

    return generate
