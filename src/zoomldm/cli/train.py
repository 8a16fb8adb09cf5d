"""``zoomldm train``: train ZoomLDM (UNet + Summarizer) on a prepared store (a thin layer over
:class:`zoomldm.train.trainer.Trainer`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    config: Path = typer.Option(..., "--config", "-c", help="training YAML (see configs/train_brca.yaml)"),
    overrides: list[str] = typer.Option(
        None, "--set", help="override a config key, e.g. --set optim.lr=1e-4 --set data.store=x.zarr"
    ),
    resume: str = typer.Option(
        None,
        "--resume",
        help="auto (newest checkpoint of output_dir, the default), never, or a checkpoint directory",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train or fine-tune ZoomLDM. One command for CPU, one GPU, several GPUs and nodes: start it with
    `accelerate launch` or `torchrun` for more than one process. Rerun the same command to resume;
    Ctrl-C finishes the current step, saves a checkpoint and exits."""
    from ..train.config import TrainConfig
    from ..train.trainer import Trainer

    items = list(overrides or [])
    if resume is not None:
        items.append(f"checkpoint.resume={resume}")
    cfg = TrainConfig.from_yaml(config, items)
    result = Trainer(cfg, log=typer.echo, progress=progress).fit()
    if result.interrupted:
        raise typer.Exit(130)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    last = result.checkpoints[-1] if result.checkpoints else None
    typer.echo(f"done: step {result.step}" + (f"; last checkpoint {last}" if last else ""))
