"""The result of a large-image run and what is recorded of it: :class:`LargeImageResult`, its metrics,
the provenance settings (:func:`base_settings`) and the files beside the output (:func:`finish_outputs`:
``<stem>_guide.png``, ``<stem>.json``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .constrained import ConstrainedResult
from .distributed import rank_world
from .output import RunState
from .stages import LargeImagePlan


@dataclass
class LargeImageResult:
    """Output of :func:`generate_large_image` / :func:`~zoomldm.sampling.superres.super_resolve`.

    Attributes:
        image: uint8 ``[H, W, 3]`` (None for outputs too large to keep in memory; see ``path``).
        path: the written PNG / pyramidal TIFF (None when no ``out`` was given).
        guide_image: uint8 guide (joint sampling) or low-resolution input (super-resolution); None for a
            guide larger than :data:`MAX_GUIDE_IN_MEMORY` pixels (a cascade stage or coarse canvas of a
            gigapixel request: it stays on disk, and is written beside the output as ``<stem>_guide.tif``).
        latent: final latent canvas ``[C, H/f, W/f]`` (CPU); None above ``MAX_IN_MEMORY_PIXELS`` (the
            canvas then lives only in the run's state folder until the output is complete).
        metrics: ``tiles`` (each tile's own decode before post-processing) and ``output`` (the final image)
            as ``{"psnr", "mae"}`` against the guide after downsampling; UNet rows and VQ passes; seconds.
        settings: every setting, the seed and the model provenance (also stored in the file).
        pixels: the image as a uint8 zarr array in the run's state (cascade stages only), else None.
    """

    image: np.ndarray | None
    path: Path | None
    guide_image: np.ndarray | None
    latent: torch.Tensor | None
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    pixels: Any = field(default=None, repr=False)


#: guides up to this many pixels are returned and written as ``<stem>_guide.png`` (a 4096² RGB image is
#: 48 MiB); larger ones (zarr arrays of the run's state) are streamed to ``<stem>_guide.tif``
MAX_GUIDE_IN_MEMORY = 4096 * 4096


#: rows of an on-disk guide read at a time when it is written as a TIFF (one tile row of the writer)
GUIDE_BAND_ROWS = 256


def guide_for_result(guide: Any) -> Any:
    """The guide as a result keeps it: a numpy array when it fits :data:`MAX_GUIDE_IN_MEMORY`, else the
    on-disk (zarr) array itself, read band by band by :func:`finish_outputs` and then dropped."""
    if isinstance(guide, np.ndarray):
        return guide
    if int(guide.shape[0]) * int(guide.shape[1]) <= MAX_GUIDE_IN_MEMORY:
        return np.asarray(guide[:])
    return guide


def _result_metrics(result: ConstrainedResult, computed: list[int], output: dict, seconds: dict) -> dict:
    return {
        "tiles": {key[6:]: v for key, v in result.metrics.items() if key.startswith("tiles_")},
        "output": output,
        "computed_tiles": len(computed),  # the request's tiles + the rest of their canvas blocks
        "blocks": result.metrics.get("blocks"),
        "block_seconds": result.metrics.get("block_seconds"),
        "guide_seconds": result.metrics.get("guide_seconds"),
        "unet_forwards": result.metrics["unet_forwards"],
        "vq_passes": result.metrics["vq_passes"],
        "seconds": seconds,
    }


def _finite(d: dict) -> dict:
    return {k: (v if not isinstance(v, float) or np.isfinite(v) else str(v)) for k, v in d.items()}


def finish_outputs(
    result: LargeImageResult, state: RunState, extra_images: dict[str, np.ndarray] | None = None
):
    """Write ``<stem>_guide.png`` (the guide / low-resolution input), any ``<stem>_<name>.png`` of
    ``extra_images`` and ``<stem>.json`` (metrics + settings) beside the output; drop the resume state.

    ``result.settings`` and ``result.metrics`` become their JSON form (lists, strings for paths), so that
    they equal the record in ``<stem>.json`` whether or not a file is written."""
    result.settings = json.loads(json.dumps(result.settings, default=str))
    result.metrics = json.loads(json.dumps(result.metrics, default=str))
    result.pixels = None  # it lived in the state folder, removed now
    extra = extra_images or {}
    if rank_world()[0] == 0:  # rank 0 writes the files and removes the state
        if result.path is not None:
            _write_sidecars(result.path, result.guide_image, result.metrics, result.settings, extra)
        state.clear()
    if not isinstance(result.guide_image, np.ndarray):
        result.guide_image = None  # an on-disk guide lived in the state folder (written as <stem>_guide.tif)
    return result


def _write_sidecars(out: Path, guide: np.ndarray, metrics: dict, settings: dict, extra: dict) -> None:
    from ..io.images import save_png

    stem = out.name.split(".")[0]
    for name, image in {"guide": guide, **extra}.items():
        if image is None:
            continue
        meta = {"role": name, **_flat(settings)}
        if isinstance(image, np.ndarray):
            save_png(out.with_name(f"{stem}_{name}.png"), image, meta)
        else:  # a guide on disk, larger than MAX_GUIDE_IN_MEMORY: a pyramidal TIFF, band by band
            _stream_tiff(out.with_name(f"{stem}_{name}.tif"), image, meta)
    record = {"output": out.name, "metrics": metrics, "settings": settings}
    tmp = out.with_name(f".{stem}.json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out.with_name(f"{stem}.json"))


def _stream_tiff(path: Path, image: Any, metadata: dict) -> None:
    from ..io.tiff import PyramidalTiffWriter

    height, width = int(image.shape[0]), int(image.shape[1])
    with PyramidalTiffWriter(path, height, width, metadata=metadata, compression="jpeg") as writer:
        for y in range(0, height, GUIDE_BAND_ROWS):
            writer.write_rows(y, np.ascontiguousarray(image[y : y + GUIDE_BAND_ROWS]))


def _flat(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if len(k) < 80}


def base_settings(pipe, plan: LargeImagePlan, seed: int, **parts: Any) -> dict[str, Any]:
    """The provenance record: request, every config, seed, model."""
    record: dict[str, Any] = {"method": "zoomldm joint multi-scale sampling", **plan.describe(), "seed": seed}
    for name, value in parts.items():
        record[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    record["model"] = {k: str(v) for k, v in pipe.provenance.items()}
    if getattr(pipe, "inference_settings", None):  # pipe.optimize(): another rounding, so part of the record
        record["inference_settings"] = dict(pipe.inference_settings)
    return record


def _grid_digest(grid) -> str:
    """The reference grid's provenance digest (:func:`zoomldm.io.grids.grid_digest`)."""
    from ..io.grids import grid_digest

    return grid_digest(grid)
