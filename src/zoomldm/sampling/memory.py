"""GPU-sized batches: the largest tile batch whose Newton loop fits in the device's free memory.

Peak memory of a batch is affine in its size (weights and workspace + per-tile activations), so two probes
— one tile and two tiles through one Newton iteration, the loop's widest point (a VQ decode, one VQ call
for both encoder passes, two guided UNet calls) — give the per-tile cost; the batch is what fits in a
fraction of the free memory. On a CPU there is nothing to measure (and larger batches do not run faster
there: benchmarks/RESULTS.md), so the default is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from .newton import JointSamplingConfig, _Ops, newton_constrain
from .resize import downsampler, upsampler
from .strided import strided_steps

#: share of the free device memory a batch may plan to use (allocator fragmentation, the decode of the
#: final image and other processes need the rest)
MEMORY_FRACTION = 0.8
#: no batch beyond this: GPU throughput is flat well before it, and progress updates would become rare
MAX_BATCH = 256


def fit_batch(peak_bytes: Callable[[int], int], budget_bytes: int, limit: int) -> int:
    """Largest ``b ≤ limit`` with ``peak(1) + (b − 1)·(peak(2) − peak(1)) ≤ budget`` (at least 1).

    Args:
        peak_bytes: peak memory of a probe run with ``b`` items (called with 1 and 2).
        budget_bytes: memory the batch may use.
        limit: the most items there are to batch.
    """
    if limit < 1:
        raise ConfigError(f"nothing to batch (limit {limit})")
    one = peak_bytes(1)
    if one > budget_bytes:
        raise ConfigError(
            f"one tile needs {one / 2**30:.1f} GiB at its peak but only {budget_bytes / 2**30:.1f} GiB are "
            "free on the device: free memory, use --dtype float16/bfloat16, or run on a larger GPU"
        )
    if limit == 1:
        return 1
    per_item = max(peak_bytes(2) - one, 1)
    return int(max(1, min(limit, MAX_BATCH, 1 + (budget_bytes - one) // per_item)))


def newton_peak_bytes(pipe, batch: int) -> int:
    """Peak CUDA memory (bytes) of one Newton iteration of joint sampling on ``batch`` random tiles."""
    device = pipe.device
    size, latent = pipe.config.image_size, pipe.config.latent_size
    k = 2  # the footprint size hardly matters next to the 256² VQ activations
    step = strided_steps(pipe.config.schedule, 1000, 50)[10]
    x = torch.randn(batch, pipe.unet.config.in_channels, latent, latent, device=device)
    context = torch.zeros(batch, 65, pipe.config.context_dim, device=device)
    target = torch.zeros(batch, 3, size // k, size // k, device=device)
    down, up = downsampler(size, k).to(device), upsampler(size, k).to(device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    ops, config = _Ops(pipe, pipe.unet, 2.0), JointSamplingConfig(inner_steps=1)
    with torch.no_grad():
        newton_constrain(ops, x, context, target, step, config, down, up)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def auto_tile_batch(pipe, n_tiles: int, default: int = 16) -> int:
    """The tile batch for ``n_tiles`` tiles on the pipeline's device: measured on CUDA (see the module
    docstring), ``min(default, n_tiles)`` elsewhere."""
    if n_tiles < 1:
        raise ConfigError(f"no tiles to batch ({n_tiles})")
    device = pipe.device
    if device.type != "cuda":
        return min(default, n_tiles)
    torch.cuda.empty_cache()  # cached blocks count as used in mem_get_info
    free, _ = torch.cuda.mem_get_info(device)
    baseline = torch.cuda.memory_allocated(device)  # weights: already counted in every probe's peak
    budget = int(MEMORY_FRACTION * free) + baseline
    return fit_batch(lambda b: newton_peak_bytes(pipe, b), budget, n_tiles)
