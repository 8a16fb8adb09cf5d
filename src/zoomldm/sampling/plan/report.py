"""The plan of one run as a record and as text: :class:`RunPlan` (stages, memory and disk terms, time,
what is available and what is short), its ``--dry-run`` lines, its JSON form and :meth:`RunPlan.check`, the
up-front refusal.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import ZoomLDMError
from .resources import Term, format_bytes
from .stages import COARSE_KIND, StagePlan


@dataclass
class RunPlan:
    """The plan of one large-image run (:func:`plan_large`); :meth:`lines` is what ``--dry-run`` prints."""

    command: str
    model: str
    device: str
    dtype: str
    schedule: str
    output: str | None
    width: int
    height: int
    stages: list[StagePlan]
    host_terms: list[Term]
    gpu_terms: list[Term]
    disk_terms: list[Term]
    peak_host_bytes: int
    peak_gpu_bytes: int | None
    disk_bytes: int
    output_bytes: int
    bigtiff: bool | None
    seconds: float
    time_source: str
    available: dict[str, int | None] = field(default_factory=dict)
    shortfalls: list[str] = field(default_factory=list)

    @property
    def unet_rows(self) -> int:
        return sum(s.unet_rows + s.post_unet_rows + s.inversion_unet_rows for s in self.stages)

    @property
    def vq_passes(self) -> int:
        return sum(s.vq_passes + s.decode_windows for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["host_terms"] = [t.to_dict() for t in self.host_terms]
        record["gpu_terms"] = [t.to_dict() for t in self.gpu_terms]
        record["disk_terms"] = [t.to_dict() for t in self.disk_terms]
        record["stages"] = [s.to_dict() for s in self.stages]
        return json.loads(json.dumps(record, default=str))

    def check(self) -> None:
        """Raise a one-line :class:`ZoomLDMError` naming what is short (disk, host or GPU memory)."""
        if self.shortfalls:
            raise ZoomLDMError("; ".join(self.shortfalls))

    def lines(self) -> list[str]:
        """Human-readable plan: stages, counts, memory and disk terms, time."""
        out = [
            f"plan: zoomldm {self.command}, {self.width}×{self.height} px "
            f"({self.width * self.height / 1e9:.3g} gigapixels), model {self.model}, {self.device} {self.dtype}, "
            f"schedule {self.schedule}",
            f"output: {self.output or 'memory'}"
            + ("" if self.bigtiff is None else f" ({'BigTIFF' if self.bigtiff else 'classic TIFF'})"),
            f"scale cascade: {' → '.join([self.stages[0].guide] + [s.target for s in self.stages])}",
        ]
        for s in self.stages:
            if s.guide_kind == COARSE_KIND:
                out.append(
                    f"  {s.name}: {s.target}, {s.width}×{s.height} px = {s.tiles} patches from noise "
                    f"(sliding windows, stride 1/4 patch: {s.blocks} windows; ours, not the paper's)"
                )
                out.append(
                    f"    {s.outer_steps} steps × {s.blocks} windows: {s.unet_rows:,} UNet rows; "
                    f"decode: {s.decode_windows:,} VQ windows"
                )
                continue
            out.append(
                f"  {s.name}: {s.guide} → {s.target} (k = {s.k}), {s.width}×{s.height} px, {s.tiles} tiles in "
                f"{s.blocks} blocks of {s.block_shape[0]}×{s.block_shape[1]}, guide: {s.guide_kind}"
            )
            out.append(
                f"    joint sampling: {s.outer_steps} steps × {s.inner_steps} Newton iterations"
                + (f" (in the last {s.newton_steps})" if s.newton_steps < s.outer_steps else "")
                + f": {s.unet_rows:,} UNet rows, {s.vq_passes:,} VQ passes"
            )
            if s.inversion_patches:
                out.append(
                    f"    condition inversion: {s.inversion_patches} patches, {s.inversion_unet_rows:,} UNet rows "
                    "(forward + backward)"
                )
            if s.post_steps:
                out.append(
                    f"    post-processing: {s.post_steps} steps × {s.post_windows:,} windows: "
                    f"{s.post_unet_rows:,} UNet rows"
                )
            out.append(f"    decode: {s.decode_windows:,} VQ windows")
        out.append(f"total: {self.unet_rows:,} UNet rows, {self.vq_passes:,} VQ passes")
        out.append("host memory terms:")
        out += [
            f"  {t.name}: {format_bytes(t.bytes)}" + (f" ({t.note})" if t.note else "")
            for t in self.host_terms
        ]
        out.append(f"peak host memory: {format_bytes(self.peak_host_bytes)}")
        if self.peak_gpu_bytes is not None:
            out.append("GPU memory terms:")
            out += [
                f"  {t.name}: {format_bytes(t.bytes)}" + (f" ({t.note})" if t.note else "")
                for t in self.gpu_terms
            ]
            out.append(f"peak GPU memory: {format_bytes(self.peak_gpu_bytes)}")
        out.append("disk terms:")
        out += [
            f"  {t.name}: {format_bytes(t.bytes)}" + (f" ({t.note})" if t.note else "")
            for t in self.disk_terms
        ]
        out.append(f"canvas disk: {format_bytes(self.disk_bytes)}")
        avail = ", ".join(
            f"{name} {format_bytes(value)}" for name, value in self.available.items() if value is not None
        )
        if avail:
            out.append(f"available: {avail}")
        out.append(f"estimated time: {_format_seconds(self.seconds)} ({self.time_source})")
        return out


def _format_seconds(s: float) -> str:
    if s <= 0:
        return "0 s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days" if s < 100 * 86400 else f"{s / 86400:.0f} days"
