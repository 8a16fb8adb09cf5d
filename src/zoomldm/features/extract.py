"""``zoomldm features``: multi-scale ZoomLDM UNet features of every tissue tile of each slide (SPEC §7).

For each slide (read, tissue mask and tiling exactly as ``zoomldm prepare``: :mod:`zoomldm.data`):

1. the **tiles** are the regions of the finest magnification asked for (20x by default) whose tissue
   fraction reaches the threshold;
2. every coarser magnification contributes the aligned region that **contains** each tile: a 5x region
   is a block of 4×4 base tiles (1024² base px) starting at a multiple of 4, so tile (row, col) lies in
   the 5x region at ``(row // 4·4, col // 4·4)``; regions reaching past the slide's edge are padded white;
3. the base tiles these regions cover are embedded once with the SSL encoder (their SSL grids);
4. every region's 256² image gets its UNet features (:class:`~.unet_features.UNetFeatureExtractor`,
   conditioned on its own SSL grid and magnification);
5. each tile's features at all magnifications are **fused** (``concat`` in the order finest → coarsest,
   or ``mean``) and written as ``<slide>.h5`` in the TRIDENT/CLAM layout (:mod:`.bags`) with the settings
   as attributes.

Finished slides are skipped on a rerun (files are written atomically), a slide that fails is reported
by name and the run goes on, ``--workers`` processes and ``RANK``/``WORLD_SIZE`` shards share the work.
``features.json`` in the output folder records the settings; a rerun with other settings is refused.

Modules: the settings in :mod:`.feature_settings`, one slide (steps 1–5) in :mod:`.slide_features`,
in-process / worker execution in :mod:`.extract_workers`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError, ZoomLDMError
from .bags import BAG_SUFFIX
from .extract_workers import _run
from .feature_settings import (
    DEFAULT_BASE_MPP,
    DEFAULT_THRESHOLD,
    FUSIONS,
    FeatureSettings,
    check_settings,
    resolve_magnifications,
)
from .slide_features import (
    ProgressFn,
    SlideFeatures,
    _version,
    containing_block,
    extract_slide,
    fuse_features,
)

__all__ = [
    "DEFAULT_BASE_MPP",
    "DEFAULT_THRESHOLD",
    "FUSIONS",
    "SETTINGS_FILE",
    "FeatureSettings",
    "FeaturesReport",
    "ProgressFn",
    "SlideFeatures",
    "SlideOutcome",
    "check_settings",
    "containing_block",
    "extract_features",
    "extract_slide",
    "fuse_features",
    "resolve_magnifications",
]

SETTINGS_FILE = "features.json"


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class SlideOutcome:
    """What happened to one slide: ``done`` (before), ``written``, ``failed`` or ``other-rank``."""

    id: str
    path: str
    status: str
    tiles: int = 0
    error: str = ""


@dataclass
class FeaturesReport:
    out_dir: Path
    slides: list[SlideOutcome]
    seconds: float
    tiles_per_second: float

    @property
    def failed(self) -> list[SlideOutcome]:
        return [s for s in self.slides if s.status == "failed"]


def extract_features(
    slides: str | Path | Sequence[Any],
    out_dir: str | Path,
    pipe: Any = None,
    encoder: Any = None,
    settings: FeatureSettings = FeatureSettings(),
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    *,
    config: str | Path | None = None,
    live: bool = False,
    encoder_weights: str | Path | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    slides_csv: str | Path | None = None,
    mpp: float | None = None,
    device: str = "auto",
    dtype: str = "float32",
    optimize: bool | None = None,
    compile: str | None = None,
) -> FeaturesReport:
    """``zoomldm features`` as one call: write ``<slide>.h5`` for every slide.

    Resumable: slides with a file are skipped, so a rerun retries only the failed ones. Failed slides are
    reported (with a human reason, also in ``report_rank<r>.json``), they do not raise.

    Args:
        slides: a folder (searched recursively), or a ``SlideSource`` list from ``data.prepare``.
        out_dir: the output folder (``features.json`` records the settings; other settings are refused).
        pipe: a loaded model (:class:`~zoomldm.models.bundle.ZoomLDMModel` or a pipeline), a checkpoint (our model dir, an official
            ``.ckpt``, a hub id, ``brca`` / ``naip``), or None: with ``config`` random weights of that
            architecture (tests and demos, seeded by ``settings.seed``; as ``zoomldm prepare``), else ``brca``.
        encoder: an :class:`~zoomldm.models.encoders.SSLEncoder`, a name, or None: the domain's encoder (with
            random model weights: a random encoder of the model's SSL width, as ``prepare``).
        settings: magnifications, timestep, blocks, fusion, seed, batch size, threshold, workers.
        rank, world_size: this process's shard (default: ``RANK`` / ``WORLD_SIZE``, else 0 / 1).
        progress: show progress bars.
        log: receives notes and one line per finished slide.
        config: preset or yaml: the architecture of an official checkpoint, or of random weights.
        live: the live UNet weights instead of the EMA ones.
        encoder_weights, encoder_options: a local weights file (or ``"random"``) and timm keyword
            arguments for an encoder given by name.
        slides_csv: a CSV with columns ``path[, id][, mpp]`` instead of a folder scan of ``slides``.
        mpp: level-0 resolution for files without it.
        device: ``auto``, ``cpu``, ``cuda`` (each rank uses ``cuda:LOCAL_RANK``).
        dtype: UNet / Summarizer dtype of a loaded model: ``float32``, ``bfloat16``, ``float16``.
        optimize, compile: inference speed-ups of a loaded model (default: on CUDA), as ``generate``.

    Raises:
        ZoomLDMError: bad settings, no slides, unloadable models, an OUT made with other settings.
    """
    from ..data.loading import encoder_for_model, is_random, load_encoder, load_pipeline
    from ..data.slides import find_slides as find_sources
    from ..models.bundle import ZoomLDMModel

    if isinstance(slides, (str, Path)):  # before loading any model: a wrong folder fails fast
        slides = find_sources(slides, slides_csv, mpp)
    if not isinstance(pipe, ZoomLDMModel) or not _is_encoder(encoder):
        from ..data.loading import resolve_device

        device = resolve_device(device)
        random_model = is_random(pipe, config)
        if not isinstance(pipe, ZoomLDMModel):
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ZoomLDMError(f"--dtype: unknown dtype {dtype!r}; expected float32, bfloat16 or float16")
            pipe = load_pipeline(
                pipe, config, seed=settings.seed, ema=not live, device=device, dtype=dtype, log=log
            )
            from ..devices import apply_speed_settings  # the one place of the speed flags' rules

            apply_speed_settings(pipe, optimize, compile)
        encoder = load_encoder(
            encoder_for_model(encoder, pipe),
            domain=pipe.config.domain,
            ssl_channels=pipe.config.ssl_channels,
            random_model=random_model,
            weights=encoder_weights,
            options=encoder_options,
            device=str(pipe.device),
            seed=settings.seed,
            log=log,
        )
    from ..data.prepare import rank_and_world
    from ..progress import make_progress, progress_enabled

    start = time.time()
    domain = pipe.config.domain
    check_settings(settings, pipe, encoder)
    sources = list(slides)
    rank, world = rank_and_world(rank, world_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _record_settings(out, settings, domain, pipe, encoder)

    outcomes = {s.id: SlideOutcome(s.id, str(s.path), "other-rank") for s in sources}
    mine = [s for i, s in enumerate(sources) if i % world == rank]
    todo = []
    for s in mine:
        if (out / f"{s.id}{BAG_SUFFIX}").exists():
            outcomes[s.id].status = "done"
        else:
            todo.append(s)
    tiles = 0
    bars = make_progress() if progress_enabled(progress) else None
    with bars if bars is not None else contextlib.nullcontext():
        slides_task = (
            bars.add_task("slides", total=len(mine), completed=len(mine) - len(todo)) if bars else None
        )
        tasks: dict[str, Any] = {}

        def tick(slide: str, done: int, total: int) -> None:
            if bars is None:
                return
            if slide not in tasks:
                tasks[slide] = bars.add_task(f"  {slide} (tiles)", total=total)
            bars.update(tasks[slide], completed=done, total=total)

        for source, (n, error) in _run(todo, out, pipe, encoder, settings, tick):
            outcome = outcomes[source.id]
            outcome.status, outcome.tiles, outcome.error = (
                ("failed", 0, error) if error else ("written", n, "")
            )
            tiles += n
            if bars is not None:
                if source.id in tasks:
                    bars.remove_task(tasks.pop(source.id))
                bars.advance(slides_task)
            if log is not None:
                log(f"{source.id}: FAILED {error}" if error else f"{source.id}: {n} tiles")
    seconds = time.time() - start
    report = FeaturesReport(out, list(outcomes.values()), seconds, tiles / seconds if seconds > 0 else 0.0)
    _write_json(
        out / f"report_rank{rank}.json", {"slides": [asdict(s) for s in report.slides], "seconds": seconds}
    )
    return report


def _record_settings(out: Path, settings: FeatureSettings, domain: str, pipe: Any, encoder: Any) -> None:
    """Write ``features.json``, or refuse to mix features made with other settings or models."""
    record = {
        "identity": settings.identity(domain),
        "model": json.loads(json.dumps(pipe.provenance, default=str)),
        "ssl_encoder": json.loads(json.dumps(encoder.describe(), default=str)),
    }
    path = out / SETTINGS_FILE
    if path.exists():
        from ..data.prepare import setting_differences  # the one rule, shared with `prepare`

        previous = json.loads(path.read_text())
        diffs = [
            f"{name}: {old!r} → {new!r}"
            for key in record
            for name, old, new in setting_differences(previous.get(key), record[key], f"{key}.")
        ]
        if diffs:
            raise OutputError(
                f"{out} holds features made with other settings ({'; '.join(diffs)}; see {SETTINGS_FILE}); "
                "give another OUT folder, or the same settings to resume"
            )
        return
    _write_json(path, {**record, "settings": asdict(settings), "zoomldm_version": _version()})


def _is_encoder(encoder: Any) -> bool:
    from ..models.encoders import SSLEncoder

    return isinstance(encoder, SSLEncoder)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
