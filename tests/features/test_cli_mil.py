"""``zoomldm mil train`` / ``zoomldm mil eval`` through the command line layer."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from _fixtures import one_thread
from zoomldm.cli import mil as mil_cli
from zoomldm.errors import ZoomLDMError
from zoomldm.features.bags import write_bag


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps "mil" a sub-command
    mil_cli.register(app)
    return app


def test_train_then_eval(app, cohort, trained, tmp_path):
    runner = CliRunner()
    args = ["mil", "train", str(cohort.features_dir), str(cohort.labels_csv), str(tmp_path / "run")]
    args += ["--folds", "2", "--epochs", "1", "--lr", "1e-3", "--no-heatmaps", "--seed", "3"]
    with one_thread():
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test_auc:" in result.output and (tmp_path / "run" / "summary.csv").exists()
    assert sorted(p.name for p in (tmp_path / "run").glob("fold_*.safetensors")) == [
        "fold_0.safetensors",
        "fold_1.safetensors",
    ]
    assert not (tmp_path / "run" / "heatmaps").exists()

    # apply the well-trained fold models of the session fixture to the cohort, one slide with a thumbnail
    (tmp_path / "thumbs").mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "thumbs" / "slide_000_0.png")
    result = runner.invoke(
        app,
        [
            "mil",
            "eval",
            str(trained.out_dir),
            str(cohort.features_dir),
            str(cohort.labels_csv),
            str(tmp_path / "ev"),
            "--thumbnails",
            str(tmp_path / "thumbs"),
        ],
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "ev" / "eval_summary.csv").open() as f:
        rows = {r["fold"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["0", "1", "2", "mean", "std", "ensemble"]
    assert float(rows["ensemble"]["auc"]) >= 0.95
    assert len(list((tmp_path / "ev" / "heatmaps").glob("*.png"))) == len(cohort.labels)
    # the lowest-attention tile is dark purple (red 68); blended 50 % over the red thumbnail, red stays >= 100
    red = {
        s: np.asarray(Image.open(tmp_path / "ev" / "heatmaps" / f"{s}.png"))[..., 0].min()
        for s in ("slide_000_0", "slide_000_1")
    }
    assert red["slide_000_0"] >= 100 and red["slide_000_1"] < 100
    with (tmp_path / "ev" / "predictions.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(cohort.labels)


def test_eval_refuses_features_of_another_dimension(app, cohort, trained, tmp_path):
    for slide in cohort.labels:
        write_bag(tmp_path / "wide" / f"{slide}.h5", np.zeros((3, 8)), np.zeros((3, 2)))
    result = CliRunner().invoke(
        app,
        [
            "mil",
            "eval",
            str(trained.out_dir),
            str(tmp_path / "wide"),
            str(cohort.labels_csv),
            str(tmp_path / "ev"),
        ],
    )
    assert isinstance(result.exception, ZoomLDMError)
    assert "take 31-d features" in str(result.exception)


def test_missing_slides_are_reported_or_skipped(app, cohort, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(cohort.labels_csv.read_text() + "ghost_slide,tumor,ghost\n")
    base = [
        "mil",
        "train",
        str(cohort.features_dir),
        str(labels),
        str(tmp_path / "run"),
        "--folds",
        "2",
        "--epochs",
        "1",
    ]
    result = CliRunner().invoke(app, base)
    assert isinstance(result.exception, ZoomLDMError) and "ghost_slide" in str(result.exception)
    with one_thread():
        result = CliRunner().invoke(app, [*base, "--skip-missing", "--no-heatmaps"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 slide(s) without features: ghost_slide" in result.output


def test_registered_in_the_zoomldm_app():
    from zoomldm.cli import app as zoomldm_app

    result = CliRunner().invoke(zoomldm_app, ["mil", "--help"])
    assert result.exit_code == 0 and "train" in result.output and "eval" in result.output
