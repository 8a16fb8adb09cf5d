"""Constraint metrics of large-image sampling: how well the downsampled high-magnification output matches
the guide (joint sampling) or the low-resolution input (super-resolution).

The comparison is :mod:`zoomldm.evaluation.constraints` (8-bit levels, PSNR with peak 255, MAE in grey
levels), accumulated tile batch by tile batch so that a 4096² output is never downsampled in one piece:

* ``psnr`` / ``mae``: area downsampling (the mean of each k×k block) — sampler-independent, and per tile
  exactly the same as downsampling the whole image, since no block crosses a tile border;
* ``psnr_cubic`` / ``mae_cubic``: the sampler's own antialiased cubic ``down`` applied per tile — the
  residual the constraint step minimises.
"""

from __future__ import annotations

import math

import torch

from ..evaluation.constraints import compare_levels, downsample_levels, to_levels

__all__ = ["ConstraintAccumulator", "to_levels"]

FILTERS = {"area": "", "cubic": "_cubic"}  # filter → suffix of the metric names


class ConstraintAccumulator:
    """Running PSNR / MAE between tiles downsampled by ``factor`` and their guide footprints."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.totals = {name: [0.0, 0.0, 0] for name in FILTERS}  # |d| sum, d² sum, count

    def add(self, high: torch.Tensor, guide: torch.Tensor) -> None:
        """Add tiles ``[B, 3, S, S]`` and footprints ``[B, 3, S/k, S/k]``, both in 8-bit levels
        (:func:`zoomldm.evaluation.constraints.to_levels`)."""
        for name, total in self.totals.items():
            c = compare_levels(downsample_levels(high.double(), self.factor, name), guide.double())
            total[0] += c.mae * c.num_values
            total[1] += c.rmse**2 * c.num_values
            total[2] += c.num_values

    def result(self) -> dict[str, float]:
        """``{"psnr", "mae", "psnr_cubic", "mae_cubic"}`` (PSNR ∞ for identical images)."""
        out: dict[str, float] = {}
        for name, (abs_sum, sq_sum, count) in self.totals.items():
            mse = sq_sum / count if count else float("nan")
            out["psnr" + FILTERS[name]] = float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
            out["mae" + FILTERS[name]] = abs_sum / count if count else float("nan")
        return out
