"""Slide-level MIL: train gated ABMIL with k-fold cross-validation and apply trained models to new slides.

Training follows the CLAM/TRIDENT setting (CONVENTIONS.md "MIL"): one bag per step, Adam (lr 1e-4,
weight decay 1e-5), cross-entropy (class-weighted by default), early stopping on the validation loss with
the best weights restored, optional subsampling of ``max_tiles`` tiles per bag while training (all tiles at
evaluation). Metrics: AUC (one-vs-rest macro over classes for more than two) and balanced accuracy.

Output folder of :func:`cross_validate`::

    config.json               settings, classes, slides, feature-file attributes, seed, version
    splits_{k}.csv            train,val,test slide ids of fold k
    fold_{k}.safetensors      weights of fold k (architecture and classes in the metadata)
    predictions_{k}.csv       val and test predictions of fold k (written last: a fold with it is done)
    summary.csv               fold,test_auc,val_auc,test_acc,val_acc, then mean and std rows
    heatmaps/<slide>.png      attention of the fold model that had the slide in its test set

A rerun with the same settings resumes: finished folds are read back, not retrained.

Modules: settings and one fold's training in :mod:`.mil_training`, metrics in :mod:`.mil_metrics`, the
run's files in :mod:`.mil_io`, trained models applied to new slides in :mod:`.mil_evaluation`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ZoomLDMError
from .abmil import save_abmil
from .bags import FeatureBags, LabelTable
from .mil_evaluation import EvalResult, evaluate_models, find_models
from .mil_io import (
    Predictions,
    _heatmap,
    _load_labels,
    _progress_bar,
    _read_predictions,
    _version,
    _write_predictions,
    _write_table,
)
from .mil_metrics import _mean_std, auc_score, balanced_accuracy
from .mil_training import FoldHistory, MILConfig, predict, train_fold
from .splits import make_splits, read_splits, write_split

__all__ = [
    "SUMMARY_COLUMNS",
    "CVResult",
    "EvalResult",
    "FoldHistory",
    "MILConfig",
    "Predictions",
    "auc_score",
    "balanced_accuracy",
    "cross_validate",
    "evaluate_models",
    "find_models",
    "predict",
    "train_fold",
    "train_mil",
]

SUMMARY_COLUMNS = ("fold", "test_auc", "val_auc", "test_acc", "val_acc")


# ------------------------------------------------------------------------------------ cross-validation


@dataclass
class CVResult:
    """Per-fold metrics (rows of ``summary.csv``) with their mean and standard deviation."""

    rows: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    classes: list[str]
    out_dir: Path
    missing: list[str] = field(default_factory=list)
    resumed_folds: list[int] = field(default_factory=list)


def cross_validate(
    features_dir: str | Path,
    labels: str | Path | LabelTable,
    out_dir: str | Path,
    config: MILConfig = MILConfig(),
    splits_from: str | Path | None = None,
    thumbnails: str | Path | None = None,
    heatmaps: bool = True,
    skip_missing: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> CVResult:
    """k-fold cross-validated ABMIL on the feature bags of ``features_dir`` (see the module docstring).

    Args:
        splits_from: a folder of ``splits_{k}.csv`` to reuse (e.g. another encoder's run) instead of new splits.
        thumbnails: folder of ``<slide_id>.png/.jpg`` slide thumbnails to draw heatmaps on.
        skip_missing: drop labelled slides without a feature file (listed in the result) instead of failing.
    """
    # 1. inputs: labels, bags (checked up front), settings
    config.validate()
    table = _load_labels(labels)
    bags = FeatureBags(features_dir, table.slide_ids, skip_missing=skip_missing)
    table = table.subset(list(bags))
    out = Path(out_dir)  # created only once the splits are known: a refused run leaves no empty folder
    thumbs = Path(thumbnails) if thumbnails is not None else None

    # 2. splits: reused, resumed or new
    if splits_from is not None:
        splits = read_splits(splits_from)
    elif list(out.glob("splits_*.csv")):  # resuming
        splits = read_splits(out)
        if len(splits) != config.folds:
            raise ZoomLDMError(
                f"{out} holds a run with {len(splits)} folds, not {config.folds}; choose another OUT"
            )
    else:
        splits = make_splits(table, config.folds, config.val_fraction, config.seed)
    known = set(table.slide_ids)
    for k, split in enumerate(splits):
        unknown = sorted((set(split.train) | set(split.val) | set(split.test)) - known)
        if unknown:
            raise ZoomLDMError(f"split {k} names slides without labels or features, e.g. {unknown[:3]}")

    # 3. provenance; a folder holding another run is refused rather than mixed
    settings = {
        "mil": asdict(config) | {"folds": len(splits)},
        "classes": list(table.classes),
        "slides": sorted(table.slide_ids),
        "splits": [split.as_dict() for split in splits],
    }
    config_path = out / "config.json"
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        if {k: previous.get(k) for k in settings} != json.loads(json.dumps(settings)):
            raise ZoomLDMError(
                f"{out} holds a MIL run with other settings, slides or splits; choose another OUT"
            )
    record = settings | {
        "features_dir": str(Path(features_dir).resolve()),
        "features": bags.attrs(),
        "feature_dim": bags.dim,
        "missing_slides": list(bags.missing),
        "version": _version(),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = config_path.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(config_path)
    for k, split in enumerate(splits):
        write_split(split, out / f"splits_{k}.csv")

    # 4. folds: train, save, predict val + test, heatmaps for the test slides
    classes, target = list(table.classes), dict(zip(table.slide_ids, table.targets.tolist(), strict=True))
    rows, resumed = [], []
    with _progress_bar(progress) as bar:
        folds_task = bar.add_task("folds", total=len(splits))
        for k, split in enumerate(splits):
            weights, pred_path = out / f"fold_{k}.safetensors", out / f"predictions_{k}.csv"
            if weights.exists() and pred_path.exists():
                preds = _read_predictions(pred_path, classes)
                resumed.append(k)
            else:
                model, history = train_fold(bags, table, split, config, fold=k, device=device, progress=bar)
                extra = {
                    "fold": k,
                    "best_epoch": history.best_epoch,
                    "mil": asdict(config),
                    "features": bags.attrs(),
                }
                save_abmil(model, weights, classes, extra)
                ids, probs, names = [], [], []
                for name in ("val", "test"):
                    for slide in getattr(split, name):
                        p, attention = predict(model, bags[slide], device)
                        ids.append(slide)
                        probs.append(p)
                        names.append(name)
                        if heatmaps and name == "test":
                            info = {"fold": str(k), "model": weights.name, "label": classes[target[slide]]}
                            _heatmap(bags[slide], attention, out / "heatmaps" / f"{slide}.png", thumbs, info)
                preds = Predictions(ids, np.array([target[s] for s in ids]), np.stack(probs), names)
                _write_predictions(pred_path, preds, classes)
            (yt, pt), (yv, pv) = preds.select("test"), preds.select("val")
            rows.append(
                {
                    "fold": k,
                    "test_auc": auc_score(yt, pt),
                    "val_auc": auc_score(yv, pv),
                    "test_acc": balanced_accuracy(yt, pt),
                    "val_acc": balanced_accuracy(yv, pv),
                }
            )
            bar.advance(folds_task)

    # 5. summary with mean and std over folds
    metrics = SUMMARY_COLUMNS[1:]
    mean_std = {m: _mean_std([r[m] for r in rows]) for m in metrics}
    mean, std = {m: v[0] for m, v in mean_std.items()}, {m: v[1] for m, v in mean_std.items()}
    table_rows = [[r[c] for c in SUMMARY_COLUMNS] for r in rows]
    table_rows += [["mean", *(mean[m] for m in metrics)], ["std", *(std[m] for m in metrics)]]
    _write_table(out / "summary.csv", SUMMARY_COLUMNS, table_rows)
    return CVResult(rows, mean, std, classes, out, list(bags.missing), resumed)


def train_mil(
    features_dir: str | Path,
    labels: str | Path | LabelTable,
    out_dir: str | Path,
    *,
    folds: int = 5,
    epochs: int = 100,
    patience: int = 10,
    min_epochs: int = 0,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    dropout: float = 0.25,
    max_tiles: int | None = None,
    val_fraction: float = 0.2,
    balance: bool = True,
    seed: int = 0,
    config: MILConfig | None = None,
    splits_from: str | Path | None = None,
    thumbnails: str | Path | None = None,
    heatmaps: bool = True,
    skip_missing: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> CVResult:
    """``zoomldm mil train`` as one call: k-fold cross-validated gated ABMIL (:func:`cross_validate`).

    Args:
        features_dir: folder of ``<slide_id>.h5`` feature files (``zoomldm features``, TRIDENT, CLAM).
        labels: CSV with columns ``slide_id,label[,patient_id]`` (or a :class:`LabelTable`).
        out_dir: output folder (splits, fold models, predictions, ``summary.csv``, heatmaps); created only
            when the run can start, and a rerun with the same settings resumes finished folds.
        folds: cross-validation folds (slide level, grouped by patient when given).
        epochs, patience, min_epochs: the most epochs per fold; early stopping after ``patience`` epochs
            without a lower validation loss, not before ``min_epochs``.
        lr, weight_decay, dropout: Adam and ABMIL settings.
        max_tiles: subsample this many tiles per bag while training (None: all).
        val_fraction: part of each training fold held out for early stopping (in small cohorts the
            inner split uses a larger part, keeping one slide of every class for validation).
        balance: weight the loss by inverse class frequency.
        seed: seed of the splits, initialisation, shuffling and subsampling.
        config: a whole :class:`MILConfig` instead of the settings above.
        splits_from: a folder of ``splits_{k}.csv`` to reuse instead of new splits.
        thumbnails: folder of ``<slide_id>.png/.jpg`` to draw heatmaps on.
        heatmaps: write attention heatmaps of the test slides.
        skip_missing: drop labelled slides without a feature file (listed in the result).
        device: torch device.
        progress: show progress bars.

    Returns:
        The :class:`CVResult` (per-fold metrics, mean and std).
    """
    if config is None:
        config = MILConfig(
            folds=folds,
            epochs=epochs,
            patience=patience,
            min_epochs=min_epochs,
            lr=lr,
            weight_decay=weight_decay,
            dropout=dropout,
            max_tiles=max_tiles,
            val_fraction=val_fraction,
            balance_classes=balance,
            seed=seed,
        )
    return cross_validate(
        features_dir,
        labels,
        out_dir,
        config,
        splits_from=splits_from,
        thumbnails=thumbnails,
        heatmaps=heatmaps,
        skip_missing=skip_missing,
        device=device,
        progress=progress,
    )
