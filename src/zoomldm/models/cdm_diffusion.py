"""Diffusion for the CDM: cosine schedule, x0-prediction, learned-range variance (SPEC §6; DiT/ADM).

Schedule: diffusers' ``DDPMScheduler(beta_schedule="squaredcos_cap_v2")`` with 1000 steps — the same
betas as ADM's ``betas_for_alpha_bar(…, max_beta=0.999)`` (diffusers stores them in float32; the
derived quantities below are recomputed in float64 from them, as ADM does; the tests measure both).
Training-time noising is the scheduler's ``add_noise``.

Loss (ADM ``LossType.MSE`` with ``LEARNED_RANGE`` variance and ``START_X`` prediction)::

    loss = mean((x̂0 − x0)²) + VB,   VB = KL(q(x_{t−1}|x_t,x0) ‖ p(x_{t−1}|x_t)) / ln 2   (t > 0)

where ``p`` has the posterior mean of the **detached** x̂0 (only the variance head learns from VB) and
log-variance ``v̂·log β_t + (1 − v̂)·log β̃_t`` with ``v̂ = (v + 1)/2``. At ``t = 0`` ADM uses the
discretised-Gaussian *image* likelihood (8-bit pixels in [-1, 1]); Summarizer tokens are continuous and
unbounded, so we use the continuous Gaussian NLL of x0 under ``p`` instead (bits per dimension, like
the KL). This differs from the authors' code only on the 1/1000 of samples drawn at ``t = 0``.
The posterior log-variance is clipped at t = 0 to ``log β̃_1`` as in ADM; diffusers' ``DDPMScheduler``
clamps it to ``log 1e-20`` instead, which is why the posterior quantities are computed here.

Sampling: DDIM (eta 0) over ADM's respaced timesteps ``round(i·(T−1)/(n−1))`` — 0, 5, 10, …, 999 for
200 steps, the authors' ``timestep_respacing="200"`` — with ``ᾱ_prev`` the ᾱ of the *next kept* step
(1 after the last). diffusers' ``DDIMScheduler(timestep_spacing="linspace")`` gives the same timesteps,
but its ``step`` assumes a uniform stride (``prev = t − T//n``), which is wrong at the 4 strides of 6
in this spacing; the update itself is the same closed form (checked against ``DDIMScheduler.step`` in
the tests), so the loop below is its own. The model is called with the original timestep values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..errors import ZoomLDMError
from .cdm import ConditioningDiT

DEFAULT_SAMPLE_STEPS = 200  # the authors' cdm_measure_fid.py: timestep_respacing="200"


def make_cdm_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The CDM's training scheduler (cosine betas, x0-prediction, learned-range variance)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        variance_type="learned_range",
        clip_sample=False,
    )


def respaced_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """ADM's ``space_timesteps(T, str(n))`` for one section: ``round(i·(T−1)/(n−1))``, ascending."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ZoomLDMError(f"num_steps must be in 1..{num_train_timesteps}, got {num_steps}")
    if num_steps == 1:
        return np.array([0], dtype=np.int64)
    stride = (num_train_timesteps - 1) / (num_steps - 1)
    return np.array([round(i * stride) for i in range(num_steps)], dtype=np.int64)


def ddim_update(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step with an x0-predicting model (Song et al. 2021, eq. 12)."""
    eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt() * (1 - alpha_bar / alpha_bar_prev).sqrt()
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def _normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


class CDMDiffusion:
    """Training loss and DDIM sampling for a :class:`~zoomldm.models.cdm.ConditioningDiT`.

    Tokens are ``[B, 65, D]`` throughout; the model's output ``[B, 65, 2D]`` is ``[x̂0 | v]``.

    ``vb_through_trunk`` (off by default) lets the VB term's gradient reach the DiT's shared trunk, as
    the authors' code does. ADM detaches x̂0 in the VB term so that it "does not affect the mean
    prediction", but the variance values come from the same trunk, and at small t the KL scales as
    ``(x̂0 error)² / β̃_t`` (β̃_1 ≈ 1e-5 on this schedule): its gradient then outweighs the MSE's and
    spoils x̂0 exactly where DDIM's last steps read it. Measured on the mixture test of
    ``tests/models/test_cdm_diffusion.py`` (6 seeds, 200 steps): with the VB through the trunk the
    x̂0 error at t ≤ 50 is 0.3–6 (0.18 at t = 200) and 1 to 5 of 6 seeds miss the magnification
    accuracy floor; with it stopped at the output layer (the default) every seed reaches 1.0. The loss
    values and the sampler are unchanged; the DDIM sampler never reads the variance head anyway.
    """

    def __init__(self, scheduler: DDPMScheduler | None = None, vb_through_trunk: bool = False) -> None:
        self.scheduler = scheduler or make_cdm_scheduler()
        self.vb_through_trunk = vb_through_trunk
        betas = self.scheduler.betas.double()
        self.num_train_timesteps = int(betas.shape[0])
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post_var = betas * (1 - ab_prev) / (1 - ab)
        self.betas, self.alphas_cumprod = betas, ab
        self.posterior_variance = post_var
        self.posterior_log_variance_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        self.posterior_mean_coef1 = betas * ab_prev.sqrt() / (1 - ab)
        self.posterior_mean_coef2 = (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab)

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table.to(t.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of ``q(x_{t−1} | x_t, x0)``."""
        mean = (
            self._at(self.posterior_mean_coef1, t, x0) * x0 + self._at(self.posterior_mean_coef2, t, x0) * x_t
        )
        return mean, self._at(self.posterior_log_variance_clipped, t, x0).expand_as(x0)

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, log_variance, x̂0)`` of the model's ``p(x_{t−1} | x_t)`` from its raw output."""
        x0, v = model_output.split(x_t.shape[-1], dim=-1)
        min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._at(torch.log(self.betas), t, x_t)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, log_var, x0

    def training_losses(
        self,
        model: ConditioningDiT | Callable[..., torch.Tensor],
        x0: torch.Tensor,
        magnification: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample ``loss = mse + vb`` (and both terms) for clean tokens ``x0 [B, 65, D]``.

        ``t`` defaults to uniform draws over ``0 … T−1`` and ``noise`` to standard normal, both from
        ``generator``.
        """
        batch = x0.shape[0]
        if t is None:
            where = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=where)
            t = t.to(x0.device)
        if noise is None:
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.scheduler.add_noise(x0, noise, t)
        dit = getattr(model, "module", model)  # DDP / accelerate wrap the model in .module
        if isinstance(dit, ConditioningDiT) and not self.vb_through_trunk:
            out = model(x_t, t, magnification, detach_variance=True)
        else:
            out = model(x_t, t, magnification)
        if out.shape[-1] != 2 * x0.shape[-1]:
            raise ZoomLDMError("the CDM loss needs a learn_sigma model (output width 2·token_dim)")
        x0_hat, v = out.split(x0.shape[-1], dim=-1)
        mse = ((x0_hat - x0) ** 2).flatten(1).mean(1)

        # VB: only the variance head learns from it (the mean is detached, as in ADM; with a
        # ConditioningDiT the shared trunk is detached too unless vb_through_trunk, see the class)
        mean, log_var, _ = self.p_mean_variance(torch.cat([x0_hat.detach(), v], -1), x_t, t)
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        kl = _normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2.0)
        nll = _gaussian_nll(x0, mean, log_var).flatten(1).mean(1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    @torch.no_grad()
    def ddim_sample(
        self,
        model: ConditioningDiT | Callable[..., torch.Tensor],
        magnification: torch.Tensor,
        shape: tuple[int, int, int],
        num_steps: int = DEFAULT_SAMPLE_STEPS,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> torch.Tensor:
        """DDIM from pure noise to tokens ``shape = (B, num_tokens, D)`` (the authors' ``ddim_sample_loop``).

        The initial noise is drawn channels-first ``[B, D, num_tokens]`` like the authors' script and
        transposed, so a seeded generator gives their noise.
        """
        from ..progress import track

        batch, n_tok, dim = shape
        device = torch.device(device) if device is not None else magnification.device
        if noise is None:
            noise = randn_tensor(
                (batch, dim, n_tok), generator=generator, device=device, dtype=dtype
            ).transpose(1, 2)
        x = noise.to(device=device, dtype=dtype).contiguous()
        magnification = magnification.to(device).long()
        steps = respaced_timesteps(self.num_train_timesteps, num_steps)
        ab = self.alphas_cumprod
        for i in track(range(len(steps) - 1, -1, -1), "CDM sampling", total=len(steps), enabled=progress):
            t = int(steps[i])
            out = model(x, torch.full((batch,), t, device=device, dtype=torch.long), magnification)
            x0 = out[..., :dim].to(dtype)
            a = ab[t].to(device=device, dtype=dtype)
            a_prev = (ab[int(steps[i - 1])] if i > 0 else ab.new_ones(())).to(device=device, dtype=dtype)
            step_noise = (
                randn_tensor(x.shape, generator=generator, device=device, dtype=dtype)
                if eta > 0 and i > 0
                else None
            )
            x = ddim_update(x0, x, a, a_prev, eta=eta, noise=step_noise)
        return x


def sample_cdm(
    model: ConditioningDiT,
    magnification: torch.Tensor | int,
    batch_size: int | None = None,
    num_steps: int = DEFAULT_SAMPLE_STEPS,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    diffusion: CDMDiffusion | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample Summarizer tokens ``[B, 65, D]`` for magnification indices (``LongTensor[B]`` or an int).

    The result is fed to the UNet directly as cross-attention context (no Summarizer); the
    unconditional context stays zeros. Runs on the model's device and dtype, in eval mode.
    """
    param = next(model.parameters())
    mag = torch.as_tensor(magnification, dtype=torch.long, device=param.device).reshape(-1)
    if batch_size is not None:
        if mag.numel() == 1:
            mag = mag.expand(batch_size)
        elif mag.numel() != batch_size:
            raise ZoomLDMError(f"got {mag.numel()} magnifications for batch_size {batch_size}")
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        diffusion = diffusion or CDMDiffusion()
        return diffusion.ddim_sample(
            model,
            mag,
            (mag.numel(), cfg.num_tokens, cfg.token_dim),
            num_steps=num_steps,
            eta=eta,
            generator=generator,
            device=param.device,
            dtype=param.dtype,
            progress=progress,
        )
    finally:
        model.train(was_training)


class CDMSampler:
    """A CDM with its diffusion, as a condition source: ``sampler(magnification, n, generator)`` → tokens."""

    def __init__(
        self, model: ConditioningDiT, num_steps: int = DEFAULT_SAMPLE_STEPS, eta: float = 0.0
    ) -> None:
        self.model, self.num_steps, self.eta = model, num_steps, eta
        self.diffusion = CDMDiffusion()

    def __call__(
        self, magnification: torch.Tensor | int, batch_size: int | None = None, generator: Any = None
    ) -> torch.Tensor:
        return sample_cdm(
            self.model, magnification, batch_size, self.num_steps, generator, self.eta, self.diffusion
        )
