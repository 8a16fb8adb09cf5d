"""What the trainer reports: loss per magnification, throughput, and sample grids per magnification.

Losses are accumulated on the device (no synchronisation per step) and summed over processes only when
logged. Sample grids use a fixed set of stored samples (evenly spaced within each level) and fixed initial
noise, so grids of successive steps are comparable: for each level, the top row is the stored latent
decoded (what the model should imitate) and the bottom row a sample from the EMA UNet conditioned on the
same SSL grid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..scales import Magnification


class LossMeter:
    """Running sum and count of per-sample losses per magnification index."""

    def __init__(self, levels: Sequence[Magnification], device: torch.device) -> None:
        self.levels = list(levels)
        size = max(m.index for m in self.levels) + 1
        self.sums = torch.zeros(size, dtype=torch.float64, device=device)
        self.counts = torch.zeros(size, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, per_sample: torch.Tensor, magnification: torch.Tensor) -> None:
        self.sums.index_add_(0, magnification, per_sample.detach().double())
        self.counts.index_add_(0, magnification, torch.ones_like(per_sample, dtype=torch.float64))

    def compute(self, accelerator=None) -> dict[str, float]:
        """``{"loss": mean, "loss/<mag>": mean per level, "count/<mag>": samples}`` over all processes; resets."""
        sums, counts = self.sums, self.counts
        if accelerator is not None and accelerator.num_processes > 1:
            packed = accelerator.reduce(torch.stack([sums, counts]), reduction="sum")
            sums, counts = packed[0], packed[1]
        sums, counts = sums.cpu(), counts.cpu()
        out: dict[str, float] = {}
        if counts.sum() > 0:
            out["loss"] = float(sums.sum() / counts.sum())
        for m in self.levels:
            if counts[m.index] > 0:
                out[f"loss/{m.name}"] = float(sums[m.index] / counts[m.index])
                out[f"count/{m.name}"] = float(counts[m.index])
        self.sums.zero_()
        self.counts.zero_()
        return out


class Throughput:
    """Samples and optimizer steps per second of training since the previous call; time spent inside
    :meth:`paused` (sample grids, checkpoints) is not counted, so the rate is the training speed."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._t0 = time.perf_counter()
        self._excluded = 0.0
        self._samples = 0
        self._steps = 0

    def add(self, samples: int, steps: int = 0) -> None:
        self._samples += samples
        self._steps += steps

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time of the enclosed work (a sample grid, a checkpoint) out of the rate."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - start

    def compute(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self._t0 - self._excluded, 1e-9)
        out = {"throughput/samples_per_s": self._samples / dt, "throughput/steps_per_s": self._steps / dt}
        self.reset()
        return out


# -- sample grids --------------------------------------------------------------------------------------
@dataclass
class SampleSet:
    """Fixed conditions for sample grids: a few stored samples per level."""

    levels: list[Magnification]
    rows: list[list[int]]  # dataset indices per level
    ssl: list[list[torch.Tensor]]  # prepared grids per level
    latents: list[torch.Tensor]  # stored latents per level [n, 3, 64, 64]


def fixed_samples(dataset, per_level: int) -> SampleSet:
    """``per_level`` samples evenly spaced within each level of a ``MultiScaleDataset``."""
    levels, rows, ssl, latents = [], [], [], []
    for level, count in enumerate(dataset.counts):
        if count == 0:
            continue
        start = int(dataset.offsets[level])
        picks = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(per_level, count))})
        items = [dataset[start + i] for i in picks]
        levels.append(dataset.levels[level])
        rows.append([start + i for i in picks])
        ssl.append([it["ssl"] for it in items])
        latents.append(torch.stack([it["latent"] for it in items]))
    return SampleSet(levels, rows, ssl, latents)


@torch.no_grad()
def sample_grids(
    unet: torch.nn.Module,
    summarizer: torch.nn.Module,
    vae: torch.nn.Module,
    schedule: dict,
    samples: SampleSet,
    steps: int,
    guidance: float,
    scheduler: str = "ddim",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One uint8 sheet per level (top: stored latent decoded; bottom: generated), keyed by level name.

    Runs in the caller's autocast context; the initial noise comes from a CPU generator seeded with
    ``seed``, so it is the same on every device and at every step.
    """
    from ..io.images import contact_sheet
    from ..models.bundle import to_uint8
    from ..sampling.denoise import denoise
    from ..schedule import make_scheduler

    device = next(unet.parameters()).device
    vae_dtype = next(vae.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    sheets = {}
    for mag, grids, stored in zip(samples.levels, samples.ssl, samples.latents, strict=True):
        n = len(grids)
        mags = torch.full((n,), mag.index, dtype=torch.long, device=device)
        with torch.autocast(device.type, enabled=False):  # float32 Summarizer, as in training
            context = summarizer([g.to(device) for g in grids], mags).float()
        noise = torch.randn(stored.shape, generator=generator).to(device)
        latents = denoise(
            unet, make_scheduler(scheduler, schedule), noise, context, steps, guidance, progress=False
        )
        both = torch.cat([stored.to(device), latents]).to(vae_dtype)
        images = to_uint8(vae.decode(both).sample.float().clamp(-1, 1))
        sheets[mag.name] = contact_sheet(list(images), ncols=n, padding=2)
    return sheets
