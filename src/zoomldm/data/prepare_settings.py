"""The options of a ``zoomldm prepare`` run and what a run reports.

:class:`PrepareSettings` (with the per-domain defaults of threshold and base resolution, and the
settings a resumed store must keep: :meth:`~PrepareSettings.identity`), :class:`SlideReport` per slide
and :class:`PrepareReport` for the run (see :mod:`.prepare`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ZoomLDMError
from ..scales import Magnification, scales_for
from .tiling import TILE

#: minimum content fraction of a region, per domain (pathology: tissue; satellite: valid data)
DEFAULT_THRESHOLD = {"pathology": 0.5, "satellite": 0.95}
#: base resolution per domain: 20x ≙ 0.5 µm/px; satellite images keep their native resolution
DEFAULT_BASE_MPP = {"pathology": 0.5, "satellite": None}
_UNIT = {"pathology": "um", "satellite": "m"}


@dataclass
class PrepareSettings:
    """Options of a prepare run. Those in :meth:`identity` must stay the same to resume a store."""

    domain: str = "pathology"
    #: magnification names or indices (default: all levels of the domain)
    levels: tuple[str | int, ...] | None = None
    #: base resolution (µm/px or m/px); None = the domain default (0.5 µm/px; satellite: native)
    base_mpp: float | None = None
    #: minimum content fraction per region: one value or one per level; None = domain default
    tissue_threshold: float | tuple[float, ...] | None = None
    resampling: str = "lanczos"
    save_jpeg: bool = False
    jpeg_quality: int = 90
    batch_size: int = 32
    workers: int = 1
    #: resolution override for every slide (a CSV ``mpp`` column overrides it per slide)
    mpp: float | None = None
    #: autocast dtype for the VQ encoder (e.g. torch.bfloat16 on GPU); None = float32
    vae_dtype: str | None = None

    def resolved_levels(self) -> tuple[Magnification, ...]:
        scales = scales_for(self.domain)
        if self.levels is None:
            return tuple(scales)
        chosen = sorted({scales.parse(v).index for v in self.levels})
        return tuple(scales[i] for i in chosen)

    def resolved_threshold(self) -> float | tuple[float, ...]:
        t = DEFAULT_THRESHOLD[self.domain] if self.tissue_threshold is None else self.tissue_threshold
        if isinstance(t, (int, float)):
            if not 0 <= t <= 1:
                raise ZoomLDMError(f"the tissue threshold is a fraction in [0, 1], got {t}")
            return float(t)
        t = tuple(float(v) for v in t)
        if len(t) != len(self.resolved_levels()) or not all(0 <= v <= 1 for v in t):
            raise ZoomLDMError(
                f"give one tissue threshold in [0, 1] or one per level ({len(self.resolved_levels())})"
            )
        return t

    def resolved_base_mpp(self) -> float | None:
        return DEFAULT_BASE_MPP[self.domain] if self.base_mpp is None else float(self.base_mpp)

    def identity(self) -> dict[str, Any]:
        """Settings that change the stored data (a resumed run must use the same)."""
        return {
            "domain": self.domain,
            "levels": [m.name for m in self.resolved_levels()],
            "base_mpp": self.resolved_base_mpp(),
            "tissue_threshold": self.resolved_threshold(),
            "resampling": self.resampling,
            "save_jpeg": self.save_jpeg,
            "jpeg_quality": self.jpeg_quality if self.save_jpeg else None,
            "vae_dtype": self.vae_dtype,
            "tile": TILE,
        }

    def validate(self) -> None:
        if self.domain not in DEFAULT_THRESHOLD:
            raise ZoomLDMError(f"unknown domain {self.domain!r}; expected pathology or satellite")
        from .readers import RESAMPLING

        if self.resampling not in RESAMPLING:
            raise ZoomLDMError(
                f"unknown resampling filter {self.resampling!r}; expected one of {sorted(RESAMPLING)}"
            )
        if self.batch_size < 1 or self.workers < 1:
            raise ZoomLDMError("--batch-size and --workers must be at least 1")
        self.resolved_threshold()


@dataclass
class SlideReport:
    """What happened to one slide in this run."""

    id: str
    path: str
    status: str  # "committed" (this run), "done" (in the store before), "failed", "pending" (another rank)
    counts: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass
class PrepareReport:
    """Result of :func:`prepare_dataset`: per-slide outcomes and totals."""

    store: str
    rank: int
    world_size: int
    slides: list[SlideReport]
    totals: dict[str, int]
    seconds: float

    @property
    def failed(self) -> list[SlideReport]:
        return [s for s in self.slides if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
