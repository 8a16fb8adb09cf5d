"""FID per magnification: real vs generated patches, streamed, with cached reference statistics.

What a result says (CONVENTIONS "Evaluation", PathLDM#17): beside every FID a JSON records the library
and mode, the feature extractor, the resize mode, the number of real and generated images, the split
the real images come from, and the files' provenance. Numbers from different extractors, resize modes
or sample counts are not comparable.

The authors' CDM evaluation (SPEC §6) generates 9,984 patches per magnification, saves them as JPEG
(quality 75) and compares them with pytorch-fid's Inception against precomputed real statistics. Here
generated patches are saved **losslessly** (PNG, with provenance), features are streamed batch by
batch (:class:`~zoomldm.evaluation.frechet.RunningStatistics`: only ``D×D`` float64 sums stay in
memory), and the real statistics are cached as ``.npz`` keyed by a hash of the file list (names and
sizes), the extractor and its resize mode, so they are computed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ZoomLDMError
from ..fsutil import atomic_path
from .extractors import FeatureExtractor, describe
from .frechet import FeatureStatistics, RunningStatistics, embedding_frechet_distance, frechet_distance

__all__ = [
    "FIDResult",
    "FeatureStatistics",
    "RunningStatistics",
    "compute_statistics",
    "embedding_frechet_distance",
    "fid_for_magnification",
    "fid_per_magnification",
    "frechet_distance",
    "iter_image_batches",
    "list_images",
    "reference_statistics",
    "write_generated_samples",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
#: ``generator(start, count)`` → uint8 images ``[count, H, W, 3]`` for sample indices ``start … start+count−1``
SampleGenerator = Callable[[int, int], Any]
ImageSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


# ------------------------------------------------------------------------------------------------
# images in, features out
# ------------------------------------------------------------------------------------------------
def list_images(source: ImageSource) -> list[Path]:
    """Image files of a directory (recursive, sorted) or an explicit list of files."""
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if not root.is_dir():
            raise ZoomLDMError(f"image directory not found: {root}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ZoomLDMError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}")
        return files
    files = [Path(p) for p in source]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise ZoomLDMError(f"image not found: {missing[0]}")
    if not files:
        raise ZoomLDMError("the list of images is empty")
    return files


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def iter_image_batches(files: Sequence[Path], batch_size: int = 50) -> Iterator[np.ndarray]:
    """uint8 ``[N, H, W, 3]`` batches of the files, in order; a size change starts a new batch."""
    batch: list[np.ndarray] = []
    for path in files:
        image = _read_rgb(path)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield np.stack(batch)


def compute_statistics(
    batches: Iterable[np.ndarray],
    extractor: FeatureExtractor,
    total: int | None = None,
    progress: bool = True,
    description: str = "features",
) -> FeatureStatistics:
    """Stream uint8 image batches through ``extractor`` into Gaussian statistics (float64)."""
    from ..progress import make_progress, progress_enabled

    stats = RunningStatistics()
    show = progress_enabled(progress)
    bar = make_progress() if show else None
    task = bar.add_task(description, total=total) if bar else None
    try:
        if bar:
            bar.start()
        for batch in batches:
            stats.update(extractor(batch))
            if bar:
                bar.advance(task, len(batch))
    finally:
        if bar:
            bar.stop()
    return stats.finalize(describe(extractor))


def _files_key(files: Sequence[Path], extractor: FeatureExtractor) -> str:
    """Cache key: the file list (names relative to their common folder, sizes), extractor and resize mode."""
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    listing = [[str(p.resolve().relative_to(root)), p.stat().st_size] for p in files]
    payload = json.dumps({"files": listing, **describe(extractor)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def reference_statistics(
    real: ImageSource | FeatureStatistics | str,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 50,
    progress: bool = True,
) -> FeatureStatistics:
    """Statistics of the real images, computed once and cached (``<cache_dir>/ref_<hash>.npz``).

    ``real`` may also be a statistics ``.npz`` (ours or pytorch-fid's ``--save-stats``), used as is.
    """
    if isinstance(real, FeatureStatistics):
        return real
    if isinstance(real, str | os.PathLike) and Path(real).suffix == ".npz":
        return FeatureStatistics.load(real)
    files = list_images(real)
    cache = Path(cache_dir) / f"ref_{_files_key(files, extractor)}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        return FeatureStatistics.load(cache)
    stats = compute_statistics(
        iter_image_batches(files, batch_size),
        extractor,
        total=len(files),
        progress=progress,
        description="real images",
    )
    stats.meta.update(
        {
            "num_images": len(files),
            "source": str(real) if isinstance(real, str | os.PathLike) else "file list",
        }
    )
    if cache is not None:
        stats.save(cache)
    return stats


# ------------------------------------------------------------------------------------------------
# generated images
# ------------------------------------------------------------------------------------------------
def _as_uint8_nhwc(images: Any, count: int) -> np.ndarray:
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or len(array) != count:
        raise ZoomLDMError(
            f"the sample generator must return {count} uint8 images [N, H, W, 3]; got {array.dtype} {list(array.shape)}"
        )
    return array


def write_generated_samples(
    generator: SampleGenerator,
    out_dir: str | os.PathLike[str],
    num_samples: int,
    batch_size: int = 16,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Call ``generator(start, count)`` and save every image as a lossless PNG ``{index:06d}.png``.

    Resumable: batches whose PNGs all exist are skipped (each PNG is written atomically), so rerunning
    after a crash only makes what is missing. The generator should seed itself from ``start`` so a
    resumed run gives the same images.
    """
    from ..io.images import save_png
    from ..progress import track

    if num_samples < 2:
        raise ZoomLDMError(f"FID needs at least 2 generated samples, got {num_samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:06d}.png" for i in range(num_samples)]
    starts = list(range(0, num_samples, batch_size))
    for start in track(starts, "generating", enabled=progress):
        count = min(batch_size, num_samples - start)
        if all(p.is_file() for p in paths[start : start + count]):
            continue
        images = _as_uint8_nhwc(generator(start, count), count)
        for offset, image in enumerate(images):
            save_png(paths[start + offset], image, {**(metadata or {}), "sample_index": start + offset})
    return paths


# ------------------------------------------------------------------------------------------------
# FID
# ------------------------------------------------------------------------------------------------
@dataclass
class FIDResult:
    """One Fréchet distance and everything needed to judge it."""

    magnification: str
    fid: float
    num_real: int
    num_generated: int
    feature_extractor: str
    library: str
    resize_mode: str
    split: str
    real_source: str
    generated_source: str
    zoomldm_version: str
    created: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))


def fid_for_magnification(
    magnification: str,
    real: ImageSource | FeatureStatistics,
    generated: ImageSource | SampleGenerator,
    extractor: FeatureExtractor,
    out_dir: str | os.PathLike[str],
    *,
    num_samples: int = 10_000,
    split: str = "unspecified",
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 50,
    sample_batch_size: int = 16,
    sample_metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> FIDResult:
    """FID of one magnification; writes ``<out_dir>/fid_<magnification>.json`` beside the samples.

    Args:
        real: a directory or list of real patches at this magnification, or precomputed statistics.
        generated: a directory/list of generated patches, or ``generator(start, count)`` whose images are
            first written as PNG to ``<out_dir>/<magnification>/`` (resumable).
        num_samples: how many images a generator makes (the authors: 10,000 requested).
        split: where the real images come from (e.g. ``"held-out slides"``); recorded, never guessed.
        cache_dir: where reference statistics are cached (default ``<out_dir>/cache``).
    """
    from ..io.images import package_version

    out = Path(out_dir)
    key = str(magnification).replace(".", "_")
    if callable(generated):
        files = write_generated_samples(
            generated,
            out / key,
            num_samples,
            sample_batch_size,
            {"magnification": str(magnification), **(sample_metadata or {})},
            progress,
        )
        generated_source = str(out / key)
    else:
        files = list_images(generated)
        generated_source = str(generated) if isinstance(generated, str | os.PathLike) else "file list"
    if len(files) < 2:
        raise ZoomLDMError(f"FID needs at least 2 generated images, got {len(files)}")
    ref = reference_statistics(
        real, extractor, cache_dir if cache_dir is not None else out / "cache", batch_size, progress
    )
    if ref.meta.get("feature_extractor") not in (None, extractor.name):
        raise ZoomLDMError(
            f"the reference statistics were made with {ref.meta['feature_extractor']!r}, not {extractor.name!r}"
        )
    gen = compute_statistics(
        iter_image_batches(files, batch_size),
        extractor,
        total=len(files),
        progress=progress,
        description="generated",
    )
    result = FIDResult(
        magnification=str(magnification),
        fid=gen.frechet_distance(ref),
        num_real=int(ref.count),
        num_generated=int(gen.count),
        split=split,
        real_source=str(real)
        if isinstance(real, str | os.PathLike)
        else ref.meta.get("source", "statistics"),
        generated_source=generated_source,
        zoomldm_version=package_version(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **describe(extractor),
    )
    _write_json(out / f"fid_{key}.json", result.to_dict())
    return result


def fid_per_magnification(
    real: Mapping[str, ImageSource | FeatureStatistics],
    generated: Mapping[str, ImageSource | SampleGenerator],
    extractor: FeatureExtractor,
    out_dir: str | os.PathLike[str],
    **kwargs: Any,
) -> dict[str, FIDResult]:
    """:func:`fid_for_magnification` for every magnification in ``generated`` (each needs a ``real``
    entry); also writes ``<out_dir>/fid_summary.json`` with all results."""
    missing = [m for m in generated if m not in real]
    if missing:
        raise ZoomLDMError(
            f"no real images given for magnification {missing[0]}; have {', '.join(real) or 'none'}"
        )
    results = {
        m: fid_for_magnification(m, real[m], generated[m], extractor, out_dir, **kwargs) for m in generated
    }
    _write_json(Path(out_dir) / "fid_summary.json", {m: r.to_dict() for m, r in results.items()})
    return results
