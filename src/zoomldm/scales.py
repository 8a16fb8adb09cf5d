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

import numbers
import re
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
        """A level from its name (``"2.5x"``, ``"2.5X"``, ``"2.5"``), the authors' key (``"2_5x"``) or its
        index (``3`` or ``"3"``), in every domain.

        A bare whole number is an index when it is in range and a level name only when no level has that
        index: ``"20"`` is 20x, ``"0"`` is the finest level of either domain. A number that is both (``"5"``
        in pathology: index 5 is 0.625x; ``"1"`` for satellite: index 1 is 2x) is refused with a message
        that names both readings, since silently picking one is the classic off-by-one (the satellite
        names count from 1x, indices from 0); write ``5x`` for the name. Anything else is a
        :class:`ZoomLDMError` that lists the valid names and indices.
        """
        if isinstance(value, Magnification):
            if value.domain != self.domain or not 0 <= value.index < len(self):
                raise ZoomLDMError(
                    f"magnification {value} is not a {self.domain} level; expected one of {self._valid()}"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, str | numbers.Real):
            raise ZoomLDMError(
                f"magnification must be a name or an index, got {type(value).__name__}; "
                f"expected one of {self._valid()}"
            )
        if isinstance(value, numbers.Integral):  # int, numpy / torch integers
            return self._by_index(int(value), repr(int(value)))
        text = str(value).strip().lower().replace("_", ".")
        if _WHOLE_NUMBER.fullmatch(text):
            as_index = int(text) if len(text) <= 3 and int(text) < len(self) else None
            as_name = self._by_name(text + "x")
            if as_index is not None and as_name is not None and as_name.index != as_index:
                raise ZoomLDMError(
                    f"magnification {value!r} is ambiguous for {self.domain}: index {as_index} is "
                    f"{self.levels[as_index].name}, but {as_name.name} is also a level; write "
                    f"{as_name.name} or {self.levels[as_index].name}"
                )
            if as_index is not None:
                return self.levels[as_index]
            if as_name is not None:
                return as_name
        else:
            found = self._by_name(text if text.endswith("x") else text + "x")
            if found is not None:
                return found
        other = self._other_domain(text)
        if other is not None:
            raise ZoomLDMError(
                f"{_shorten(value)!r} is a {other} magnification, not a level of this {self.domain} model; "
                f"expected one of {self._valid()}"
            )
        raise ZoomLDMError(
            f"unknown {self.domain} magnification {_shorten(value)!r}; expected one of {self._valid()}"
        )

    def _other_domain(self, text: str) -> str | None:
        """The domain whose level ``text`` names when this one has no such level (``20x`` for a satellite
        model, ``1x`` only in satellite), else None."""
        name = text if text.endswith("x") else text + "x"
        for domain, scales in DOMAINS.items():
            if domain != self.domain and scales._by_name(name) is not None:
                return domain
        return None

    def _by_index(self, index: int, shown: str) -> Magnification:
        if 0 <= index < len(self):
            return self.levels[index]
        raise ZoomLDMError(
            f"magnification index {_shorten(shown)} is out of range 0..{len(self) - 1} for {self.domain}; "
            f"expected one of {self._valid()}"
        )

    def _by_name(self, text: str) -> Magnification | None:
        for m in self.levels:
            if text in (m.name, m.key.replace("_", ".")) or _same_number(text, m.name):
                return m
        return None

    def _valid(self) -> str:
        return f"{', '.join(self.names)} (or an index 0..{len(self) - 1})"

    def for_downsample(self, downsample: int) -> Magnification:
        for m in self.levels:
            if m.downsample == downsample:
                return m
        raise ZoomLDMError(f"no {self.domain} level covers a {downsample}× downsample; levels: {self.names}")


def _same_number(a: str, b: str) -> bool:
    """``"2.50x"`` names the same level as ``"2.5x"`` (plain decimal numbers only: no ``nan``/``1e1``)."""
    if not (_DECIMAL_NAME.fullmatch(a) and _DECIMAL_NAME.fullmatch(b)):
        return False
    return float(a[:-1]) == float(b[:-1])


def _shorten(value: object, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_WHOLE_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL_NAME = re.compile(r"[0-9]{1,12}(\.[0-9]{0,12})?x|\.[0-9]{1,12}x", re.ASCII)


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
