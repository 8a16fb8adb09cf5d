"""Magnifications at the edge and inside: parse once, then pass :class:`~zoomldm.scales.Magnification`.

The public entry points (``ZoomLDMPipeline.generate_large`` / ``.super_resolve``,
:func:`~.joint.generate_large_image`, :func:`~.superres.super_resolve`, :func:`~.joint.plan_large_image`)
turn ``"5x"`` / ``"2_5x"`` / an index into a ``Magnification`` with :func:`parse_level`; the internals
(:func:`~.constrained.constrained_sample`, :func:`~.postprocess.postprocess_latent`,
:func:`~.inversion.invert_conditions`, the conditions) take ``Magnification`` only and check it with
:func:`require_level`, which compares two attributes and never parses again.
"""

from __future__ import annotations

from ..errors import ConfigError, ZoomLDMError
from ..scales import Magnification


def parse_level(pipe, value: str | int | Magnification, what: str) -> Magnification:
    """``value`` as one of the model's levels; the error names ``what`` and lists the levels. A
    ``Magnification`` (parsed before) is only checked (:func:`require_level`), never parsed again."""
    if isinstance(value, Magnification):
        return require_level(pipe, value, what)
    try:
        return pipe.scales.parse(value)
    except ZoomLDMError as err:  # keep Scales.parse's text, add what it was for and the model's levels
        raise ConfigError(f"{what}: {err} (this model's levels: {', '.join(pipe.scales.names)})") from None


def require_level(pipe, value: Magnification | None, what: str) -> Magnification:
    """An already parsed level of this model (None = the base level, 20x / 1x)."""
    if value is None:
        return pipe.scales[0]
    if not isinstance(value, Magnification):
        raise ConfigError(
            f"{what} must be a Magnification here (parse it once at the edge: pipe.magnification({value!r}))"
        )
    if value.domain != pipe.scales.domain or value.index >= len(pipe.scales):
        raise ConfigError(f"{what} {value} is not a level of this {pipe.scales.domain} model")
    return value
