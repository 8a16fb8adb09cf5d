"""Reading a prepared store for training: a torch ``Dataset``, the magnification-balanced sampler, a collate.

Typical use (one process per GPU under ``accelerate launch``)::

    ds = MultiScaleDataset("data/brca.zarr")                       # or "s3://bucket/brca.zarr"
    sampler = MagnificationBalancedSampler(ds, seed=0, rank=rank, world_size=world)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=8,
                        collate_fn=collate_multiscale, pin_memory=True)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            latents = batch["latent"]            # [B, 3, 64, 64] float32, unquantised VQ-f4 latents
            context = summarizer(batch["ssl"], batch["mag"])   # list of [C, h, w] (h ≤ 8), LongTensor[B]

Each item is a dict:

==========  =======================  ====================================================================
key         type                     meaning
==========  =======================  ====================================================================
``latent``  float32 ``[3, 64, 64]``  the 256² sample's VQ-f4 latent (unscaled, not quantised; SPEC §10.3)
``ssl``     float32 ``[C, h, w]``    its SSL grid, average-pooled to ≤ 8×8 then standardised per token
                                     (SPEC §1.4, :func:`zoomldm.conditioning.prepare_grid`)
``mag``     int                      magnification index (the Summarizer's token; 0 = 20x / 1x)
``slide``   str                      source slide id
``coords``  int64 ``[2]``            (x, y) of the region's top-left corner in base px of that slide
``index``   int                      the dataset index (levels concatenated in order)
``image``   uint8 ``[256, 256, 3]``  only with ``return_image=True`` (store prepared with ``--save-jpeg``)
==========  =======================  ====================================================================

The dataset index space is the levels concatenated (finest first); :class:`MagnificationBalancedSampler`
reproduces the official training distribution (SPEC §1.5): every draw picks a level uniformly, then a
sample uniformly within it — without the official loader's habit of ignoring the sampler's index, and
with a stream that depends only on (seed, epoch, rank).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..conditioning import prepare_grid
from ..errors import ZoomLDMError
from ..scales import Magnification, scales_for
from .store import STORE_FORMAT, open_store


class MultiScaleDataset(Dataset):
    """The samples of a prepared store (local path or fsspec URL), all levels or a subset.

    Args:
        store: path or URL of a store made by ``zoomldm prepare``.
        levels: magnification names / indices to serve (default: all levels in the store).
        target_size: the SSL grid is average-pooled to at most ``target_size``² (8 for ZoomLDM).
        normalize: standardise each pooled token across channels (true for ZoomLDM).
        return_image: also return the stored JPEG of each sample (``--save-jpeg`` stores only).
        storage_options: fsspec options for remote stores (credentials, endpoint, …).
    """

    def __init__(
        self,
        store: str | os.PathLike,
        levels: Sequence[str | int] | None = None,
        target_size: int = 8,
        normalize: bool = True,
        return_image: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = str(store)
        self.storage_options = dict(storage_options or {})
        self.target_size, self.normalize, self.return_image = target_size, normalize, return_image
        root = open_store(self.store, "r", self.storage_options)
        attrs = root.attrs.asdict()
        if attrs.get("format") != STORE_FORMAT:
            raise ZoomLDMError(f"{self.store} is not a store made by zoomldm prepare")
        self.attrs = attrs
        scales = scales_for(attrs["domain"])
        stored = [scales[level["index"]] for level in attrs["levels"]]
        if levels is not None:
            wanted = {scales.parse(v).index for v in levels}
            missing = wanted - {m.index for m in stored}
            if missing:
                raise ZoomLDMError(
                    f"levels {[scales[i].name for i in sorted(missing)]} are not in {self.store}"
                )
            stored = [m for m in stored if m.index in wanted]
        committed = attrs["committed"]
        self.levels: list[Magnification] = stored
        self.counts: list[int] = [int(committed["samples"][m.key]) for m in stored]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        n_slides = int(committed["slides"])
        self.slide_ids = [str(s) for s in root["slides/id"][:n_slides]] if n_slides else []
        if return_image and stored and "jpeg" not in root[stored[0].key]:
            raise ZoomLDMError(
                f"{self.store} holds no images; prepare it with --save-jpeg or use return_image=False"
            )
        self._root: Any = root
        self._pid = os.getpid()

    @property
    def ssl_dim(self) -> int:
        return int(self.attrs["encoder"]["dim"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[Magnification, int]:
        """(magnification, index within its level) of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        level = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.levels[level], int(index - self.offsets[level])

    def _group(self, mag: Magnification) -> Any:
        if self._root is None or self._pid != os.getpid():  # after fork or unpickling in a loader worker
            self._root = open_store(self.store, "r", self.storage_options)
            self._pid = os.getpid()
        return self._root[mag.key]

    def raw_grid(self, index: int) -> torch.Tensor:
        """The stored, unpooled SSL grid ``[C, g, g]`` (float32) of a sample."""
        mag, i = self.locate(index)
        return torch.from_numpy(np.asarray(self._group(mag)["ssl"][i], dtype=np.float32))

    def __getitem__(self, index: int) -> dict[str, Any]:
        mag, i = self.locate(int(index))
        group = self._group(mag)
        latent = torch.from_numpy(np.asarray(group["latents"][i], dtype=np.float32))
        grid = torch.from_numpy(np.asarray(group["ssl"][i], dtype=np.float32))
        item: dict[str, Any] = {
            "latent": latent,
            "ssl": prepare_grid(grid, self.target_size, self.normalize),
            "mag": mag.index,
            "slide": self.slide_ids[int(group["slide"][i])],
            "coords": torch.from_numpy(np.asarray(group["coords"][i], dtype=np.int64)),
            "index": int(index),
        }
        if self.return_image:
            start, size = int(group["jpeg_start"][i]), int(group["jpeg_size"][i])
            data = np.asarray(group["jpeg"][start : start + size]).tobytes()
            item["image"] = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
        return item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"] = None  # zarr handles are reopened in each worker process
        return state


class MagnificationBalancedSampler(Sampler[int]):
    """Indices drawn level-first: a level uniformly, then a sample uniformly within it (SPEC §1.5).

    Every level gets ``1/L`` of the draws whatever its size (the official training distribution). Draws
    are with replacement and depend only on ``(seed, epoch, rank)``: call :meth:`set_epoch` each epoch;
    ranks draw independent streams, so nothing needs partitioning.

    Args:
        dataset: a :class:`MultiScaleDataset`, or the per-level sample counts (levels in index order).
        num_samples: draws per epoch on this rank (default: ``len(dataset) // world_size``).
        seed: base seed (the same on every rank).
        rank, world_size: default from ``torch.distributed`` when it is initialised, else 0 and 1.
        weights: optional probability per level instead of uniform.

    Empty levels are never drawn.
    """

    def __init__(
        self,
        dataset: MultiScaleDataset | Sequence[int],
        num_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        counts = np.asarray(
            dataset.counts if isinstance(dataset, MultiScaleDataset) else list(dataset), dtype=np.int64
        )
        if counts.sum() == 0:
            raise ZoomLDMError("the dataset has no samples")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = (
            world_size if world_size is not None else (torch.distributed.get_world_size() if dist else 1)
        )
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        p = np.ones(len(counts)) if weights is None else np.asarray(weights, dtype=np.float64)
        if len(p) != len(counts) or (p < 0).any():
            raise ZoomLDMError(f"give one non-negative weight per level ({len(counts)})")
        p = np.where(counts > 0, p, 0.0)
        if p.sum() == 0:
            raise ZoomLDMError("every level with samples has weight 0")
        self.level_probs = p / p.sum()
        self.num_samples = (
            int(num_samples) if num_samples is not None else int(counts.sum()) // self.world_size
        )
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def draw(self) -> np.ndarray:
        """This epoch's indices on this rank (int64)."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        levels = rng.choice(len(self.counts), size=self.num_samples, p=self.level_probs)
        within = (rng.random(self.num_samples) * self.counts[levels]).astype(np.int64)
        return self.offsets[levels] + within

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw().tolist())


def collate_multiscale(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack latents, coordinates and indices; keep SSL grids as a **list** (their sizes differ by level).

    Returns ``latent [B, 3, 64, 64]``, ``ssl`` list of ``[C, h, w]``, ``mag`` LongTensor[B], ``slide``
    list of str, ``coords`` LongTensor[B, 2], ``index`` LongTensor[B] and, when present, ``image``
    uint8 ``[B, 256, 256, 3]``. The Summarizer accepts the list as it is.
    """
    out: dict[str, Any] = {
        "latent": torch.stack([b["latent"] for b in batch]),
        "ssl": [b["ssl"] for b in batch],
        "mag": torch.tensor([int(b["mag"]) for b in batch], dtype=torch.long),
        "slide": [b["slide"] for b in batch],
        "coords": torch.stack([b["coords"] for b in batch]),
        "index": torch.tensor([int(b["index"]) for b in batch], dtype=torch.long),
    }
    if batch and "image" in batch[0]:
        out["image"] = torch.stack([b["image"] for b in batch])
    return out
