"""Slide-level k-fold splits for MIL, grouped by patient, with a validation split inside each training fold.

Test folds come from scikit-learn's ``StratifiedGroupKFold`` (when the labels have a patient column: the
slides of one patient never straddle train and test, MIL_BASELINE#46) or ``StratifiedKFold``. Inside each
training fold the same splitter with ``round(1 / val_fraction)`` folds carves out the validation slides
used for early stopping, again grouped by patient.

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
    inner_folds = max(2, round(1.0 / val_fraction))
    ids = np.array(labels.slide_ids)
    splits = []
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than inner folds; the split is still valid
        warnings.simplefilter("ignore", UserWarning)
        outer = _splitter(folds, grouped, seed).split(ids, y, groups)
        for k, (train_idx, test_idx) in enumerate(outer):
            inner = _splitter(inner_folds, grouped, seed + 1 + k)
            try:
                fit_rows, val_rows = next(inner.split(train_idx, y[train_idx], groups[train_idx]))
            except ValueError as err:
                raise ZoomLDMError(f"fold {k}: too few slides for a validation split ({err})") from None
            splits.append(
                Split(
                    tuple(ids[train_idx[fit_rows]].tolist()),
                    tuple(ids[train_idx[val_rows]].tolist()),
                    tuple(ids[test_idx].tolist()),
                )
            )
    return splits


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
