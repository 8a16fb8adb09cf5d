"""``zoomldm mil train`` / ``zoomldm mil eval``: slide-level gated ABMIL over per-slide feature files
(option parsing and printing around :func:`zoomldm.train_mil` and :func:`zoomldm.features.mil.evaluate_models`)."""

from __future__ import annotations

from pathlib import Path

import typer

mil_app = typer.Typer(
    help="Slide-level MIL (gated ABMIL) over per-slide feature files (<slide_id>.h5, TRIDENT/CLAM layout).",
    no_args_is_help=True,
)


@mil_app.command("train")
def train(
    features_dir: Path = typer.Argument(
        ..., help="Folder of <slide_id>.h5 feature files (features + coords)."
    ),
    labels_csv: Path = typer.Argument(..., help="CSV with columns slide_id,label[,patient_id]."),
    out: Path = typer.Argument(..., help="Output folder (splits, fold models, summary.csv, heatmaps)."),
    folds: int = typer.Option(5, help="Number of cross-validation folds (slide level, grouped by patient)."),
    epochs: int = typer.Option(100, help="Maximum epochs per fold."),
    patience: int = typer.Option(10, help="Early stopping: epochs without a lower validation loss."),
    min_epochs: int = typer.Option(0, help="Train at least this many epochs before stopping early."),
    lr: float = typer.Option(1e-4, help="Adam learning rate."),
    weight_decay: float = typer.Option(1e-5, help="Adam weight decay."),
    dropout: float = typer.Option(0.25, help="Dropout in the embedding and attention branches."),
    max_tiles: int | None = typer.Option(None, help="Subsample this many tiles per bag while training."),
    val_fraction: float = typer.Option(
        0.2,
        help="Fraction of each training fold held out for early stopping (small cohorts: larger, so that "
        "every class keeps one validation slide).",
    ),
    balance: bool = typer.Option(True, help="Weight the loss by inverse class frequency."),
    splits_from: Path | None = typer.Option(
        None, help="Reuse the splits_{k}.csv of another run (same slides)."
    ),
    thumbnails: Path | None = typer.Option(None, help="Folder of <slide_id>.png/.jpg to draw heatmaps on."),
    heatmaps: bool = typer.Option(True, help="Write attention heatmaps of the test slides."),
    skip_missing: bool = typer.Option(False, help="Drop labelled slides without a feature file (listed)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the splits, initialisation, shuffling and subsampling."),
) -> None:
    """Train ABMIL with stratified k-fold cross-validation; report AUC and balanced accuracy per fold."""
    from rich.console import Console

    from ..features.mil import train_mil

    result = train_mil(
        features_dir,
        labels_csv,
        out,
        folds=folds,
        epochs=epochs,
        patience=patience,
        min_epochs=min_epochs,
        lr=lr,
        weight_decay=weight_decay,
        dropout=dropout,
        max_tiles=max_tiles,
        val_fraction=val_fraction,
        balance=balance,
        seed=seed,
        splits_from=splits_from,
        thumbnails=thumbnails,
        heatmaps=heatmaps,
        skip_missing=skip_missing,
        device=device,
        progress=True,
    )
    console = Console()
    if result.missing:
        console.print(
            f"[yellow]skipped {len(result.missing)} slide(s) without features:[/] {', '.join(result.missing)}"
        )
    if result.resumed_folds:
        console.print(f"resumed finished folds {result.resumed_folds}")
    _print_rows(
        console,
        [{k: v for k, v in r.items()} for r in result.rows],
        ("test_auc", "val_auc", "test_acc", "val_acc"),
    )
    for m in ("test_auc", "test_acc"):
        console.print(f"{m}: {result.mean[m]:.4f} ± {result.std[m]:.4f}")
    console.print(f"wrote {out / 'summary.csv'}")


@mil_app.command("eval")
def evaluate(
    model_dir: Path = typer.Argument(..., help="OUT folder of 'zoomldm mil train' (fold_{k}.safetensors)."),
    features_dir: Path = typer.Argument(..., help="Folder of <slide_id>.h5 feature files."),
    labels_csv: Path = typer.Argument(..., help="CSV with columns slide_id,label[,patient_id]."),
    out: Path = typer.Argument(..., help="Output folder (eval_summary.csv, predictions.csv, heatmaps)."),
    thumbnails: Path | None = typer.Option(None, help="Folder of <slide_id>.png/.jpg to draw heatmaps on."),
    heatmaps: bool = typer.Option(
        True, help="Write attention heatmaps (attention averaged over the fold models)."
    ),
    skip_missing: bool = typer.Option(False, help="Drop labelled slides without a feature file (listed)."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
) -> None:
    """Apply trained fold models to a feature set; report AUC and balanced accuracy per model and ensemble."""
    from rich.console import Console

    from ..features.mil import evaluate_models

    result = evaluate_models(
        model_dir,
        features_dir,
        labels_csv,
        out,
        thumbnails=thumbnails,
        heatmaps=heatmaps,
        skip_missing=skip_missing,
        device=device,
        progress=True,
    )
    console = Console()
    for note in result.warnings:
        console.print(f"[yellow]warning:[/] {note}")
    if result.missing:
        console.print(
            f"[yellow]skipped {len(result.missing)} slide(s) without features:[/] {', '.join(result.missing)}"
        )
    _print_rows(console, result.rows, ("auc", "acc"))
    console.print(
        f"ensemble: auc {result.ensemble['auc']:.4f}, balanced accuracy {result.ensemble['acc']:.4f}"
    )
    console.print(f"wrote {out / 'eval_summary.csv'}")


def _print_rows(console, rows: list[dict], metrics: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table("fold", *metrics)
    for row in rows:
        table.add_row(str(row["fold"]), *(f"{row[m]:.4f}" for m in metrics))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``mil`` command group to the ``zoomldm`` app."""
    app.add_typer(mil_app, name="mil")
