"""The geometry of a large-image request from the model's configuration only: the scale cascade's stages
of a ``generate`` or ``superres`` request (:func:`plan_geometry`, :func:`_geometry`), the coarse canvas past
one guide patch (:func:`_coarse_of`) and the guide level a reference file covers
(:func:`guide_for_reference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .model import _ConfigPipe, model_spec


def plan_geometry(model: Any, config: str | Path | None = None, command: str = "generate", **request: Any):
    """The stages (:class:`~.joint.LargeImagePlan` list) of a ``generate`` or ``superres`` request from the
    model's configuration only (``guide``, ``target``, ``size``, ``region``, ``input_shape``,
    ``from_magnification`` as :func:`plan_large`)."""
    pipe = _ConfigPipe(model_spec(model, config).config)
    get = request.get
    return _geometry(
        pipe,
        command == "superres",
        get("guide"),
        get("target"),
        get("size"),
        get("region"),
        get("input_shape"),
        get("from_magnification"),
    )


def guide_for_reference(
    model: Any, reference: str | Path, target: Any = None, config: str | Path | None = None
):
    """The guide level whose field of view a reference file covers (as ``generate_large`` chooses it when
    neither guide nor size is given), read from the file's header or grid shape only; None if none fits."""
    from ...conditioning import load_ssl_grid
    from ..levels import parse_level
    from ..reference import GRID_SUFFIXES

    cfg = model_spec(model, config).config
    pipe = _ConfigPipe(cfg)
    path = Path(reference)
    if path.suffix.lower() in GRID_SUFFIXES:
        from ...io.grids import SSLGridFile

        lazy = SSLGridFile.open(path)  # the header only, for a [C, h, w] .npy / .safetensors
        h, w = (lazy if lazy is not None else load_ssl_grid(path, channels=cfg.ssl_channels)).shape[1:]
    else:
        from PIL import Image

        from ...errors import InputError

        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable image ({err})") from None
        tile = cfg.image_size
        if height % tile or width % tile:
            return None
        h, w = height // tile, width // tile
    if h != w:
        return None
    tmag = parse_level(pipe, target, "--to") if target is not None else pipe.scales[0]
    return next((m for m in pipe.scales if m.grid_size == h and m.index > tmag.index), None)


def _geometry(pipe, sr, guide, target, size, region, input_shape, from_magnification):
    from ..joint import _plan_pair, plan_stages
    from ..levels import parse_level

    if not sr:
        coarse = _coarse_of(pipe, sr, guide, target, size, region)
        return coarse.stages if coarse is not None else plan_stages(pipe, guide, target, size, region)
    if input_shape is None or from_magnification is None:
        raise ConfigError("a super-resolution plan needs input_shape=(H, W) and from_magnification")
    tile = pipe.config.image_size
    h, w = (int(v) for v in input_shape[:2])
    if h % tile or w % tile or h < tile or w < tile:
        raise ConfigError(f"the input is {w}×{h}; it must be a whole number of {tile}² patches")
    source = parse_level(pipe, from_magnification, "input magnification")
    tmag = parse_level(pipe, target, "target magnification") if target is not None else pipe.scales[0]
    return [_plan_pair(pipe, source, tmag, region=region, guide_shape=(h, w))]


def _coarse_of(pipe, sr, guide, target, size, region):
    """The coarse canvas of a ``generate --size`` past the coarsest level's one guide patch
    (:func:`.joint.coarse_request`), or None (super-resolution, a named guide, or one patch covers it)."""
    from ..joint import coarse_request
    from ..levels import parse_level

    if sr or guide is not None or size is None:
        return None
    tmag = parse_level(pipe, target, "target magnification") if target is not None else pipe.scales[0]
    return coarse_request(pipe, tmag, int(size), region)


def final_target(coarse):
    """The target level of a coarse request's last stage."""
    return coarse.stages[-1].target
