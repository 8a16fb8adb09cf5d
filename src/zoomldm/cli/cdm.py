"""``zoomldm train-cdm`` and ``zoomldm sample-cdm``: the Conditioning Diffusion Model (SPEC §6)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("train-cdm")(train_cdm)
    app.command("sample-cdm")(sample_cdm_tokens)


def train_cdm(
    store: str = typer.Option(..., "--store", help="the store `zoomldm prepare` made (path or URL)"),
    zoomldm: str = typer.Option(
        ...,
        "--zoomldm",
        help="ZoomLDM whose frozen Summarizer makes the tokens: our dir, official file, hub id",
    ),
    out: Path = typer.Option(..., "--out", help="output directory (checkpoints/step-…)"),
    zoomldm_config: str = typer.Option(
        None, "--zoomldm-config", help="preset or yaml of an official checkpoint"
    ),
    model: str = typer.Option("DiT-B", "--model", help="DiT-S, DiT-B (the authors' default), DiT-L, DiT-XL"),
    size: str = typer.Option(
        None, "--size", help="custom DiT size DEPTH,HIDDEN,HEADS instead of the preset's (small experiments)"
    ),
    max_steps: int = typer.Option(400_000, "--max-steps"),
    batch_size: int = typer.Option(
        256, "--batch-size", help="global batch over all processes (authors: 256)"
    ),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate, constant (authors: 1e-4)"),
    ema_decay: float = typer.Option(0.9999, "--ema-decay"),
    vb_through_trunk: bool = typer.Option(
        False,
        "--vb-through-trunk/--vb-head-only",
        help="let the VB loss train the whole DiT, as the authors' code does (default: only its variance"
        " head; the VB gradient through the trunk spoils x̂0 at small t, docs/cdm.md)",
    ),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16"),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing/--no-gradient-checkpointing"
    ),
    checkpoint_every: int = typer.Option(50_000, "--checkpoint-every"),
    keep: int = typer.Option(0, "--keep", help="keep the newest N checkpoints (0: all)"),
    log_every: int = typer.Option(100, "--log-every"),
    num_workers: int = typer.Option(4, "--num-workers"),
    resume: str = typer.Option("auto", "--resume", help="auto, never, or a checkpoint directory"),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the CDM on the Summarizer tokens of a prepared store. Start with `accelerate launch` for
    several GPUs; rerun the same command to resume; Ctrl-C saves a checkpoint and exits."""
    from ..errors import ZoomLDMError
    from ..train.cdm import CDMTrainConfig, CDMTrainer

    overrides = {}
    if size is not None:
        try:
            depth, hidden, heads = (int(v) for v in size.split(","))
        except ValueError:
            raise ZoomLDMError(f"--size must be DEPTH,HIDDEN,HEADS (e.g. 12,768,12), got {size!r}") from None
        overrides = {"depth": depth, "hidden_size": hidden, "num_heads": heads}
    config = CDMTrainConfig(
        store=store,
        zoomldm=zoomldm,
        output_dir=str(out),
        zoomldm_config=zoomldm_config,
        model=model,
        model_overrides=overrides,
        max_steps=max_steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        vb_through_trunk=vb_through_trunk,
        seed=seed,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep,
        log_every=log_every,
        num_workers=num_workers,
        resume=resume,
    )
    result = CDMTrainer(config, log=typer.echo, progress=progress).fit()
    if result.interrupted:
        raise typer.Exit(130)
    last = result.checkpoints[-1] if result.checkpoints else None
    typer.echo(f"done: step {result.step}" + (f"; last checkpoint {last}" if last else ""))


def sample_cdm_tokens(
    cdm: Path = typer.Option(
        ..., "--cdm", help="a train-cdm checkpoint (or its cdm/ folder) or the authors' .pt"
    ),
    magnification: str = typer.Option(..., "--magnification", "-m", help="e.g. 20x, 5x, 2.5x"),
    domain: str = typer.Option("pathology", "--domain", help="pathology or satellite"),
    n: int = typer.Option(16, "--n", help="number of token sets"),
    steps: int = typer.Option(200, "--steps", help="DDIM steps (authors: 200)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    out: Path = typer.Option(Path("outputs/cdm_tokens.safetensors"), "--out", help="tokens [n, 65, D] file"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out file"),
) -> None:
    """Sample Summarizer tokens with the CDM (a context for `pipe(context=…)`, or for `eval embedding-fd`)."""
    import torch
    from safetensors.torch import save_file

    from ..errors import ZoomLDMError
    from ..fsutil import atomic_path, check_output

    if n < 1:
        raise ZoomLDMError(f"--n: expected at least 1 token set, got {n}")
    check_output(out, "--out", overwrite=overwrite)  # before any model work
    from ..models.cdm import load_cdm
    from ..models.cdm_diffusion import sample_cdm
    from ..scales import scales_for

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model, info = load_cdm(cdm)
    level = scales_for(domain, model.config.num_magnifications).parse(magnification)
    generator = torch.Generator(dev).manual_seed(seed)
    tokens = sample_cdm(
        model.to(dev), level.index, batch_size=n, num_steps=steps, generator=generator, progress=True
    )
    meta = {"magnification": level.name, "steps": str(steps), "seed": str(seed), "cdm": str(cdm)}
    with atomic_path(out) as tmp:  # whole or nothing, with the umask's permissions (safetensors: 0600)
        save_file({"tokens": tokens.float().cpu().contiguous()}, str(tmp), metadata=meta)
    typer.echo(
        f"wrote {out}: {n} token sets {list(tokens.shape[1:])} at {level.name} ({info['source']} weights)"
    )
