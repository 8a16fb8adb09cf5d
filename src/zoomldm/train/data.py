"""The training data loader: the store's ``MultiScaleDataset`` + ``MagnificationBalancedSampler`` per rank.

The sampler already gives every rank its own stream (it depends only on seed, epoch and rank), so the
loader is **not** handed to ``accelerator.prepare`` (which would shard it a second time); batches are moved
to the device by the trainer. Randomness: the sampler is seeded by (seed, epoch, rank); the loader's own
generator (the base seed of its workers) is re-seeded from (seed, rank, epoch) at each epoch, and each
worker seeds ``random`` and ``numpy`` from its torch seed, so any randomness in a dataset is reproducible
and different per rank and worker. Resuming inside an epoch skips the batches already consumed with
accelerate's ``skip_first_batches`` (indices are skipped, no sample is read).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.dataset import MagnificationBalancedSampler, MultiScaleDataset, collate_multiscale


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed (base seed + id)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, e.g. (seed, rank, epoch) (numpy's ``SeedSequence`` mixes them)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class TrainLoader:
    """Epoch-aware loader: ``batches(epoch, skip)`` iterates one epoch of this rank's batches."""

    def __init__(
        self,
        dataset: MultiScaleDataset,
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int,
        world_size: int,
        samples_per_epoch: int | None = None,
        level_weights: list[float] | None = None,
        pin_memory: bool = False,
    ) -> None:
        per_rank = (samples_per_epoch if samples_per_epoch is not None else len(dataset)) // world_size
        self.sampler = MagnificationBalancedSampler(
            dataset,
            num_samples=max(per_rank, batch_size),  # at least one batch per epoch
            seed=seed,
            rank=rank,
            world_size=world_size,
            weights=level_weights,
        )
        self.seed, self.rank = seed, rank
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=num_workers,
            collate_fn=collate_multiscale,
            pin_memory=pin_memory,
            worker_init_fn=seed_worker,
            generator=self.generator,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.loader)

    def batches(self, epoch: int, skip: int = 0) -> Any:
        """The batches of ``epoch``, without the first ``skip`` (already consumed before a resume)."""
        from accelerate import skip_first_batches

        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(derive_seed(self.seed, self.rank, epoch))
        return skip_first_batches(self.loader, skip) if skip else self.loader


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors the objective needs (latents, SSL grids, magnifications) to ``device``."""
    non_blocking = device.type == "cuda"
    return {
        "latent": batch["latent"].to(device, non_blocking=non_blocking),
        "ssl": [g.to(device, non_blocking=non_blocking) for g in batch["ssl"]],
        "mag": batch["mag"].to(device, non_blocking=non_blocking),
    }
