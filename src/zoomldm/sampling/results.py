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
        guide_image: uint8 guide (joint sampling) or low-resolution input (super-resolution).
        latent: final latent canvas ``[C, H/f, W/f]`` (CPU); None above ``MAX_IN_MEMORY_PIXELS`` (the
            canvas then lives only in the run's state folder until the output is complete).
        metrics: ``tiles`` (each tile's own decode before post-processing) and ``output`` (the final image)
            as ``{"psnr", "mae"}`` against the guide after downsampling; UNet rows and VQ passes; seconds.
        settings: every setting, the seed and the model provenance (also stored in the file).
        pixels: the image as a uint8 zarr array in the run's state (cascade stages only), else None.
    """

    image: np.ndarray | None
    path: Path | None
    guide_image: np.ndarray
    latent: torch.Tensor | None
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    pixels: Any = field(default=None, repr=False)


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
    if rank_world()[0] != 0:  # rank 0 writes the files and removes the state
        return result
    if result.path is not None:
        _write_sidecars(result.path, result.guide_image, result.metrics, result.settings, extra_images or {})
    state.clear()
    return result


def _write_sidecars(out: Path, guide: np.ndarray, metrics: dict, settings: dict, extra: dict) -> None:
    from ..io.images import save_png

    stem = out.name.split(".")[0]
    save_png(out.with_name(f"{stem}_guide.png"), guide, {"role": "guide", **_flat(settings)})
    for name, image in extra.items():
        save_png(out.with_name(f"{stem}_{name}.png"), image, {"role": name, **_flat(settings)})
    record = {"output": out.name, "metrics": metrics, "settings": settings}
    tmp = out.with_name(f".{stem}.json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out.with_name(f"{stem}.json"))


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


def _grid_digest(grid: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(grid.float().contiguous().numpy().tobytes()).hexdigest()[:16]
