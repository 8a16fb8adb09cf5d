"""AdamW over the UNet and the Summarizer (one parameter group) and the official warm-up (SPEC §2.5).

The authors' ``ldm.lr_scheduler.LambdaLinearScheduler`` with their settings (``warm_up_steps 1000,
f_start 1e-6, f_max 1, f_min 1, cycle 1e13``) is a factor that rises linearly from ``f_start`` to 1 over
the warm-up and then stays at 1. diffusers' ``get_constant_schedule_with_warmup`` starts at 0 instead of
``f_start``; the difference is tiny but it is not the authors' schedule, so the factor is written out here
as a picklable callable (``LambdaLR`` saves its state, so a resumed run continues it exactly).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .config import OptimSection


@dataclass
class LinearWarmup:
    """lr factor ``f(n) = f_start + (1 − f_start)·n / warmup_steps`` for ``n < warmup_steps``, then 1."""

    warmup_steps: int = 1000
    f_start: float = 1.0e-6

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.f_start + (1.0 - self.f_start) * step / self.warmup_steps
        return 1.0


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], optim: OptimSection, lr_scale: float = 1.0
) -> torch.optim.AdamW:
    """``AdamW(params, lr, betas, eps, weight_decay)``: one group, as the authors' ``configure_optimizers``."""
    return torch.optim.AdamW(
        [p for p in parameters if p.requires_grad],
        lr=optim.lr * lr_scale,
        betas=(float(optim.betas[0]), float(optim.betas[1])),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimSection
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :class:`LinearWarmup`; step it once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LinearWarmup(optim.warmup_steps, optim.warmup_start))
