"""MIL cross-validation on a synthetic slide-level task made of real tiles (see mil_synthetic.py)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from mil_synthetic import FAST, make_cohort
from PIL import Image

from _fixtures import one_thread
from zoomldm.errors import ZoomLDMError
from zoomldm.features.abmil import load_abmil
from zoomldm.features.bags import FeatureBags, read_bag, read_labels
from zoomldm.features.mil import (
    MILConfig,
    auc_score,
    balanced_accuracy,
    cross_validate,
    predict,
    train_fold,
)
from zoomldm.features.splits import Split, read_splits


def test_defaults_are_the_conventional_abmil_setting():
    c = MILConfig()
    assert (c.lr, c.weight_decay, c.dropout, c.attn_dim, c.folds) == (1e-4, 1e-5, 0.25, 256, 5)
    assert c.max_tiles is None  # evaluation and, by default, training use every tile


def test_learns_the_slide_level_task(trained):
    aucs = [row["test_auc"] for row in trained.rows]
    assert len(aucs) == FAST.folds
    assert np.mean(aucs) >= 0.9, aucs
    assert np.mean([row["test_acc"] for row in trained.rows]) >= 0.8


def test_shuffled_labels_stay_near_chance(pools, tmp_path):
    # 120 one-slide patients in 2 folds: 60 test slides per fold keep the null spread small (mean test AUC
    # over seeds 0-7 measured 0.51 ± 0.03 with 8 epochs; 0.52 ± 0.03 over seeds 0-3 with 4), so a leak between train and test would stand out clearly.
    cohort = make_cohort(pools, tmp_path / "data", n_patients=120, slides_per_patient=1, shuffle_labels=True)
    config = MILConfig(folds=2, epochs=4, patience=FAST.patience, lr=FAST.lr)
    with one_thread():
        result = cross_validate(
            cohort.features_dir, cohort.labels_csv, tmp_path / "cv", config, heatmaps=False
        )
    assert abs(result.mean["test_auc"] - 0.5) <= 0.15, [r["test_auc"] for r in result.rows]


def test_summary_csv_and_splits(trained, cohort):
    out = trained.out_dir
    with (out / "summary.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["fold", "test_auc", "val_auc", "test_acc", "val_acc"]
    assert [r[0] for r in rows[1:]] == [str(k) for k in range(FAST.folds)] + ["mean", "std"]
    values = np.array([[float(v) for v in r[1:]] for r in rows[1 : 1 + FAST.folds]])
    np.testing.assert_allclose(values.mean(0), [float(v) for v in rows[-2][1:]], atol=1e-5)
    np.testing.assert_allclose(values.std(0, ddof=1), [float(v) for v in rows[-1][1:]], atol=1e-5)

    splits = read_splits(out)
    patients = read_labels(cohort.labels_csv)
    patient_of = dict(zip(patients.slide_ids, patients.patients, strict=True))
    tested = [s for split in splits for s in split.test]
    assert sorted(tested) == sorted(patient_of)  # every slide is tested exactly once
    for split in splits:
        sides = [{patient_of[s] for s in part} for part in (split.train, split.val, split.test)]
        assert not (sides[0] & sides[2]) and not (sides[1] & sides[2]) and not (sides[0] & sides[1])
        assert len(split.val) > 0


def test_model_files_and_provenance(trained, cohort):
    out = trained.out_dir
    model, classes, extra = load_abmil(out / "fold_0.safetensors")
    assert classes == ["normal", "tumor"] and model.config.in_dim == 31
    assert extra["fold"] == 0 and extra["features"]["encoder"] == "image_stats"
    config = json.loads((out / "config.json").read_text())
    assert config["mil"]["seed"] == FAST.seed and config["feature_dim"] == 31
    with (out / "predictions_0.csv").open() as f:
        preds = list(csv.DictReader(f))
    assert {p["split"] for p in preds} == {"val", "test"}
    for p in preds:
        assert math.isclose(float(p["p_normal"]) + float(p["p_tumor"]), 1.0, abs_tol=1e-5)


def test_attention_prefers_positive_tiles_and_heatmaps_exist(trained, cohort):
    out = trained.out_dir
    splits = read_splits(out)
    ratios = []
    for k, split in enumerate(splits):
        model, _, _ = load_abmil(out / f"fold_{k}.safetensors")
        for slide in split.test:
            heatmap = Image.open(out / "heatmaps" / f"{slide}.png")
            assert heatmap.mode == "RGB" and max(heatmap.size) <= 1024
            assert heatmap.text["slide_id"] == slide and heatmap.text["fold"] == str(k)
            positive = cohort.positive_tiles[slide]
            if positive.any():
                _, attention = predict(model, read_bag(cohort.features_dir / f"{slide}.h5"))
                ratios.append(attention[positive].mean() / attention[~positive].mean())
    assert len(ratios) == 30
    assert np.mean(ratios) > 2.0, ratios  # positive (NAIP) tiles get more than twice the attention


def test_deterministic_and_resumable(cohort, trained, tmp_path):
    small = MILConfig(folds=2, epochs=2, patience=2, lr=1e-3, seed=7)
    with one_thread():
        a = cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path / "a", small, heatmaps=False)
        b = cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path / "b", small, heatmaps=False)
    assert (tmp_path / "a" / "predictions_1.csv").read_text() == (
        tmp_path / "b" / "predictions_1.csv"
    ).read_text()
    assert a.rows == b.rows
    # a rerun into the same folder reads finished folds back instead of training again
    again = cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path / "a", small, heatmaps=False)
    assert again.resumed_folds == [0, 1] and again.rows == a.rows
    with pytest.raises(ZoomLDMError, match="other settings"):
        cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path / "a", MILConfig(folds=2, seed=8))
    with pytest.raises(ZoomLDMError, match="holds a run with 2 folds, not 3"):
        cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path / "a", MILConfig(folds=3, seed=7))


def test_a_split_without_validation_slides_trains_all_epochs(cohort):
    labels = read_labels(cohort.labels_csv)
    bags = FeatureBags(cohort.features_dir, labels.slide_ids)
    split = Split(labels.slide_ids[:10], (), labels.slide_ids[10:])
    with one_thread():
        model, history = train_fold(bags, labels, split, MILConfig(epochs=3, patience=1, lr=1e-3))
    assert len(history.train_loss) == 3 and history.val_loss == [] and history.best_epoch == -1
    assert not model.training


def test_reused_splits_and_subsampling(cohort, trained, tmp_path):
    config = MILConfig(folds=3, epochs=2, patience=2, lr=1e-3, max_tiles=8)
    with one_thread():
        result = cross_validate(
            cohort.features_dir,
            cohort.labels_csv,
            tmp_path,
            config,
            splits_from=trained.out_dir,
            heatmaps=False,
        )
    assert read_splits(tmp_path) == read_splits(trained.out_dir)
    assert len(result.rows) == 3


def test_metrics_match_sklearn_and_handle_missing_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    assert math.isclose(auc_score(y, probs), roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert math.isclose(
        auc_score(y == 1, np.stack([1 - probs[:, 1], probs[:, 1]], 1)), roc_auc_score(y == 1, probs[:, 1])
    )
    assert math.isnan(auc_score(np.zeros(5, int), probs[:5]))
    assert (
        balanced_accuracy(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]))
        == 0.75
    )


def test_too_few_slides_per_class_is_a_user_error(cohort, tmp_path):
    with pytest.raises(ZoomLDMError, match="fewer patients than --folds"):
        cross_validate(cohort.features_dir, cohort.labels_csv, tmp_path, MILConfig(folds=16))
