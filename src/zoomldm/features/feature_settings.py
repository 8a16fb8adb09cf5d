"""The options of ``zoomldm features`` and their checks: :class:`FeatureSettings` with the per-domain
defaults (tissue threshold, base resolution), the magnifications parsed finest first, and
:func:`check_settings`, which refuses bad settings before any slide is read (see :mod:`.extract`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ZoomLDMError
from ..scales import PATHOLOGY_BASE_MPP, Magnification

FUSIONS = ("concat", "mean")
#: default minimum tissue (pathology) / valid-data (satellite) fraction of a tile, as ``prepare``
DEFAULT_THRESHOLD = {"pathology": 0.5, "satellite": 0.95}
DEFAULT_BASE_MPP = {"pathology": PATHOLOGY_BASE_MPP, "satellite": None}
_UNIT = {"pathology": "um", "satellite": "m"}


@dataclass(frozen=True)
class FeatureSettings:
    """Options of feature extraction (defaults: SPEC §7's reconstruction)."""

    magnifications: tuple[str, ...] = ("20x", "5x")
    timestep: int = 100
    blocks: tuple[str, ...] = ("mid", "up1")
    fusion: str = "concat"
    seed: int = 0
    batch_size: int = 16
    #: minimum tissue fraction of a tile; None = the domain default (0.5 pathology, 0.95 satellite)
    tissue_threshold: float | None = None
    #: base resolution; None = the domain default (0.5 µm/px; satellite: native)
    base_mpp: float | None = None
    resampling: str = "lanczos"
    workers: int = 1

    def identity(self, domain: str) -> dict[str, Any]:
        """Settings that change the features (a resumed run must use the same)."""
        return {
            "domain": domain,
            "magnifications": list(self.magnifications),
            "timestep": self.timestep,
            "blocks": list(self.blocks),
            "fusion": self.fusion,
            "seed": self.seed,
            "tissue_threshold": self.threshold(domain),
            "base_mpp": self.base(domain),
            "resampling": self.resampling,
        }

    def threshold(self, domain: str) -> float:
        return DEFAULT_THRESHOLD[domain] if self.tissue_threshold is None else float(self.tissue_threshold)

    def base(self, domain: str) -> float | None:
        return DEFAULT_BASE_MPP[domain] if self.base_mpp is None else float(self.base_mpp)


def resolve_magnifications(scales: Any, names: Sequence[str | int]) -> tuple[Magnification, ...]:
    """Parse and sort finest first; duplicates are refused."""
    mags = [scales.parse(n) for n in names]
    if not mags:
        raise ZoomLDMError("give at least one magnification, e.g. --magnifications 20x,5x")
    if len({m.index for m in mags}) != len(mags):
        raise ZoomLDMError(f"a magnification is named twice in {[str(n) for n in names]}")
    return tuple(sorted(mags, key=lambda m: m.index))


def check_settings(settings: FeatureSettings, pipe: Any, encoder: Any) -> None:
    """Refuse bad settings before any slide is read (each raises :class:`ZoomLDMError`)."""
    from .unet_features import UNetFeatureExtractor

    resolve_magnifications(pipe.scales, settings.magnifications)
    UNetFeatureExtractor(pipe, settings.blocks, settings.timestep, settings.seed)  # blocks, timestep
    if settings.fusion not in FUSIONS:
        raise ZoomLDMError(f"unknown fusion {settings.fusion!r}; expected one of {', '.join(FUSIONS)}")
    if settings.batch_size < 1 or settings.workers < 1:
        raise ZoomLDMError("--batch-size and --workers must be at least 1")
    if not 0 <= settings.threshold(pipe.config.domain) <= 1:
        raise ZoomLDMError(
            f"--tissue-threshold: expected a fraction in [0, 1], got {settings.tissue_threshold}"
        )
    if encoder.dim != pipe.config.ssl_channels:
        raise ZoomLDMError(
            f"the SSL encoder gives {encoder.dim}-d embeddings; the model expects {pipe.config.ssl_channels}"
        )
