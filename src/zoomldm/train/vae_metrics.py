"""What is measured of a VQ-f4 (``zoomldm train-vae``, :mod:`.vae`): the held-out reconstruction PSNR and
codebook use (:func:`reconstruction_metrics`), and the spread of its latents (:func:`latent_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .vae_crops import CropSource


# -- evaluation -------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_metrics(
    vae: torch.nn.Module, crops: torch.Tensor, labels: Sequence[str], batch_size: int = 16
) -> dict[str, Any]:
    """PSNR (dB, 8-bit range) of quantised reconstructions, overall and per label, plus codebook use.

    The PSNR of a crop is computed on its 8-bit rounding (what a saved image holds); the overall figure is
    the mean over crops.
    """
    device = next(vae.parameters()).device
    psnrs, used = [], set()
    for start in range(0, len(crops), batch_size):
        x = crops[start : start + batch_size].to(device)
        h = vae.encode(x).latents
        _, _, (_, _, indices) = vae.quantize(h)
        used.update(indices.flatten().tolist())
        y = vae.decode(h).sample.clamp(-1, 1)
        a = torch.round((x + 1) * 127.5)
        b = torch.round((y + 1) * 127.5)
        mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.extend((10 * torch.log10(255.0**2 / mse)).cpu().tolist())
    per_label: dict[str, list[float]] = {}
    for label, value in zip(labels, psnrs, strict=True):
        per_label.setdefault(label, []).append(value)
    n_codes = int(vae.quantize.embedding.weight.shape[0])
    return {
        "psnr_db": float(np.mean(psnrs)),
        "psnr_db_by_level": {k: float(np.mean(v)) for k, v in per_label.items()},
        "held_out_crops": len(psnrs),
        "codes_used": len(used),
        "codebook_size": n_codes,
    }


def _evaluate(model: torch.nn.Module, source: CropSource) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    try:
        return reconstruction_metrics(model, source.eval_crops, source.eval_labels)
    finally:
        model.train(was_training)


@torch.no_grad()
def latent_scale(vae: torch.nn.Module, crops: torch.Tensor, batch: int = 16) -> tuple[float, float]:
    """``(std, 1/std)`` of the VQ's pre-quantisation latents (``encode``) over ``crops`` (``[-1, 1]`` float
    ``[N, 3, H, W]``, e.g. :attr:`CropSource.eval_crops`).

    ZoomLDM's diffusion sees the VQ-f4's latents unscaled (SPEC §10.3) with the LDM β schedule, which is
    tuned for latents of about unit spread (the official VQ-f4's). A VQ trained here has no such
    property: the embedded tiny VQ's latents had a std of 0.23, so at t = 100 the signal-to-noise ratio
    was 19× (1/0.23²) lower than the schedule intends, and the UNet, which learns structure where the SNR is about 1,
    saw almost none (its samples were texture). Rather than a scaling factor the pipeline would have to
    apply everywhere (against SPEC §10.3 and the official checkpoints), the exported VQ itself is
    rescaled by ``1/std``: an exact change of its latent coordinates (same codes, same decoded images).
    One uniform factor, not one per channel: only a uniform factor keeps the nearest codes, hence the
    decoder, unchanged.
    """
    values = []
    for start in range(0, len(crops), batch):
        values.append(vae.encode(crops[start : start + batch]).latents.float().flatten())
    std = float(torch.cat(values).std())
    if not (std > 0 and math.isfinite(std)):
        raise ConfigError(f"the trained VQ's latents have std {std}: retrain with a lower --lr")
    return std, 1.0 / std
