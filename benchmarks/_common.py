"""Helpers shared by the benchmark scripts: device synchronisation and the measured dense matmul rate.

The scripts run as ``python benchmarks/bench_x.py`` from the repository root; Python puts the script's
directory (``benchmarks/``) first on ``sys.path``, so they import this module as ``from _common import …``.
"""

from __future__ import annotations

import time

import torch


def sync(device: str | torch.device) -> None:
    """Wait for the work queued on ``device`` (a CUDA device; a no-op elsewhere), so that a wall-clock
    reading after it covers the work and not only its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(
    device: str | torch.device, dtype: torch.dtype, n: int | None = None, reps: int | None = None
) -> float:
    """Measured dense matmul rate in TFLOP/s: ``reps`` products of two ``n×n`` matrices of ``dtype`` on
    ``device`` after one warm-up product — the practical peak a model's achieved rate is compared against.

    Defaults: ``n`` 4096 and ``reps`` 20 on an accelerator, 1024 and 10 on the CPU (to stay quick there).
    """
    cpu = torch.device(device).type == "cpu"
    n = n if n is not None else 1024 if cpu else 4096
    reps = reps if reps is not None else 10 if cpu else 20
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
