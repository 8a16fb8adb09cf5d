"""MIL on small cohorts: the inner validation split adapts (every class keeps a validation slide), a cohort
too small says the minimum and the option, and a refused run leaves no output folder behind."""

from __future__ import annotations

import csv

import pytest
import typer
from mil_synthetic import make_cohort
from typer.testing import CliRunner

from _fixtures import one_thread
from zoomldm.cli import mil as mil_cli
from zoomldm.features.bags import read_labels
from zoomldm.features.splits import make_splits, read_splits


@pytest.fixture(scope="module")
def ten_slides(pools, tmp_path_factory):
    """10 patients with one slide each: 5 tumor, 5 normal (labels with a patient column: grouped splits)."""
    return make_cohort(pools, tmp_path_factory.mktemp("ten"), n_patients=10, slides_per_patient=1, seed=4)


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps "mil" a sub-command
    mil_cli.register(app)
    return app


@pytest.mark.parametrize("folds", [None, 3])
def test_default_settings_train_on_ten_slides(app, ten_slides, tmp_path, folds):
    out = tmp_path / "run"
    args = ["mil", "train", str(ten_slides.features_dir), str(ten_slides.labels_csv), str(out)]
    args += ["--epochs", "2", "--no-heatmaps"] + (["--folds", str(folds)] if folds else [])
    with one_thread():
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    splits = read_splits(out)
    assert len(splits) == (folds or 5)
    with open(ten_slides.labels_csv, newline="") as f:
        labels = {row["slide_id"]: row["label"] for row in csv.DictReader(f)}
    for split in splits:
        # stratified inner split: both classes in validation and in training, no slide twice
        assert {labels[s] for s in split.val} == {"tumor", "normal"}
        assert {labels[s] for s in split.train} == {"tumor", "normal"}
        assert not (set(split.train) & set(split.val)) and not (set(split.val) & set(split.test))
        assert len(split.train) + len(split.val) + len(split.test) == 10
    assert (out / "summary.csv").is_file()


def test_inner_split_keeps_the_asked_fraction_when_the_cohort_allows(cohort):
    # 30 patients (15 per class), 3 folds: 10 per class in training, 5 inner folds as asked (val 1/5)
    table = read_labels(cohort.labels_csv)
    for split in make_splits(table, folds=3, val_fraction=0.2, seed=0):
        assert len(split.val) == pytest.approx((len(split.train) + len(split.val)) / 5, abs=2)


def test_too_small_a_cohort_names_the_minimum_and_the_option_and_leaves_no_folder(app, pools, tmp_path):
    # 4 patients (2 per class) with 2 folds: each training fold has 1 patient per class, none to validate on
    small = make_cohort(pools, tmp_path / "small", n_patients=4, slides_per_patient=1, seed=1)
    out = tmp_path / "run"
    args = ["mil", "train", str(small.features_dir), str(small.labels_csv), str(out), "--folds", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    message = str(result.exception)
    assert "at least 4 patients per class with --folds 2" in message and "--folds" in message
    assert "sklearn" not in message and "n_splits" not in message
    assert not out.exists()
