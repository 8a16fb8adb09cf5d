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
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from ..errors import ZoomLDMError
from .abmil import ABMILConfig, GatedABMIL, load_abmil, save_abmil
from .bags import FeatureBags, LabelTable, SlideBag, read_labels
from .heatmap import attention_heatmap, find_thumbnail, save_heatmap
from .splits import Split, make_splits, read_splits, write_split

SUMMARY_COLUMNS = ("fold", "test_auc", "val_auc", "test_acc", "val_acc")


@dataclass(frozen=True)
class MILConfig:
    """Settings of MIL training (defaults: CONVENTIONS.md "MIL")."""

    folds: int = 5
    epochs: int = 100
    patience: int = 10
    min_epochs: int = 0
    lr: float = 1e-4
    weight_decay: float = 1e-5
    dropout: float = 0.25
    embed_dim: int = 512
    attn_dim: int = 256
    max_tiles: int | None = None
    val_fraction: float = 0.2
    balance_classes: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1 or self.patience < 1 or self.min_epochs < 0:
            raise ZoomLDMError("--epochs and --patience must be at least 1 and --min-epochs at least 0")
        for option, value, ok in (
            ("--lr", self.lr, self.lr > 0),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0),
            ("--dropout", self.dropout, 0 <= self.dropout < 1),
            ("--val-fraction", self.val_fraction, 0 < self.val_fraction < 0.5),
        ):
            if not (math.isfinite(value) and ok):  # NaN fails every comparison: say so, not torch
                wanted = {"--lr": "> 0", "--weight-decay": ">= 0", "--dropout": "in [0, 1)"}.get(
                    option, "in (0, 0.5)"
                )
                raise ZoomLDMError(f"{option}: expected a finite number {wanted}, got {value}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ZoomLDMError(f"--max-tiles must be at least 1, got {self.max_tiles}")


# ---------------------------------------------------------------------------------------------- metrics


def auc_score(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC: binary (positive = class 1) or one-vs-rest macro over the classes present in ``y``.

    NaN when ``y`` has a single class. With every class present this equals scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")``; computing it per class also covers small
    validation sets that miss a class.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    present = [c for c in range(probs.shape[1]) if (y == c).any()]
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def balanced_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    """Balanced accuracy of the arg-max prediction (mean recall over the classes present in ``y``)."""
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # sklearn warns when a predicted class is absent from y
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, probs.argmax(axis=1)))


# --------------------------------------------------------------------------------------- train / predict


def _bag_tensor(bag: SlideBag, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(bag.features).to(device)


@torch.no_grad()
def predict(
    model: GatedABMIL, bag: SlideBag, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(C,)`` and attention ``(N,)`` of one bag, using all its tiles."""
    model.eval()
    logits, attention = model(_bag_tensor(bag, torch.device(device)))
    return torch.softmax(logits, dim=-1).cpu().numpy(), attention.cpu().numpy()


@dataclass
class FoldHistory:
    """Per-epoch losses of one fold and where early stopping kept the weights."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1


def train_fold(
    bags: Mapping[str, SlideBag],
    labels: LabelTable,
    split: Split,
    config: MILConfig,
    fold: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[GatedABMIL, FoldHistory]:
    """Train one ABMIL on ``split.train``, early-stopping on the loss over ``split.val``.

    Deterministic for a given ``config.seed`` and ``fold`` (own RNG streams; the global torch RNG is
    restored afterwards). Returns the model with the weights of the best validation epoch.
    """
    config.validate()
    device = torch.device(device)
    target = dict(zip(labels.slide_ids, labels.targets.tolist(), strict=True))
    n_classes, dim = len(labels.classes), next(iter(bags.values())).dim
    train_ids, val_ids = list(split.train), list(split.val)
    weight = None
    if config.balance_classes:  # inverse class frequency in the training slides
        counts = np.bincount([target[s] for s in train_ids], minlength=n_classes).astype(np.float64)
        weight = torch.tensor(
            len(train_ids) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32, device=device
        )
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    rng = np.random.default_rng([config.seed, fold])
    history = FoldHistory()
    task = progress.add_task(f"fold {fold}", total=config.epochs) if progress is not None else None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed * 1000 + fold)
        architecture = ABMILConfig(dim, n_classes, config.embed_dim, config.attn_dim, config.dropout)
        model = GatedABMIL(architecture).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_loss, best_state, stale = math.inf, None, 0
        for epoch in range(config.epochs):
            # 1. one pass over the training slides, one bag per step, optionally subsampled
            model.train()
            total = 0.0
            for slide in rng.permutation(train_ids):
                x = _bag_tensor(bags[slide], device)
                if config.max_tiles is not None and x.shape[0] > config.max_tiles:
                    keep = np.sort(rng.choice(x.shape[0], config.max_tiles, replace=False))
                    x = x[torch.from_numpy(keep).to(device)]
                logits, _ = model(x)
                loss = loss_fn(logits[None], torch.tensor([target[slide]], device=device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            history.train_loss.append(total / len(train_ids))
            if progress is not None:
                progress.update(task, advance=1, description=f"fold {fold} loss {history.train_loss[-1]:.3f}")
            # 2. validation loss over all tiles; keep the best weights (no validation slides: the last)
            if not val_ids:
                continue
            model.eval()
            with torch.no_grad():
                losses = [
                    torch.nn.functional.cross_entropy(
                        model(_bag_tensor(bags[s], device))[0][None], torch.tensor([target[s]], device=device)
                    ).item()
                    for s in val_ids
                ]
            val_loss = float(np.mean(losses))
            history.val_loss.append(val_loss)
            if val_loss < best_loss - 1e-6:
                best_loss, stale, history.best_epoch = val_loss, 0, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            # 3. early stopping
            if stale >= config.patience and epoch + 1 >= config.min_epochs:
                break
    if progress is not None:
        progress.remove_task(task)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


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


def _load_labels(labels: str | Path | LabelTable, min_classes: int = 2) -> LabelTable:
    return labels if isinstance(labels, LabelTable) else read_labels(labels, min_classes=min_classes)


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


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalResult:
    """Metrics of each fold model and of their ensemble (mean probabilities) on one labelled feature set."""

    rows: list[dict[str, Any]]
    ensemble: dict[str, float]
    classes: list[str]
    out_dir: Path
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_models(model_dir: str | Path) -> list[Path]:
    """The ``fold_{k}.safetensors`` of a training output folder, in fold order."""
    model_dir = Path(model_dir)
    paths = sorted(model_dir.glob("fold_*.safetensors"), key=lambda p: int(p.stem.split("_")[-1]))
    if not paths:
        raise ZoomLDMError(
            f"no fold_{{k}}.safetensors in {model_dir}; expected the OUT folder of 'zoomldm mil train'"
        )
    return paths


def evaluate_models(
    model_dir: str | Path,
    features_dir: str | Path,
    labels: str | Path | LabelTable,
    out_dir: str | Path,
    thumbnails: str | Path | None = None,
    heatmaps: bool = True,
    skip_missing: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Apply every fold model of ``model_dir`` to all labelled slides of ``features_dir``.

    Writes ``eval_summary.csv`` (fold, auc, acc per model, mean and std over models, and the ensemble of
    the models' mean probabilities), ``predictions.csv`` (ensemble) and ``heatmaps/<slide>.png`` (attention
    averaged over the models).
    """
    # 1. models, labels (indexed against the models' classes), bags
    models = [load_abmil(p, device) for p in find_models(model_dir)]
    classes = models[0][1]
    if any(m[1] != classes for m in models):
        raise ZoomLDMError(f"the models in {model_dir} were trained on different classes")
    table = _load_labels(labels, min_classes=1).with_classes(classes)
    bags = FeatureBags(features_dir, table.slide_ids, skip_missing=skip_missing)
    table = table.subset(list(bags))
    in_dim = models[0][0].config.in_dim
    if bags.dim != in_dim:
        raise ZoomLDMError(
            f"the models take {in_dim}-d features but {features_dir} holds {bags.dim}-d features"
        )
    notes = []
    trained_on = (models[0][2].get("features") or {}).get("encoder")
    given = bags.attrs().get("encoder")
    if trained_on is not None and given is not None and trained_on != given:
        notes.append(f"models were trained on {trained_on!r} features; these are {given!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 2. predict every slide with every model
    y = table.targets
    probs = np.zeros((len(models), len(table), len(classes)))
    with _progress_bar(progress) as bar:
        task = bar.add_task("slides", total=len(table))
        for i, slide in enumerate(table.slide_ids):
            bag = bags[slide]
            attentions = []
            for m, (model, _, _) in enumerate(models):
                probs[m, i], attention = predict(model, bag, device)
                attentions.append(attention)
            if heatmaps:
                info = {"models": str(len(models)), "label": table.labels[i]}
                _heatmap(
                    bag,
                    np.mean(attentions, axis=0),
                    out / "heatmaps" / f"{slide}.png",
                    Path(thumbnails) if thumbnails else None,
                    info,
                )
            bar.advance(task)

    # 3. metrics per model, mean ± std, ensemble; predictions of the ensemble
    rows = [
        {"fold": m, "auc": auc_score(y, probs[m]), "acc": balanced_accuracy(y, probs[m])}
        for m in range(len(models))
    ]
    ensemble_probs = probs.mean(axis=0)
    ensemble = {"auc": auc_score(y, ensemble_probs), "acc": balanced_accuracy(y, ensemble_probs)}
    stats = {k: _mean_std([r[k] for r in rows]) for k in ("auc", "acc")}
    table_rows = [[r["fold"], r["auc"], r["acc"]] for r in rows]
    table_rows += [["mean", stats["auc"][0], stats["acc"][0]], ["std", stats["auc"][1], stats["acc"][1]]]
    table_rows.append(["ensemble", ensemble["auc"], ensemble["acc"]])
    _write_table(out / "eval_summary.csv", ("fold", "auc", "acc"), table_rows)
    _write_predictions(
        out / "predictions.csv",
        Predictions(list(table.slide_ids), y, ensemble_probs, ["eval"] * len(table)),
        classes,
    )
    return EvalResult(rows, ensemble, classes, out, list(bags.missing), notes)
