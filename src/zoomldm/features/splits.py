"""Slide-level k-fold splits for MIL, grouped by patient, with a validation split inside each training fold.

Test folds come from scikit-learn's ``StratifiedGroupKFold`` (when the labels have a patient column: the
slides of one patient never straddle train and test, MIL_BASELINE#46) or ``StratifiedKFold``. Inside each
training fold the same splitter with ``round(1 / val_fraction)`` folds carves out the validation slides
used for early stopping, again grouped by patient; in small cohorts it uses fewer inner folds (at most
the rarest class's count in that training fold), so that validation keeps at least one slide per class.

Each split is written as ``splits_{k}.csv`` with the columns ``train,val,test`` (CLAM's layout), one slide
id per cell, shorter columns padded with empty cells.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ZoomLDMError
from .bags import LabelTable

SPLIT_COLUMNS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """The slide ids of one fold."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _splitter(n_splits: int, grouped: bool, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if grouped:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def make_splits(labels: LabelTable, folds: int = 5, val_fraction: float = 0.2, seed: int = 0) -> list[Split]:
    """Stratified (and patient-grouped when ``labels.patients`` is set) k-fold splits with inner validation.

    Every slide is in exactly one test fold. Deterministic for a given table, ``folds`` and ``seed``.
    """
    if folds < 2:
        raise ZoomLDMError(f"--folds must be at least 2, got {folds}")
    if not 0.0 < val_fraction < 0.5:
        raise ZoomLDMError(f"the validation fraction must be in (0, 0.5), got {val_fraction}")
    grouped = labels.patients is not None
    y, groups = labels.targets, labels.groups
    units = Counter(dict(zip(groups, y, strict=True)).values()) if grouped else Counter(y.tolist())
    rare = {labels.classes[c]: n for c, n in units.items() if n < folds}
    if rare:
        what = "patients" if grouped else "slides"
        raise ZoomLDMError(f"classes {rare} have fewer {what} than --folds {folds}; use fewer folds")
    wanted_inner = max(2, round(1.0 / val_fraction))
    ids = np.array(labels.slide_ids)
    splits = []
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than inner folds; the split is still valid
        warnings.simplefilter("ignore", UserWarning)
        outer = _splitter(folds, grouped, seed).split(ids, y, groups)
        for k, (train_idx, test_idx) in enumerate(outer):
            # Small cohorts: the inner split needs every class in both its training and validation part,
            # so it uses at most as many folds as the rarest class has slides (patients) in this training
            # fold (a larger validation fraction: 5 training slides per class give 1/5, 3 give 1/3).
            per_class = _units_per_class(y[train_idx], groups[train_idx] if grouped else None)
            fewest = min(per_class.values())
            if fewest < 2:
                what = "patients" if grouped else "slides"
                rare = [labels.classes[c] for c, n in per_class.items() if n < 2]
                raise ZoomLDMError(
                    f"fold {k}: class {rare[0]!r} has {fewest} training {what}; early stopping needs at "
                    f"least 2 per class in each training fold (one for validation), i.e. at least "
                    f"{_minimum_per_class(folds)} {what} per class with --folds {folds}; use fewer --folds "
                    f"or label more {what}"
                )
            inner = _splitter(min(wanted_inner, fewest), grouped, seed + 1 + k)
            fit_rows, val_rows = next(inner.split(train_idx, y[train_idx], groups[train_idx]))
            splits.append(
                Split(
                    tuple(ids[train_idx[fit_rows]].tolist()),
                    tuple(ids[train_idx[val_rows]].tolist()),
                    tuple(ids[test_idx].tolist()),
                )
            )
    return splits


def _units_per_class(y: np.ndarray, groups: np.ndarray | None) -> dict[int, int]:
    """Slides (or, grouped, distinct patients) per class."""
    if groups is None:
        return dict(Counter(y.tolist()))
    return dict(Counter(dict(zip(groups.tolist(), y.tolist(), strict=True)).values()))


def _minimum_per_class(folds: int) -> int:
    """Slides per class so that each training fold keeps at least 2 of every class: ``n - ceil(n / folds)
    >= 2``."""
    n = 2
    while n - -(-n // folds) < 2:
        n += 1
    return n


def write_split(split: Split, path: str | Path) -> Path:
    """Write one split as CSV columns ``train,val,test`` (atomically)."""
    path = Path(path)
    columns = split.as_dict()
    rows = max(len(v) for v in columns.values())
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SPLIT_COLUMNS)
        for i in range(rows):
            writer.writerow([columns[c][i] if i < len(columns[c]) else "" for c in SPLIT_COLUMNS])
    tmp.replace(path)
    return path


def read_split(path: str | Path) -> Split:
    """Read a ``splits_{k}.csv`` (ours or CLAM's, whose first column is an unnamed row index)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not set(SPLIT_COLUMNS) <= set(fields):
            raise ZoomLDMError(f"{path}: expected columns train,val,test, found {fields}")
        columns: dict[str, list[str]] = {c: [] for c in SPLIT_COLUMNS}
        for row in reader:
            for c in SPLIT_COLUMNS:
                if (row.get(c) or "").strip():
                    columns[c].append(row[c].strip())
    split = Split(*(tuple(columns[c]) for c in SPLIT_COLUMNS))
    overlap = (set(split.train) | set(split.val)) & set(split.test)
    if overlap or set(split.train) & set(split.val):
        raise ZoomLDMError(f"{path}: a slide appears in more than one of train/val/test")
    return split


def read_splits(folder: str | Path) -> list[Split]:
    """All ``splits_{k}.csv`` of a folder, in fold order (to reuse one run's splits for another encoder)."""
    folder = Path(folder)
    paths = sorted(folder.glob("splits_*.csv"), key=lambda p: int(p.stem.split("_")[-1]))
    if not paths:
        raise ZoomLDMError(f"no splits_{{k}}.csv in {folder}")
    return [read_split(p) for p in paths]
