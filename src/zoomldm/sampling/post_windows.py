"""The sliding windows of post-processing (SPEC §4.5): their positions, how many cover each latent pixel
(as a map, or per axis: the count map is the product of the two 1-D counts), and their conditions, computed
by window row (:class:`_WindowContexts`)."""

from __future__ import annotations

import torch

from ..errors import InputError
from .conditions import summarize, window_grids
from .decode import window_starts


def window_positions(height: int, width: int, window: int, stride: int) -> torch.Tensor:
    """Top-left corners ``[N, 2]`` (y, x) of the windows, row-major."""
    if window > min(height, width):
        raise InputError(f"the canvas ({height}×{width} latent px) is smaller than the window ({window})")
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    return torch.tensor([(y, x) for y in ys for x in xs], dtype=torch.long)


def window_counts(height: int, width: int, positions: torch.Tensor, window: int) -> torch.Tensor:
    """How many windows cover each latent pixel ``[height, width]``."""
    count = torch.zeros(height, width)
    for y, x in positions.tolist():
        count[y : y + window, x : x + window] += 1
    return count


def _axis_counts(length: int, starts: list[int], window: int) -> torch.Tensor:
    count = torch.zeros(length)
    for s in starts:
        count[s : s + window] += 1
    return count


class _WindowContexts:
    """Window contexts by window row: computed per row (``chunk`` windows per Summarizer call), and kept
    for every row across the steps while all of them fit ``budget_mib`` (else recomputed each step: the
    same values, memory O(one window row))."""

    def __init__(self, pipe, grid, xs, tile_latent, target, interp, budget_mib, chunk, n_rows) -> None:
        self.pipe, self.grid, self.xs = pipe, grid, xs
        self.tile_latent, self.target, self.threshold, self.chunk = tile_latent, target, interp, chunk
        size_mib = n_rows * len(xs) * 65 * pipe.config.context_dim * 4 / 2**20
        self.keep = size_mib <= budget_mib
        self.rows: dict[int, torch.Tensor] = {}

    def row(self, y: int) -> torch.Tensor:
        """Contexts ``[len(xs), 65, D]`` of the windows at latent row ``y``."""
        if y not in self.rows:
            if not self.keep:
                self.rows.clear()
            positions = torch.tensor([(y, x) for x in self.xs], dtype=torch.long)
            parts = []
            for i in range(0, len(positions), self.chunk):
                grids = window_grids(
                    self.grid, positions[i : i + self.chunk], self.tile_latent, self.target, self.threshold
                )
                parts.append(summarize(self.pipe, grids, self.target))
            self.rows[y] = torch.cat(parts)
        return self.rows[y]
