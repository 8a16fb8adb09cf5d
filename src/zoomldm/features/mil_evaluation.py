"""Applying trained MIL fold models to new labelled slides: every fold model and their ensemble
(``zoomldm mil eval``; :func:`evaluate_models`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ZoomLDMError
from .abmil import load_abmil
from .bags import FeatureBags, LabelTable
from .mil_io import Predictions, _heatmap, _load_labels, _progress_bar, _write_predictions, _write_table
from .mil_metrics import _mean_std, auc_score, balanced_accuracy
from .mil_training import predict

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
