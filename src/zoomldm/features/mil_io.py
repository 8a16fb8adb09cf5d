"""The files and progress of a MIL run: labels read, prediction and summary CSVs written and read back,
attention heatmaps drawn, the version stamp and the progress bar (see :mod:`.mil` for the folder layout)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from .bags import LabelTable, SlideBag, read_labels
from .heatmap import attention_heatmap, find_thumbnail, save_heatmap

# ----------------------------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """Predictions for a set of slides: ``probs[i]`` of ``slide_ids[i]`` with true class ``targets[i]``."""

    slide_ids: list[str]
    targets: np.ndarray
    probs: np.ndarray
    splits: list[str]

    def select(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [i for i, s in enumerate(self.splits) if s == split]
        return self.targets[rows], self.probs[rows]


def _write_predictions(path: Path, preds: Predictions, classes: Sequence[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "split", "label", "prediction", *(f"p_{c}" for c in classes)])
        for slide, split, t, p in zip(preds.slide_ids, preds.splits, preds.targets, preds.probs, strict=True):
            writer.writerow([slide, split, classes[t], classes[int(p.argmax())], *(f"{v:.6g}" for v in p)])
    tmp.replace(path)


def _read_predictions(path: Path, classes: Sequence[str]) -> Predictions:
    index = {c: i for i, c in enumerate(classes)}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return Predictions(
        [r["slide_id"] for r in rows],
        np.array([index[r["label"]] for r in rows], dtype=np.int64),
        np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64).reshape(
            len(rows), -1
        ),
        [r["split"] for r in rows],
    )


def _write_table(path: Path, columns: Sequence[str], rows: list[list[Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    tmp.replace(path)


def _heatmap(
    bag: SlideBag, attention: np.ndarray, path: Path, thumbnails: Path | None, info: dict[str, str]
) -> None:
    patch = bag.patch_size_level0 or _guess_patch_size(bag.coords)
    size = (bag.attrs.get("level0_width"), bag.attrs.get("level0_height"))
    extent = (int(size[0]), int(size[1])) if all(isinstance(v, (int, float)) for v in size) else None
    thumbnail = find_thumbnail(thumbnails, bag.slide_id)
    image = attention_heatmap(bag.coords, attention, patch, thumbnail=thumbnail, extent=extent)
    save_heatmap(image, path, {"slide_id": bag.slide_id, **info})


def _guess_patch_size(coords: np.ndarray) -> int:
    """Smallest positive coordinate step (files without a ``patch_size_level0`` attribute)."""
    steps = np.diff(np.unique(coords), axis=0)
    steps = steps[steps > 0]
    return int(steps.min()) if steps.size else 256


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zoomldm")
    except PackageNotFoundError:
        return "unknown"


def _progress_bar(enabled: bool) -> Progress:
    from ..progress import make_progress, progress_enabled

    return make_progress() if progress_enabled(enabled) else Progress(disable=True)


def _load_labels(labels: str | Path | LabelTable, min_classes: int = 2) -> LabelTable:
    return labels if isinstance(labels, LabelTable) else read_labels(labels, min_classes=min_classes)
