"""``ZoomLDMPipeline``: conditions → Summarizer tokens → guided denoising → VQ decode.

The pipeline is the loaded model (:class:`~zoomldm.models.bundle.ZoomLDMModel`: networks, config,
loading and saving) with sampling: patches at any magnification (:meth:`ZoomLDMPipeline.__call__`,
conditioned on SSL grids, Summarizer tokens, or reference-free through a CDM), and the large-image and
super-resolution methods of :class:`~zoomldm.pipeline.large.LargeImageMethods`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..models.bundle import ZoomLDMModel, to_uint8
from ..sampling.denoise import denoise as _denoise
from ..scales import Magnification
from ..schedule import make_scheduler
from .cdm import load_cdm_model
from .large import LargeImageMethods

MAX_GUIDANCE = 50.0
MAX_STEPS = 1000


@dataclass
class PatchSamplingOutput:
    """Result of patch sampling: ``images`` uint8 ``[N, H, W, 3]`` and the final ``latents`` [N,3,h,w]."""

    images: np.ndarray
    latents: torch.Tensor | None
    settings: dict[str, Any] = field(default_factory=dict)


class ZoomLDMPipeline(LargeImageMethods, ZoomLDMModel):
    """ZoomLDM generation: patches at any magnification, large images, super-resolution.

    Load it as the model (``from_official``, ``from_pretrained``, ``from_config``; see
    :class:`~zoomldm.models.bundle.ZoomLDMModel`): every loader builds a pipeline when called on this class.
    """

    def denoise(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        scheduler: str = "ddim",
        uncond: torch.Tensor | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        callback: Callable | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """The guided denoising loop from the given initial noise; returns the final latents."""
        _check_sampling_args(num_inference_steps, guidance_scale)
        sched = make_scheduler(scheduler, self.config.schedule)
        with torch.no_grad():
            return _denoise(
                self.unet,
                sched,
                latents.to(self.device),
                context.to(self.device),
                num_inference_steps,
                guidance_scale,
                uncond,
                eta,
                generator,
                chunk_size,
                callback,
                progress,
            )

    # ------------------------------------------------------------------------------------------
    # patch sampling
    # ------------------------------------------------------------------------------------------
    def __call__(
        self,
        ssl: torch.Tensor | Sequence[torch.Tensor] | None = None,
        magnification: str | int | Magnification = 0,
        num_images: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        scheduler: str = "ddim",
        seed: int | None = 0,
        batch_size: int = 16,
        context: torch.Tensor | None = None,
        prepare: bool = True,
        progress: bool = True,
        cdm: str | Path | Any | None = None,
        cdm_steps: int = 200,
    ) -> PatchSamplingOutput:
        """Generate ``num_images`` patches at ``magnification``.

        Conditions: ``ssl`` is one raw grid ``[C,h,w]`` (used for every image), a batch ``[N,C,h,w]``
        or a list of N grids; or ``context`` gives Summarizer-space tokens ``[N or 1, 65, D]`` directly;
        or neither, reference-free: the tokens are sampled by the Conditioning Diffusion Model ``cdm`` (a
        folder, the authors' file or a :class:`~zoomldm.models.cdm.ConditioningDiT`; default the model's
        own, :attr:`cdm_dir`) in ``cdm_steps`` DDIM steps, seeded by ``seed``. The initial noise for all
        N images is drawn at once from ``seed``, so the result does not depend on ``batch_size``.
        """
        _check_sampling_args(num_inference_steps, guidance_scale)
        if num_images < 1 or batch_size < 1:
            raise ConfigError("num_images and batch_size must be at least 1")
        mag = self.magnification(magnification)
        if ssl is not None and cdm is not None:
            raise ConfigError("give ssl= (a real region's embeddings) or cdm= (reference-free), not both")
        reference_free = context is None and ssl is None
        if reference_free:
            context = self._cdm_context(cdm, mag, num_images, cdm_steps, seed)
        if context is None:
            grids = (
                list(ssl.unbind(0))
                if isinstance(ssl, torch.Tensor) and ssl.dim() == 4
                else ([ssl] * num_images if isinstance(ssl, torch.Tensor) else list(ssl))
            )
            if len(grids) == 1:
                grids = grids * num_images
            if len(grids) != num_images:
                raise InputError(f"got {len(grids)} SSL grids for {num_images} images")
            context = torch.cat(
                [
                    self.condition(grids[i : i + batch_size], mag, prepare)
                    for i in range(0, num_images, batch_size)
                ]
            )
        else:
            context = context.float()
            if context.shape[0] == 1:
                context = context.expand(num_images, -1, -1)
            if context.shape[0] != num_images or context.shape[-1] != self.config.context_dim:
                raise InputError(
                    f"context must be [{num_images}, 65, {self.config.context_dim}]; got {list(context.shape)}"
                )
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        size = self.config.latent_size
        noise = torch.randn(num_images, self.unet.config.in_channels, size, size, generator=gen)
        latents, images = [], []
        for i in range(0, num_images, batch_size):
            z = self.denoise(
                noise[i : i + batch_size],
                context[i : i + batch_size],
                num_inference_steps,
                guidance_scale,
                scheduler,
                generator=gen,
                progress=progress,
            )
            latents.append(z.cpu())
            images.append(to_uint8(self.decode_latents(z)))
        settings = {
            "magnification": mag.name,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "scheduler": scheduler,
            "seed": seed,
            "num_images": num_images,
            **self.provenance,
        }
        if reference_free:
            source = cdm if cdm is not None else self.cdm_dir
            settings["conditions"] = (
                f"CDM {source if isinstance(source, str | Path) else type(source).__name__}"
            )
            settings["cdm_steps"] = cdm_steps
        if self.inference_settings:
            settings["inference_settings"] = self.inference_settings
        return PatchSamplingOutput(np.concatenate(images), torch.cat(latents), settings)

    def _cdm_context(self, cdm, mag: Magnification, num_images: int, steps: int, seed: int | None):
        """Reference-free conditioning: ``num_images`` token sets of the CDM (``cdm`` or :attr:`cdm_dir`)."""
        from ..models.cdm import check_cdm_fits
        from ..models.cdm_diffusion import sample_cdm

        cdm = cdm if cdm is not None else self.cdm_dir
        if cdm is None:
            raise InputError(
                "give SSL embeddings (ssl=…), conditioning tokens (context=…) or a CDM (cdm=…) for "
                "reference-free sampling; this model ships no CDM of its own"
            )
        if steps < 1:
            raise ConfigError(f"cdm_steps {steps}: must be at least 1")
        model = load_cdm_model(cdm, self.device)
        check_cdm_fits(self, model)  # the rule of generate_large's reference-free guide
        generator = torch.Generator(self.device).manual_seed(seed if seed is not None else torch.seed())
        with torch.no_grad():
            return sample_cdm(model, mag.index, batch_size=num_images, num_steps=steps, generator=generator)


def _check_sampling_args(steps: int, guidance: float) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be an integer in 1..{MAX_STEPS}; got {steps}")
    if not 0.0 <= float(guidance) <= MAX_GUIDANCE:
        raise ConfigError(
            f"guidance must be in 0..{MAX_GUIDANCE} (s = 1 is no guidance, the authors use 2); got {guidance}"
        )
