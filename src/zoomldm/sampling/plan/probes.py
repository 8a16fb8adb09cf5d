"""What the machine has now (monkeypatched in tests): this process's resident memory, the free host memory,
disk and GPU memory, and the measured peak of one Newton batch on a pipeline already on a CUDA device.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def process_rss_bytes() -> int:
    """Resident memory of this process now (``/proc/self/status`` VmRSS; 0 where there is none)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+)\s+kB", text)
    return int(match.group(1)) * 1024 if match else 0


def available_host_bytes() -> int | None:
    """Memory the system can give a new allocation now (``MemAvailable``), None where unknown."""
    try:
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+)\s+kB", text).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def available_disk_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def available_gpu_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``); None for other devices."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(dev)[0])


def _measured_newton_bytes(model, tile_batch: int) -> int | None:
    """On a pipeline already on a CUDA device: the measured peak of one Newton iteration of a batch
    (:func:`.memory.newton_peak_bytes`) less the memory allocated before it (the weights)."""
    import torch

    device = getattr(model, "device", None)
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    from ..memory import newton_peak_bytes

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    return max(newton_peak_bytes(model, tile_batch) - before, 0)
