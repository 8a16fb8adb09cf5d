"""Processes of a multi-GPU large-image run: rank and world size, barriers, block sharding, sums.

Large-image sampling is sharded by canvas block (:mod:`.canvas`): in every outer step, rank ``r`` of ``W``
processes takes the blocks ``b`` with ``j % W == r``, ``j`` being the block's position in the step's
row-major block list, and writes them to the shared zarr canvas (disjoint chunks); a barrier ends the step.
Blocks are independent within a step (each reads only its own tiles and its guide footprint), so the image
does not depend on ``W`` for a fixed block size.

Rank and world come from ``torch.distributed`` when a process group is initialised, else from the
environment that ``torchrun`` / ``accelerate launch`` set (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); with ``WORLD_SIZE > 1`` and no group yet, :func:`ensure_process_group` starts one
(``nccl`` on CUDA, else ``gloo``). One process (no environment) is rank 0 of 1 and needs none of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch

from ..errors import ConfigError

T = TypeVar("T")

__all__ = ["all_reduce_sum", "barrier", "ensure_process_group", "rank_world", "shard"]


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``: the process group's, or ``RANK`` / ``WORLD_SIZE`` from the environment."""
    if _dist_ready():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ConfigError(f"RANK / WORLD_SIZE must be integers (as torchrun sets them): {err}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not a rank of WORLD_SIZE={world} (launch with torchrun)")
    return rank, world


def ensure_process_group(device: torch.device | str | None = None) -> tuple[int, int]:
    """Start the default process group when the environment names several processes and none exists
    (``nccl`` for a CUDA ``device``, ``gloo`` otherwise); returns ``(rank, world)``."""
    rank, world = rank_world()
    if world > 1 and not _dist_ready():
        cuda = device is not None and torch.device(device).type == "cuda"
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world)
    return rank, world


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if _dist_ready() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items of ``rank``: positions ``j`` with ``j % world == rank`` (round robin: neighbouring blocks
    go to different ranks, which balances the edge blocks and uneven tissue)."""
    return [item for j, item in enumerate(items) if j % world == rank]


def all_reduce_sum(values: Sequence[float], device: torch.device | str | None = None) -> list[float]:
    """Sums of ``values`` over the ranks (float64); the values themselves for one process."""
    if not (_dist_ready() and torch.distributed.get_world_size() > 1):
        return [float(v) for v in values]
    on = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    if on == "cuda" and device is not None and torch.device(device).type == "cuda":
        on = str(device)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=on)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()
