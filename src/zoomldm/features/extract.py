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
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError, ZoomLDMError
from ..scales import PATHOLOGY_BASE_MPP, Magnification
from .bags import BAG_SUFFIX, write_bag

FUSIONS = ("concat", "mean")
#: default minimum tissue (pathology) / valid-data (satellite) fraction of a tile, as ``prepare``
DEFAULT_THRESHOLD = {"pathology": 0.5, "satellite": 0.95}
DEFAULT_BASE_MPP = {"pathology": PATHOLOGY_BASE_MPP, "satellite": None}
_UNIT = {"pathology": "um", "satellite": "m"}
SETTINGS_FILE = "features.json"

#: ``progress(slide_id, done, total)`` after each batch of one slide
ProgressFn = Callable[[str, int, int], None]


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


def containing_block(rows_cols: np.ndarray, span: int) -> np.ndarray:
    """Top-left base tile ``(row, col)`` of the aligned ``span × span`` block containing each tile."""
    return (np.asarray(rows_cols, dtype=np.int64) // span) * span


@dataclass
class SlideFeatures:
    """The fused features of one slide with their level-0 coordinates and attributes."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]
    #: ``(row, col)`` base tile of each feature row (for tests and debugging; not written)
    tiles: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2), np.int64))


def extract_slide(
    path: str | Path,
    slide_id: str,
    pipe: Any,
    encoder: Any,
    settings: FeatureSettings,
    mpp: float | None = None,
    progress: ProgressFn | None = None,
) -> SlideFeatures:
    """Features of every tissue tile of one slide (see the module docstring for the steps)."""
    from ..data.extract import prefetch
    from ..data.extract import read_tile as read_checked  # shared with prepare: overlapped reads, read errors
    from ..data.readers import level0_resolution, open_image
    from ..data.tiling import TILE, base_grid, plan_slide
    from .unet_features import UNetFeatureExtractor

    check_settings(settings, pipe, encoder)
    domain = pipe.config.domain
    mags = resolve_magnifications(pipe.scales, settings.magnifications)
    extractor = UNetFeatureExtractor(pipe, settings.blocks, settings.timestep, settings.seed)
    finest = mags[0]

    with open_image(path, mpp=mpp) as reader:
        # 1. tiles: the finest magnification's tissue regions, as prepare tiles them
        mpp0 = level0_resolution(reader, _UNIT[domain])
        grid = base_grid(reader, mpp0, settings.base(domain))
        plan = plan_slide(reader, grid, [finest], settings.threshold(domain))
        tiles = plan.regions[finest.index]
        if len(tiles) == 0:
            raise ZoomLDMError(
                f"{Path(path).name}: no tile reaches the tissue threshold {settings.threshold(domain)}"
            )
        # 2. the region of each magnification containing each tile, and the base tiles they cover
        blocks = {m.index: np.unique(containing_block(tiles, m.grid_size), axis=0) for m in mags}
        needed = _covered_tiles(blocks, {m.index: m.grid_size for m in mags})
        base_tiles = [tuple(rc) for rc in np.argwhere(needed)]
        total = len(base_tiles) + sum(len(b) for b in blocks.values())
        done = 0

        def report(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(slide_id, done, total)

        # 3. SSL embeddings of every base tile the regions cover (white outside the slide)
        w0, h0 = reader.dimensions
        side0 = TILE * grid.scale
        # float16, as prepare stores them (the grids the model was trained on)
        embeddings = np.zeros((*needed.shape, encoder.dim), dtype=np.float16)
        white = np.full((1, TILE, TILE, 3), 255, dtype=np.uint8)

        def read_tile(rc: tuple[int, int]) -> np.ndarray:
            r, c = rc
            if c * side0 >= w0 or r * side0 >= h0:
                return white[0]
            return read_checked(reader, grid, r, c, 1, TILE, settings.resampling)

        def read_block(rc: tuple[int, int], span: int) -> np.ndarray:
            if span == 1:
                return read_tile(rc)
            # the top-left tile is inside the slide (the region contains a tile); the reader pads the rest white
            return read_checked(reader, grid, *rc, span, TILE, settings.resampling)

        def batches(items: list, read: Callable) -> Iterator[tuple[list, np.ndarray]]:
            for start in range(0, len(items), settings.batch_size):
                chunk = items[start : start + settings.batch_size]
                yield chunk, np.stack([read(item) for item in chunk])

        for chunk, images in prefetch(batches(base_tiles, read_tile)):
            feats = encoder.embed(images, batch_size=len(images)).numpy().astype(np.float16)
            for (r, c), f in zip(chunk, feats, strict=True):
                embeddings[r, c] = f
            report(len(chunk))

        # 4. UNet features of every region, conditioned on its own SSL grid
        per_mag: dict[int, np.ndarray] = {}
        for m in mags:
            span = m.grid_size
            regions = [tuple(rc) for rc in blocks[m.index]]
            out = []
            for chunk, images in prefetch(batches(regions, lambda rc, s=span: read_block(rc, s))):
                grids = [_grid(embeddings, r, c, span) for r, c in chunk]
                out.append(extractor(images, grids, m))
                report(len(chunk))
            per_mag[m.index] = np.concatenate(out)

    # 5. fuse each tile with the regions containing it
    fused = fuse_features(tiles, per_mag, blocks, {m.index: m.grid_size for m in mags}, settings.fusion)
    coords = np.round(tiles[:, ::-1] * side0).astype(np.int64)  # (row, col) → level-0 (x, y)
    attrs = _attributes(
        slide_id, path, reader, grid, mpp0, domain, mags, fused.shape[1], settings, extractor, encoder, pipe
    )
    return SlideFeatures(fused.astype(np.float32), coords, attrs, tiles)


def _covered_tiles(blocks: dict[int, np.ndarray], spans: dict[int, int]) -> np.ndarray:
    """``[rows, cols]`` bool: the base tiles covered by any region (may reach past the slide's edge)."""
    rows = max(int(b[:, 0].max()) + spans[i] for i, b in blocks.items())
    cols = max(int(b[:, 1].max()) + spans[i] for i, b in blocks.items())
    needed = np.zeros((rows, cols), dtype=bool)
    for index, regions in blocks.items():
        for r, c in regions:
            needed[r : r + spans[index], c : c + spans[index]] = True
    return needed


def fuse_features(
    tiles: np.ndarray,
    per_mag: dict[int, np.ndarray],
    blocks: dict[int, np.ndarray],
    spans: dict[int, int],
    fusion: str = "concat",
) -> np.ndarray:
    """Each tile's features at every magnification, fused: ``[N, sum of dims]`` (concat) or ``[N, dim]`` (mean).

    Args:
        tiles: ``[N, 2]`` (row, col) base tile of each instance.
        per_mag: per magnification index, ``[M, d]`` features of its regions ``blocks[index]`` (``[M, 2]``).
        spans: per magnification index, the region side in base tiles (its region containing tile (r, c)
            starts at ``(r // span·span, c // span·span)``).
    """
    parts = []
    for index, features in per_mag.items():
        row_of = {tuple(rc): i for i, rc in enumerate(blocks[index].tolist())}
        parts.append(features[[row_of[tuple(rc)] for rc in containing_block(tiles, spans[index]).tolist()]])
    if fusion == "concat":
        return np.concatenate(parts, axis=1)
    if fusion == "mean":
        if len({p.shape[1] for p in parts}) != 1:
            raise ZoomLDMError("mean fusion needs the same feature size at every magnification")
        return np.mean(parts, axis=0)
    raise ZoomLDMError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")


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


def _grid(embeddings: np.ndarray, row: int, col: int, span: int) -> Any:
    import torch

    block = embeddings[row : row + span, col : col + span]  # [span, span, C] row-major
    return torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1))).float()


def _attributes(
    slide_id, path, reader, grid, mpp0, domain, mags, dim, settings, extractor, encoder, pipe
) -> dict:
    finest = mags[0]
    w0, h0 = reader.dimensions
    attrs: dict[str, Any] = {
        # TRIDENT / CLAM names (CONVENTIONS.md)
        "name": slide_id,
        "patch_size": 256,
        "patch_size_level0": int(round(256 * finest.grid_size * grid.scale)),
        "overlap": 0,
        "level0_width": int(w0),
        "level0_height": int(h0),
        "encoder": "zoomldm",
        "mpp": float(mpp0),
        # ours
        "slide_path": str(path),
        "domain": domain,
        "base_mpp": float(grid.base_mpp),
        "magnifications": ",".join(m.name for m in mags),
        "fusion": settings.fusion,
        "feature_dim": int(dim),
        "tissue_threshold": settings.threshold(domain),
        "resampling": settings.resampling,
        "ssl_encoder": json.dumps(encoder.describe()),
        "model": json.dumps(pipe.provenance, default=str),
        "zoomldm_version": _version(),
        **extractor.describe(),
    }
    if domain == "pathology":  # 20x ≙ 0.5 µm/px
        attrs["target_magnification"] = 20.0 * PATHOLOGY_BASE_MPP / (grid.base_mpp * finest.downsample)
        attrs["level0_magnification"] = 20.0 * PATHOLOGY_BASE_MPP / mpp0
    else:
        attrs["target_magnification"] = finest.name
    return attrs


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zoomldm")
    except PackageNotFoundError:
        return "unknown"


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
        pipe: a :class:`~zoomldm.pipeline.ZoomLDMPipeline`, a checkpoint (our model dir, an official
            ``.ckpt``, a hub id, ``brca`` / ``naip``), or None: with ``config`` random weights of that
            architecture (tests and demos, seeded by ``settings.seed``; as ``zoomldm prepare``), else ``brca``.
        encoder: an :class:`~zoomldm.data.encoders.SSLEncoder`, a name, or None: the domain's encoder (with
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
    from ..pipeline import ZoomLDMPipeline

    if isinstance(slides, (str, Path)):  # before loading any model: a wrong folder fails fast
        slides = find_sources(slides, slides_csv, mpp)
    if not isinstance(pipe, ZoomLDMPipeline) or not _is_encoder(encoder):
        from ..data.loading import resolve_device

        device = resolve_device(device)
        random_model = is_random(pipe, config)
        if not isinstance(pipe, ZoomLDMPipeline):
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
    from ..data.encoders import SSLEncoder

    return isinstance(encoder, SSLEncoder)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def _extract_one(
    source: Any, out: Path, pipe: Any, encoder: Any, settings: FeatureSettings, progress
) -> tuple[int, str]:
    """Extract and write one slide: ``(tiles, "")`` or ``(0, error message)``."""
    try:
        result = extract_slide(
            source.path, source.id, pipe, encoder, settings, mpp=source.mpp, progress=progress
        )
        write_bag(out / f"{source.id}{BAG_SUFFIX}", result.features, result.coords, result.attrs)
        return len(result.features), ""
    except Exception as err:  # any slide-level failure is reported by name; the run goes on
        from ..data.extract import describe_failure

        return 0, describe_failure(err)


def _run(todo, out, pipe, encoder, settings, tick) -> Iterator[tuple[Any, tuple[int, str]]]:
    """In-process, or spread over ``settings.workers`` spawned processes (as ``prepare`` does)."""
    if settings.workers <= 1 or len(todo) <= 1:
        for source in todo:
            yield source, _extract_one(source, out, pipe, encoder, settings, tick)
        return
    import torch.multiprocessing as mp

    device = str(pipe.device)
    threads = max(1, (os.cpu_count() or 1) // settings.workers)
    pipe.to("cpu")
    encoder.to("cpu")
    init = (out, pipe, encoder, settings, device, threads)
    try:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            settings.workers, mp_context=ctx, initializer=_init_worker, initargs=init
        ) as pool:
            futures: dict[Future, Any] = {pool.submit(_work, s): s for s in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield futures[future], future.result()
    finally:
        pipe.to(device)
        encoder.to(device)


_WORKER: dict[str, Any] = {}


def _init_worker(out, pipe, encoder, settings, device, threads) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(out=out, pipe=pipe.to(device), encoder=encoder.to(device), settings=settings)


def _work(source: Any) -> tuple[int, str]:
    w = _WORKER
    return _extract_one(source, w["out"], w["pipe"], w["encoder"], w["settings"], None)
