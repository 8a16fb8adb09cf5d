"""The ZoomLDM training objective (SPEC §2.4): ε-prediction MSE on stored VQ-f4 latents.

``t ~ U{0..999}``, ``x_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε`` (diffusers ``DDPMScheduler.add_noise`` with the
official float64-derived ``alphas_cumprod``), context = Summarizer(SSL grid, magnification) with whole
contexts zeroed with probability ``p_uncond`` (classifier-free dropout after the final LayerNorm, the only
unconditional signal), loss = ``mean((ε̂ − ε)²)``. The UNet and the Summarizer are one ``nn.Module`` so
that accelerate wraps them once (one DDP/FSDP unit, one optimizer group, one autocast).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from ..models.summarizer import Summarizer
from ..schedule import official_alphas_cumprod


def training_noise_scheduler(schedule: dict) -> DDPMScheduler:
    """``DDPMScheduler`` on the official schedule (``alphas_cumprod`` exactly the checkpoint buffer)."""
    scheduler = DDPMScheduler(
        num_train_timesteps=schedule["num_train_timesteps"],
        beta_start=schedule["beta_start"],
        beta_end=schedule["beta_end"],
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )
    scheduler.alphas_cumprod = official_alphas_cumprod(schedule)
    return scheduler


class ZoomLDMTrainingModel(nn.Module):
    """UNet + Summarizer: ``forward`` = ε̂ for noisy latents under the (dropped-out) Summarizer context."""

    def __init__(self, unet: nn.Module, summarizer: Summarizer) -> None:
        super().__init__()
        self.unet = unet
        self.summarizer = summarizer

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        ssl: Sequence[torch.Tensor] | torch.Tensor,
        magnification: torch.Tensor,
        p_uncond: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        # The Summarizer runs in float32 even under mixed precision: its token layout writes autocast
        # (bf16/fp16) tokens into a float32 pad-token buffer, which index_put rejects (core
        # ``Summarizer.embed_grids``); it is ~10% of the UNet's parameters and a tiny share of the FLOPs.
        with torch.autocast(noisy_latents.device.type, enabled=False):
            context = self.summarizer(ssl, magnification)
        context = Summarizer.drop_conditions(context, p_uncond, generator)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample


def diffusion_loss(
    model: nn.Module,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    ssl: Sequence[torch.Tensor] | torch.Tensor,
    magnification: torch.Tensor,
    p_uncond: float,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Per-sample ε-MSE ``[B]`` (float32); its mean is the official loss. Draws t, ε and the dropout from
    ``generator`` (in that order), so a seeded generator makes the step reproducible.

    ``snr_gamma``: weight each sample by :func:`min_snr_weights` (Min-SNR-γ); None: the authors' plain
    ε-MSE (SPEC §2.4)."""
    b = latents.shape[0]
    n = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, n, (b,), generator=generator, device=latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    eps = model(noisy, timesteps, ssl, magnification, p_uncond, generator)
    loss = F.mse_loss(eps.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        loss = loss * min_snr_weights(noise_scheduler, timesteps, snr_gamma)
    return loss


def min_snr_weights(noise_scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weights of the ε-MSE, ``min(SNR_t, γ) / SNR_t`` with ``SNR_t = ᾱ_t / (1 − ᾱ_t)``
    (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023).

    Not in the authors' recipe (their 100k+ GPU steps need no help). Low-noise steps (SNR > γ), whose ε
    targets are nearly free, are down-weighted, so a short run spends its gradient where structure is
    decided; the paper measured ≈ 3× faster convergence at γ = 5. Used by the embedded model's short CPU
    run (``configs/embedded_tiny.yaml``: ``train.snr_gamma: 5``).
    """
    abar = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps]
    snr = abar / (1 - abar)
    return (snr.clamp(max=gamma) / snr).float()
