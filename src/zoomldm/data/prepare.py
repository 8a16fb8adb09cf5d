"""``zoomldm prepare``: a folder of slides or large images → one multi-scale training store.

Design (what runs where):

1. **Setup**, rank 0 first (``accelerate``'s ``main_process_first`` when ``WORLD_SIZE > 1``): create
   the store, or reopen it, check that it was made with the same settings, cut back any half-done
   commit, and start a new *run* number.
2. **Work**: every rank takes slides ``rank, rank + world_size, …`` of the sorted list and skips those
   already committed or with a complete part. Each slide is turned into its own part group
   (:func:`~.extract.process_slide`) in-process or by ``workers`` local processes; a slide that fails is
   recorded as failed (with this run's number) and the run goes on.
3. **Commit**, rank 0 only: complete parts are appended to the level arrays strictly in slide order
   (:class:`~.store.StoreWriter`), as soon as all earlier slides are resolved; rank 0 polls the store
   for the other ranks' parts, so the store must be shared (network file system or object storage).

Because parts are per slide and commits are ordered, the finished store holds the same samples in the
same order whatever the crashes, worker count or number of ranks; with the same compute setup (device,
threads per process) it is bitwise identical, e.g. after resuming a crashed run. (Model outputs computed
with another thread count differ by float32 summation order, then float16 rounding.)

``<store>.prepare.json`` beside the store records the settings, the models and every slide's counts or
error (see :func:`settings_path`). Modules: inputs in :mod:`.slides`, one slide in :mod:`.extract`,
in-process / worker execution in :mod:`.workers`, the layout and commit in :mod:`.store`, the settings
and reports in :mod:`.prepare_settings`, the store's identity check in :mod:`.store_identity`, the ranks
and the ordered commit in :mod:`.ranks`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ZoomLDMError
from ..models.encoders import SSLEncoder
from .extract import ExtractionSettings, SlideSource
from .prepare_settings import (
    _UNIT,
    DEFAULT_BASE_MPP,  # noqa: F401  (re-exported)
    DEFAULT_THRESHOLD,
    PrepareReport,
    PrepareSettings,
    SlideReport,
)
from .ranks import _Committer, _main_process_first, _notify, rank_and_world
from .slides import find_slides, slide_id
from .store import STORE_FORMAT, StoreWriter, normalize_url, part_status
from .store_identity import (
    _open_or_create,
    _store_attrs,
    setting_differences,  # noqa: F401  (re-exported: `zoomldm features` uses it)
    vae_fingerprint,
)
from .workers import ProgressBars, run_slides

__all__ = [
    "PrepareReport",
    "prepare",
    "PrepareSettings",
    "SlideReport",
    "SlideSource",
    "find_slides",
    "prepare_dataset",
    "rank_and_world",
    "settings_path",
    "slide_id",
    "vae_fingerprint",
]


# -- the whole command ---------------------------------------------------------------------------------
def prepare(
    slides: str | Path | Sequence[SlideSource],
    store: str | Path,
    *,
    domain: str = "pathology",
    levels: Sequence[str | int] | None = None,
    encoder: str | SSLEncoder | None = None,
    encoder_weights: str | Path | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    checkpoint: str | Path | Any | None = None,
    config: str | Path | None = None,
    slides_csv: str | Path | None = None,
    mpp: float | None = None,
    base_mpp: float | None = None,
    tissue_threshold: float | Sequence[float] | None = None,
    resampling: str = "lanczos",
    save_jpeg: bool = False,
    jpeg_quality: int = 90,
    workers: int = 1,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PrepareReport:
    """``zoomldm prepare`` as one call: load the models, then :func:`prepare_dataset` (create or resume
    the multi-scale store of ``slides``).

    Args:
        slides: a folder of slides (searched recursively), or a list of :class:`SlideSource`.
        store: output zarr store: a path or an fsspec URL.
        domain: ``pathology`` (8 levels, 20x = 0.5 µm/px) or ``satellite`` (4 levels).
        levels: the magnifications to make (names or indices; default: all of the domain).
        encoder: an :class:`~.encoders.SSLEncoder`, a name (``uni``, ``dinov2_vitl14_reg``,
            ``timm:<name>``) or None: the domain's encoder, or with random model weights a random encoder
            of the model's SSL width (see :mod:`.loading`).
        encoder_weights: a local weights file for ``encoder``, or ``"random"``.
        encoder_options: timm keyword arguments of ``encoder`` (e.g. ``{"embed_dim": 64}``).
        checkpoint: the VQ source: a loaded model (:class:`~zoomldm.models.bundle.ZoomLDMModel`), a diffusers ``VQModel``,
            our model dir, an official ``.ckpt`` or a hub id; None: the published brca / naip weights, or
            with ``config`` random weights of that architecture (tests and demos).
        config: preset or yaml: the architecture of an official checkpoint, or of random weights.
        slides_csv: a CSV with columns ``path[, id][, mpp]`` instead of a folder scan of ``slides``.
        mpp: level-0 resolution (µm/px; satellite m/px) for files without it.
        base_mpp: base resolution (default 0.5 µm/px; satellite: native).
        tissue_threshold: minimum tissue / valid-data fraction of a region: one value or one per level.
        resampling: the antialiased filter (``lanczos``, ``box``, ``bicubic``, …).
        save_jpeg, jpeg_quality: also store each 256² sample as JPEG.
        workers: slides processed in parallel by worker processes.
        batch_size: tiles per encoder / VQ batch.
        device: ``auto``, ``cpu``, ``cuda`` (each rank uses ``cuda:LOCAL_RANK``).
        dtype: autocast dtype of both encoders: ``float32``, ``bfloat16``, ``float16``.
        seed: seed of random weights.
        progress: show progress bars.
        log: receives notes and one line per finished slide.

    Returns:
        The :class:`PrepareReport`. Slides that fail are listed in it (with a human reason) and in
        ``<store>.prepare.json``; they do not raise, and a rerun retries only them.

    Raises:
        ZoomLDMError: bad options, no slides, unloadable models, a store made with other settings.
    """
    from .loading import (
        DEFAULT_CHECKPOINT,
        autocast_dtype,
        encoder_for_model,
        is_random,
        load_encoder,
        load_pipeline,
        resolve_device,
    )

    if domain not in DEFAULT_THRESHOLD:
        raise ZoomLDMError(f"--domain: unknown domain {domain!r}; expected pathology or satellite")
    autocast = autocast_dtype(dtype)
    settings = PrepareSettings(
        domain=domain,
        levels=(levels,) if isinstance(levels, (str, int)) else tuple(levels) if levels is not None else None,
        base_mpp=base_mpp,
        tissue_threshold=tuple(tissue_threshold)
        if isinstance(tissue_threshold, Sequence) and not isinstance(tissue_threshold, str)
        else tissue_threshold,
        resampling=resampling,
        save_jpeg=save_jpeg,
        jpeg_quality=jpeg_quality,
        batch_size=batch_size,
        workers=workers,
        mpp=mpp,
        vae_dtype=dtype if autocast is not None else None,
    )
    settings.validate()
    if isinstance(slides, (str, Path)):
        sources = find_slides(slides, slides_csv, mpp)
    else:
        sources = list(slides)
    device = resolve_device(device)

    random_model = is_random(checkpoint, config)
    if isinstance(checkpoint, torch.nn.Module):  # a VQ autoencoder given directly
        vae, model_info, ssl_channels, pipe = checkpoint, {"source": type(checkpoint).__name__}, None, None
    else:
        pipe = load_pipeline(checkpoint, config, domain=domain, seed=seed, device="cpu", log=log)
        vae, ssl_channels = pipe.vae, pipe.config.ssl_channels
        if random_model:
            source = f"random ({config}, seed {seed})"
        else:
            source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else None
            source = source or str(pipe.provenance.get("checkpoint", DEFAULT_CHECKPOINT[domain]))
        model_info = {"source": source, **pipe.provenance}
        if pipe.config.domain != domain:
            raise ZoomLDMError(
                f"--domain {domain}: the model is a {pipe.config.domain} model; use --domain "
                f"{pipe.config.domain} or a {domain} checkpoint / config"
            )
    enc = load_encoder(
        encoder_for_model(encoder, pipe),
        domain=domain,
        ssl_channels=ssl_channels,
        random_model=random_model,
        weights=encoder_weights,
        options=encoder_options,
        device=device,
        dtype=autocast,
        seed=seed,
        log=log,
    )
    if ssl_channels is not None and enc.dim != ssl_channels and log is not None:
        name = str(config or checkpoint or DEFAULT_CHECKPOINT[domain])
        log(
            f"note: the encoder gives {enc.dim}-d embeddings but the Summarizer of {name} takes "
            f"{ssl_channels}: this store cannot train or fine-tune that model, only a model whose config "
            f"has Summarizer input_channels {enc.dim}"
        )
    return prepare_dataset(
        sources,
        store,
        enc,
        vae.to(device).eval(),
        settings,
        vae_info=model_info,
        progress=progress,
        log=log,
    )


# -- the run ------------------------------------------------------------------------------------------
def prepare_dataset(
    slides: Sequence[SlideSource] | str | Path,
    store: str | Path,
    encoder: SSLEncoder,
    vae: torch.nn.Module,
    settings: PrepareSettings | None = None,
    *,
    vae_info: dict[str, Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_slide_done: Callable[[SlideReport], None] | None = None,
    poll_seconds: float = 5.0,
) -> PrepareReport:
    """Prepare (or resume) a multi-scale store from slides with the given encoder and VQ autoencoder.

    Args:
        slides: :class:`SlideSource` list, or a folder (see :func:`find_slides`).
        store: local path or fsspec URL of the zarr store (created when missing).
        encoder: the SSL tile encoder (:func:`~.encoders.build_encoder`).
        vae: the VQ-f4 autoencoder (a diffusers ``VQModel``; ``pipeline.vae``), on its device.
        vae_info: provenance of the autoencoder (e.g. the checkpoint), written into the store.
        rank, world_size: this process's shard (default: ``RANK`` / ``WORLD_SIZE``, else 0 / 1).
        sync: context manager factory run around the setup, rank 0 first (default: accelerate's
            ``main_process_first`` when ``world_size > 1``).
        progress: show rich progress bars (see :mod:`zoomldm.progress`).
        log: receives one line per finished slide (counts or error).
        on_slide_done: called with each slide's report as soon as the slide is resolved (committed or
            failed) on rank 0, or processed on other ranks.
        poll_seconds: how often rank 0 looks for other ranks' finished parts.

    Returns:
        A :class:`PrepareReport`; failed slides are listed in it, they do not raise.
    """
    start_time = time.time()
    settings = settings or PrepareSettings()
    settings.validate()
    sources = find_slides(slides, mpp=settings.mpp) if isinstance(slides, (str, Path)) else list(slides)
    if settings.mpp is not None:
        sources = [s if s.mpp is not None else SlideSource(s.id, s.path, settings.mpp) for s in sources]
    rank, world = rank_and_world(rank, world_size)
    levels = settings.resolved_levels()
    url = normalize_url(store)
    attrs = _store_attrs(settings, encoder, vae, vae_info)

    with (sync or (lambda: _main_process_first(world)))():
        root = _open_or_create(url, attrs, levels, encoder.dim, settings.save_jpeg, is_main=rank == 0)
    writer = StoreWriter(root, levels)
    run = int(root.attrs["run"])
    extraction = ExtractionSettings(
        levels=levels,
        unit=_UNIT[settings.domain],
        base_mpp=settings.resolved_base_mpp(),
        threshold=settings.resolved_threshold(),
        resampling=settings.resampling,
        batch_size=settings.batch_size,
        save_jpeg=settings.save_jpeg,
        jpeg_quality=settings.jpeg_quality,
        vae_dtype=getattr(torch, settings.vae_dtype) if settings.vae_dtype else None,
    )
    reports = {s.id: SlideReport(s.id, s.path, "pending") for s in sources}
    mine = [s for i, s in enumerate(sources) if i % world == rank]
    todo = [s for s in mine if not writer.is_committed(s.id) and part_status(root, s.id)[0] != "complete"]
    for slide, counts in writer.committed_counts().items():
        if slide in reports:
            reports[slide].status, reports[slide].counts = "done", counts
    committer = _Committer(root, writer, sources, reports, run, rank == 0, log, on_slide_done)

    with ProgressBars(progress, len(mine), len(mine) - len(todo)) as bars:
        committer.bars = bars
        committer.advance()
        for source, outcome in run_slides(
            todo, root, url, extraction, encoder, vae, settings.workers, bars, run
        ):
            bars.slide_finished(source.id)
            if not committer.is_main:  # rank 0 reports slides when it commits them
                report = reports[source.id]
                report.status, report.error = (
                    ("failed", outcome) if outcome is not None else ("processed", "")
                )
                if outcome is None:
                    report.counts = dict(part_status(root, source.id)[1].get("counts", {}))
                _notify(report, log, on_slide_done, bars)
            committer.advance()
        while committer.is_main and not committer.finished:
            time.sleep(poll_seconds)  # other ranks' slides
            committer.advance()

    totals = dict(root.attrs["committed"]["samples"])
    report = PrepareReport(url, rank, world, list(reports.values()), totals, time.time() - start_time)
    if rank == 0:
        _write_json(settings_path(url), {"format": STORE_FORMAT, **attrs, "report": report.to_dict()})
    return report


def settings_path(store: str | Path) -> str:
    """``<store>.prepare.json``: the settings, models and per-slide report of the last run, beside the store
    (not inside it, so that zarr sees only its own files)."""
    return normalize_url(store).rstrip("/") + ".prepare.json"


def _write_json(url: str, payload: dict) -> None:
    """Write a JSON file (atomically on local disk; object stores write whole objects anyway)."""
    import fsspec

    text = json.dumps(payload, indent=2, default=str)
    if "://" not in url:
        target = Path(url)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    else:
        with fsspec.open(url, "w") as f:
            f.write(text)
