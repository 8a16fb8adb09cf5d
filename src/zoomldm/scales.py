"""Magnification levels per domain.

A magnification is a value object (:class:`Magnification`): its summarizer index, its canonical name,
the authors' key and its size in base-resolution pixels. Nothing else in the package passes bare
strings like ``"2_5x"`` around; conversions live here (SPEC §1.1).

Pathology (BRCA): 8 levels, index 0 = 20x (base, ~0.5 µm/px) ... index 7 = 0.15625x. Level k covers
a region of ``256·2^k`` base pixels resized to 256², and its SSL grid is ``2^k × 2^k`` base tiles.

Satellite (NAIP): 4 levels, index 0 = ``1x`` is the *finest* level (native resolution) and level k
again covers ``256·2^k`` native pixels (SPEC §1.1, §12: 1x = 256 … 4x = 2048).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ZoomLDMError

#: base resolution of the pathology domain: 20x ≙ 0.5 µm/px (CONVENTIONS: magnification by µm/px)
PATHOLOGY_BASE_MPP = 0.5
#: NAIP imagery is about 1 m/px; satellite users set their own base resolution per image
SATELLITE_BASE_MPP = 1.0


@dataclass(frozen=True)
class Magnification:
    """One magnification level of a domain."""

    domain: str
    index: int
    name: str
    key: str
    base_mpp: float

    @property
    def downsample(self) -> int:
        """Base pixels per pixel of the 256² patch (1, 2, 4, …)."""
        return 2**self.index

    @property
    def fov_base_px(self) -> int:
        """Side of the region, in base-resolution pixels, that one 256² patch covers."""
        return 256 * self.downsample

    @property
    def grid_size(self) -> int:
        """Side of the raw SSL grid: one embedding per 256² base tile."""
        return self.downsample

    @property
    def mpp(self) -> float:
        """Physical resolution of the 256² patch (µm/px for pathology, m/px for satellite)."""
        return self.base_mpp * self.downsample

    def __str__(self) -> str:
        return self.name


class Scales:
    """The ordered magnification levels of one domain."""

    def __init__(self, domain: str, names: list[str], keys: list[str], base_mpp: float) -> None:
        self.domain = domain
        self.levels = tuple(
            Magnification(domain, i, n, k, base_mpp) for i, (n, k) in enumerate(zip(names, keys, strict=True))
        )

    def __len__(self) -> int:
        return len(self.levels)

    def __iter__(self) -> Iterator[Magnification]:
        return iter(self.levels)

    def __getitem__(self, index: int) -> Magnification:
        return self.levels[index]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.levels]

    def parse(self, value: str | int | Magnification) -> Magnification:
        """Accept ``"2.5x"``, the authors' ``"2_5x"``, ``"2.5"``, ``"2.5X"`` or an index."""
        if isinstance(value, Magnification):
            if value.domain != self.domain or value.index >= len(self):
                raise ZoomLDMError(
                    f"magnification {value} is not a {self.domain} level; expected one of {self.names}"
                )
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(self):
                return self.levels[value]
            raise ZoomLDMError(
                f"magnification index {value} is out of range 0..{len(self) - 1} for {self.domain}"
            )
        text = str(value).strip().lower().replace("_", ".")
        if text.isdigit() and not text.endswith("x") and int(text) < len(self) and self.domain == "satellite":
            # a bare small integer is ambiguous for satellite ("1" = 1x); treat it as the name
            text = text + "x"
        if not text.endswith("x"):
            text = text + "x"
        for m in self.levels:
            if text == m.name or _same_number(text, m.name):
                return m
        raise ZoomLDMError(
            f"unknown {self.domain} magnification {value!r}; expected one of {', '.join(self.names)}"
        )

    def for_downsample(self, downsample: int) -> Magnification:
        for m in self.levels:
            if m.downsample == downsample:
                return m
        raise ZoomLDMError(f"no {self.domain} level covers a {downsample}× downsample; levels: {self.names}")


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a[:-1]) == float(b[:-1])
    except ValueError:
        return False


PATHOLOGY = Scales(
    "pathology",
    ["20x", "10x", "5x", "2.5x", "1.25x", "0.625x", "0.3125x", "0.15625x"],
    ["20x", "10x", "5x", "2_5x", "1_25x", "0_625x", "0_3125x", "0_15625x"],
    PATHOLOGY_BASE_MPP,
)
SATELLITE = Scales("satellite", ["1x", "2x", "3x", "4x"], ["1x", "2x", "3x", "4x"], SATELLITE_BASE_MPP)

DOMAINS: dict[str, Scales] = {"pathology": PATHOLOGY, "satellite": SATELLITE}


def scales_for(domain: str, levels: int | None = None) -> Scales:
    """The scales of ``domain``, truncated to ``levels`` when a model has fewer (e.g. a small test model)."""
    try:
        scales = DOMAINS[domain]
    except KeyError:
        raise ZoomLDMError(f"unknown domain {domain!r}; expected one of {sorted(DOMAINS)}") from None
    if levels is None or levels == len(scales):
        return scales
    if levels > len(scales):
        raise ZoomLDMError(f"{domain} has {len(scales)} magnification levels, the model asks for {levels}")
    return Scales(domain, scales.names[:levels], [m.key for m in scales][:levels], scales.levels[0].base_mpp)
