"""``zoomldm train-vae``: train the VQ-f4 autoencoder on crops of large images (a thin layer over
:func:`zoomldm.train.vae.train_vae`)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("train-vae")(train_vae)


def train_vae(
    images: list[Path] = typer.Argument(
        ..., help="training images (PNG / JPEG / TIFF) at the finest magnification"
    ),
    out: Path = typer.Option(..., "--out", help="output directory (checkpoints/, model/, metrics.json)"),
    config: str = typer.Option(
        "tiny", "--config", "-c", help="architecture whose VQ-f4 is trained: preset or yaml"
    ),
    max_steps: int = typer.Option(1000, "--max-steps"),
    batch_size: int = typer.Option(8, "--batch-size"),
    crop_size: int = typer.Option(64, "--crop-size", help="training crop side in pixels (multiple of 4)"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (after a linear warm-up)"),
    warmup_steps: int = typer.Option(50, "--warmup-steps"),
    l2_weight: float = typer.Option(0.0, "--l2-weight", help="weight of an MSE term beside the L1 loss"),
    codebook_weight: float = typer.Option(
        1.0, "--codebook-weight", help="weight of codebook + commitment loss"
    ),
    levels: int = typer.Option(None, "--levels", help="2× pyramid levels per image (default: all that fit)"),
    holdout_fraction: float = typer.Option(
        0.125, "--holdout-fraction", help="right-hand strip of each level kept out of training (PSNR)"
    ),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
    keep: int = typer.Option(2, "--keep", help="keep the newest N checkpoints (0: all)"),
    log_every: int = typer.Option(25, "--log-every"),
    resume: str = typer.Option("auto", "--resume", help="auto (continue the newest checkpoint) or never"),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16"),
    seed: int = typer.Option(0, "--seed"),
    normalize_latents: bool = typer.Option(
        True,
        "--normalize-latents/--no-normalize-latents",
        help="export the VQ rescaled (exactly) to unit latent std: the diffusion's schedule assumes it",
    ),
) -> None:
    """Train the VQ-f4 autoencoder (L1 + codebook/commitment loss) and report its held-out PSNR. The
    result, <out>/model, is what `zoomldm prepare --checkpoint` and `model.vae` take. Rerun to resume."""
    from ..fsutil import check_input, check_output
    from ..train.vae import VAETrainConfig
    from ..train.vae import train_vae as run

    for path in images:
        check_input(path, "IMAGES")
    check_output(out, "--out", kind="dir")
    cfg = VAETrainConfig(
        images=[str(p) for p in images],
        output_dir=str(out),
        model_config=config,
        seed=seed,
        crop_size=crop_size,
        batch_size=batch_size,
        max_steps=max_steps,
        lr=lr,
        warmup_steps=warmup_steps,
        l2_weight=l2_weight,
        codebook_weight=codebook_weight,
        levels=levels,
        holdout_fraction=holdout_fraction,
        checkpoint_every=checkpoint_every,
        keep=keep,
        log_every=log_every,
        resume=resume,
        mixed_precision=mixed_precision,
        normalize_latents=normalize_latents,
    )
    result = run(cfg, log=typer.echo)
    psnr = result.metrics.get("psnr_db")
    typer.echo(
        f"done: step {result.step}"
        + (f"; held-out PSNR {psnr:.2f} dB" if psnr is not None else "")
        + (f"; model {result.model_dir}" if result.model_dir else "")
    )
