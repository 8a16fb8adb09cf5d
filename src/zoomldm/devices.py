"""Device and speed-setting rules shared by the library and the command line.

They live here, not in the CLI, because library functions (``zoomldm.prepare``,
``zoomldm.extract_features``) apply the same rules as the commands' ``--device`` / ``--optimize`` /
``--compile`` flags; the CLI imports them from this module.
"""

from __future__ import annotations

import os
from typing import Any


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; any other value is returned as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_rank_device(device: str) -> str:
    """:func:`resolve_device`, with ``cuda`` → ``cuda:LOCAL_RANK`` under torchrun / accelerate (one GPU per
    rank) for the commands that shard their work over ranks."""
    device = resolve_device(device)
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def apply_speed_settings(pipe: Any, optimize: bool | None, compile: str | None, unet: Any = None) -> None:
    """``pipe.optimize(...)`` as the flags ask (``optimize=None``: on when the pipeline is on CUDA); a second
    UNet (the live weights for post-processing) gets the same settings."""
    from .models.inference import optimize_for_inference

    if optimize is None:
        optimize = pipe.device.type == "cuda"
    if not (optimize or compile):
        return
    settings = {
        "channels_last": None if optimize else False,
        "fuse_projections": bool(optimize),
        "compile": True if compile == "default" else (compile or False),
    }
    pipe.optimize(**settings)
    if unet is not None:
        optimize_for_inference(unet, **settings)
