"""The time estimate: FLOPs ÷ an effective rate, the device's dense matmul rate measured in a short
calibration (:func:`matmul_rate`) times the share of it the sampler reaches (:data:`UTILISATION`).
"""

from __future__ import annotations

import time

from .profile import _torch_dtype
from .stages import StagePlan

#: share of the measured dense-matmul rate the joint sampler reaches: CPU measured (benchmarks/RESULTS.md,
#: "Large images", CPU rows: 10.4–13.9 % of the fp32 matmul rate); CUDA assumed until the gigapixel GPU rows
#: of benchmarks/gpu_check.sh are measured
UTILISATION = {"cpu": (0.12, "measured: RESULTS.md CPU joint-sampling rows"), "cuda": (0.35, "assumed")}
#: measured shares of the matmul rate on GPUs, by a substring of the device name, from the gigapixel rows of
#: ``benchmarks/gpu_check.sh`` recorded in benchmarks/RESULTS.md ("GPU: gigapixel rows"): empty until a
#: device is lent and those rows are measured, so every CUDA estimate says "assumed". Fill it as
#: ``{"H100": (share, "measured: RESULTS.md gigapixel GPU rows, <date>")}``.
MEASURED_GPU_UTILISATION: dict[str, tuple[float, str]] = {}


def utilisation(kind: str, device_name: str = "") -> tuple[float, str]:
    """``(share of the matmul rate, how it is known)`` for a ``cpu`` or ``cuda`` device named
    ``device_name``: a measured GPU row when one matches, else :data:`UTILISATION` (CUDA: "assumed")."""
    if kind == "cuda":
        for key, value in MEASURED_GPU_UTILISATION.items():
            if key.lower() in device_name.lower():
                return value
    return UTILISATION[kind]


def matmul_rate(device: str, dtype: str, size: int = 1024, repeats: int = 3) -> float:
    """Dense matmul FLOP/s measured on ``device`` in ``dtype`` (a 0.1–0.3 s calibration, no model)."""
    import torch

    dev = torch.device(device)
    dt = _torch_dtype(dtype) if dev.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=dev, dtype=dt)
    b = torch.randn(size, size, device=dev, dtype=dt)
    a @ b  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return 2 * size**3 * repeats / max(time.perf_counter() - start, 1e-9)


def _device_name(device: str) -> str:
    import torch

    try:
        return torch.cuda.get_device_name(torch.device(device))
    except (RuntimeError, AssertionError, ValueError):
        return ""


def _estimate_time(plans: list[StagePlan], device: str, dtype: str, calibrate: bool) -> tuple[float, str]:
    if not calibrate:
        return 0.0, "not estimated"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rate = matmul_rate(device, dtype)
    share, how = utilisation(kind, _device_name(device) if kind == "cuda" else "")
    flops = sum(p.flops for p in plans)
    return flops / (rate * share), (
        f"{flops / 1e15:.3g} PFLOP at {share:.0%} ({how}) of the measured {rate / 1e12:.3g} TFLOP/s matmul rate"
    )
