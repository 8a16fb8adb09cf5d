"""Graceful stop for long training runs: SIGINT/SIGTERM finish the current step, save, and exit.

Shared by the LDM and the CDM trainers. A second Ctrl-C aborts at once (the last good checkpoint is
never touched: checkpoints are written atomically).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator


@contextlib.contextmanager
def stop_requests(owner: Any) -> Iterator[None]:
    """While active, a signal sets ``owner._stop_requested`` and logs through ``owner.info``."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return

    def handler(signum, frame):
        if owner._stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        owner._stop_requested = True
        owner.info("stop requested: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_vote(accelerator: Accelerator, requested: bool) -> bool:
    """Whether any process was asked to stop (``requested`` is this process's flag), so that all ranks stop
    at the same step: one tiny all-reduce per step when there are several processes, none for one.

    Every process must call it at the same point of the loop (it is a collective).
    """
    if accelerator.num_processes == 1:
        return requested
    import torch

    flag = torch.tensor(float(requested), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
