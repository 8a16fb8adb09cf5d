"""Train the VQ-f4 autoencoder (``zoomldm train-vae``): reconstruction + codebook/commitment loss.

ZoomLDM's latents come from a frozen VQ-f4 (SPEC §2.3); the authors reuse the CompVis one. Where no
trained VQ is at hand (offline, a new domain, the package's embedded tiny model) this trains one on crops
of a few large images, at every magnification the diffusion model will see:

* **data** (:class:`CropSource`): each image is reduced by 2× steps into a pyramid (downsample 1, 2, 4, …
  while a side stays ≥ 2 crops); a vertical strip at the right of every level (``holdout_fraction`` of
  its width) is **held out**. Training crops are drawn from the rest, the level first (uniformly, as the
  magnification-balanced sampler of the diffusion data), then the position and one of the 8 flips/90°
  rotations; the draws of step ``n`` come from a generator seeded by ``(seed, n)`` alone, so a resumed
  run sees the same crops as an uninterrupted one. The held-out crops are the non-overlapping grid of
  the strips (deterministic), on which the reconstruction PSNR is measured.
* **loss**: ``L1 + l2_weight · MSE + codebook_weight · (codebook + β·commitment)`` — the quantiser's
  own loss term of diffusers' ``VQModel`` (with the official distance, :mod:`zoomldm.models.autoencoder`),
  reconstructions through the straight-through quantiser, as taming's ``VQModel`` without its GAN and
  LPIPS terms (no perceptual network ships with the package; the L1 + codebook objective is what the
  first taming stages train before the discriminator starts).
* **training**: accelerate (CPU or one/many GPUs), Adam, checkpoints by
  :func:`zoomldm.train.checkpointing.save_checkpoint` (``checkpoints/step-…/vae/`` + ``training_state/``,
  published atomically, resumable bit-exactly), ``metrics.json`` per checkpoint.
* **export**: ``<output_dir>/model/`` in our pipeline format — the trained VQ (rescaled to unit latent
  std unless ``normalize_latents`` is off: :func:`latent_scale`) with a seeded random UNet and
  Summarizer of the same architecture — so that ``zoomldm prepare --checkpoint <output_dir>/model`` encodes
  a store with it and ``model.vae: <output_dir>/model`` makes ``zoomldm train`` decode its sample grids
  with it; ``<output_dir>/metrics.json`` holds the final losses and held-out PSNR.

The crops are :mod:`.vae_crops`, the measurements (held-out PSNR, latent spread) :mod:`.vae_metrics`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ZoomLDMConfig
from ..errors import ConfigError
from ..fsutil import atomic_path
from .checkpointing import STATE, Progress, list_checkpoints, save_checkpoint
from .vae_crops import CropSource
from .vae_metrics import _evaluate, latent_scale, reconstruction_metrics  # noqa: F401 (re-exported)

VAE_DIR = "vae"
METRICS = "metrics.json"
MODEL_DIR = "model"


@dataclass
class VAETrainConfig:
    """Settings of ``zoomldm train-vae`` (every field is a command-line option of the same name)."""

    #: the training images (PNG / JPEG / TIFF), at the finest magnification of the model
    images: list[str] = field(default_factory=list)
    output_dir: str = "runs/vae"
    #: the architecture whose ``vae`` is trained: a preset (tiny, brca, …) or a yaml
    model_config: str = "tiny"
    seed: int = 0
    crop_size: int = 64
    batch_size: int = 8
    max_steps: int = 1000
    lr: float = 1.0e-3
    #: Adam betas (taming's VQGAN uses 0.5, 0.9)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    #: linear warm-up of the learning rate over this many steps
    warmup_steps: int = 50
    l2_weight: float = 0.0
    codebook_weight: float = 1.0
    #: pyramid levels per image (None: every 2× level whose side is still ≥ 2 crops)
    levels: int | None = None
    #: the right-hand strip of each level that is never trained on (held-out PSNR)
    holdout_fraction: float = 0.125
    #: most held-out crops per image and level (the first of the strip's grid, row-major)
    eval_crops_per_level: int = 16
    checkpoint_every: int = 250
    #: checkpoints kept (oldest deleted first); 0 keeps all
    keep: int = 2
    log_every: int = 25
    #: auto (continue from the newest checkpoint in output_dir), never
    resume: str = "auto"
    mixed_precision: str = "no"
    #: export the VQ rescaled (exactly, :func:`zoomldm.models.autoencoder.rescale_latents`) so that its
    #: latents have unit standard deviation on the held-out crops: ZoomLDM feeds the VQ's latents to the
    #: diffusion unscaled, and its β schedule assumes about unit spread (see :func:`latent_scale`)
    normalize_latents: bool = True

    def validate(self) -> None:
        def fail(key: str, message: str) -> None:
            raise ConfigError(f"--{key.replace('_', '-')}: {message}")

        if not self.images:
            fail("images", "give at least one training image")
        for key in ("crop_size", "batch_size", "max_steps", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                fail(key, f"must be ≥ 1, got {getattr(self, key)}")
        if self.crop_size % 4:
            fail("crop_size", f"must be a multiple of 4 (the VQ-f4 downsamples 4×), got {self.crop_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            fail("lr", f"must be a positive number, got {self.lr}")
        if not 0 < self.holdout_fraction < 1:
            fail("holdout_fraction", f"must be between 0 and 1, got {self.holdout_fraction}")
        if self.levels is not None and self.levels < 1:
            fail("levels", f"must be ≥ 1, got {self.levels}")
        if self.resume not in ("auto", "never"):
            fail("resume", f"expected auto or never, got {self.resume!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            fail("mixed_precision", f"expected no, fp16 or bf16, got {self.mixed_precision!r}")
        if len(self.betas) != 2:
            fail("betas", f"expected two numbers, got {self.betas}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VAETrainResult:
    """What :func:`train_vae` did."""

    output_dir: Path
    step: int
    start_step: int
    losses: list[float] = field(default_factory=list)  # total loss per step of this run
    metrics: dict[str, Any] = field(default_factory=dict)  # the final held-out evaluation
    model_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0


# -- training ---------------------------------------------------------------------------------------------
def _is_vae_checkpoint(path: Path) -> bool:
    return (path / VAE_DIR / "config.json").is_file() and (path / STATE / "progress.json").is_file()


def load_training_images(paths: Sequence[str | Path]) -> list[np.ndarray]:
    from ..io.images import load_image

    return [load_image(p, "training image") for p in paths]


def train_vae(
    config: VAETrainConfig,
    model_config: ZoomLDMConfig | None = None,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> VAETrainResult:
    """Train (or continue training) the VQ-f4 of ``config.model_config`` on crops of ``config.images``.

    Args:
        config: the settings (validated here).
        model_config: the architecture, when given as an object (tests: a narrower VQ); default
            ``ZoomLDMConfig.resolve(config.model_config)``.
        log: receives progress lines.
        stop_after: stop (with a checkpoint) after this many steps of this run, as an interrupted run
            would; the next call with ``resume: auto`` continues.

    Returns:
        A :class:`VAETrainResult`; ``model_dir`` is set once ``max_steps`` is reached.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ..models.autoencoder import build_vae
    from .runtime import _accelerator_available, _own_memory

    config.validate()
    say = log or (lambda line: None)
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    cfg = model_config if model_config is not None else ZoomLDMConfig.resolve(config.model_config)
    found = list_checkpoints(output_dir, _is_vae_checkpoint)
    if found and config.resume == "never":
        raise ConfigError(
            f"--out {output_dir}: already holds VQ checkpoints up to step {found[-1][0]} (use --resume auto "
            "to continue them, or another --out)"
        )
    resume_from = found[-1][1] if found and config.resume == "auto" else None

    images = load_training_images(config.images)
    source = CropSource(
        images, config.crop_size, config.levels, config.holdout_fraction, config.eval_crops_per_level
    )
    acc = Accelerator(
        cpu=not _accelerator_available(),
        mixed_precision=config.mixed_precision,
        step_scheduler_with_optimizer=False,  # the warm-up counts optimizer steps, whatever the processes
    )
    set_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = build_vae(cfg.vae)
    _own_memory(vae)
    vae.train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr, betas=tuple(config.betas))
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    vae, optimizer, scheduler = acc.prepare(vae, optimizer, scheduler)
    progress = Progress(batch_size=config.batch_size, seed=config.seed, world_size=acc.num_processes)
    history: list[dict[str, float]] = []
    earlier_s = 0.0  # wall time of the runs before this resume (a card reports the whole training)
    if resume_from is not None:
        acc.load_state(str(resume_from / STATE))
        progress = Progress.read(resume_from)
        saved = _read_metrics(resume_from)
        history, earlier_s = saved.get("history", []), float(saved.get("train_wall_time_s", 0.0))
        say(f"resumed from {resume_from} at step {progress.step}")
    start = progress.step
    result = VAETrainResult(output_dir, start, start)
    generator = torch.Generator()  # the data draws are re-seeded per step; saved for the checkpoint format
    model = acc.unwrap_model(vae)
    say(
        f"VQ-f4 of {cfg.preset or config.model_config}: {sum(p.numel() for p in model.parameters()):,} "
        f"parameters; {len(source.levels)} pyramid levels, {len(source.eval_crops)} held-out crops of "
        f"{config.crop_size}²; steps {start} → {config.max_steps}"
    )

    def checkpoint() -> Path:
        metrics = _evaluate(model, source)
        record = {
            "step": progress.step,
            "history": history,
            "held_out": metrics,
            "train_wall_time_s": earlier_s + time.perf_counter() - started,
        }

        def write(staging: Path) -> None:
            if acc.is_main_process:
                acc.unwrap_model(vae).save_pretrained(staging / VAE_DIR, safe_serialization=True)
                (staging / METRICS).write_text(json.dumps(record, indent=2))

        path = save_checkpoint(
            acc, output_dir, progress, generator, write, keep=config.keep, complete=_is_vae_checkpoint
        )
        say(
            f"checkpoint {path}: held-out PSNR {metrics['psnr_db']:.2f} dB, codes used {metrics['codes_used']}"
        )
        result.checkpoints.append(path)
        return path

    window: list[float] = []
    while progress.step < config.max_steps:
        x = source.batch(config.seed, progress.step, config.batch_size).to(acc.device)
        with acc.autocast():
            out = vae(x)
            rec = out.sample.float()
            l1 = (rec - x).abs().mean()
            loss = l1 + config.codebook_weight * out.commit_loss.float().mean()
            if config.l2_weight:
                loss = loss + config.l2_weight * ((rec - x) ** 2).mean()
        acc.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.samples_seen += config.batch_size * acc.num_processes
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(
                f"--lr {config.lr}: the VQ loss became {value} at step {progress.step} (lower --lr and rerun "
                "with --resume never into a new --out)"
            )
        result.losses.append(value)
        window.append(value)
        if progress.step % config.log_every == 0 or progress.step == config.max_steps:
            mean = float(np.mean(window))
            history.append({"step": progress.step, "loss": mean, "l1": float(l1.detach())})
            say(f"step {progress.step}: loss {mean:.4f} (L1 {float(l1.detach()):.4f})")
            window.clear()
        last = progress.step >= config.max_steps
        interrupted = stop_after is not None and progress.step - start >= stop_after
        if progress.step % config.checkpoint_every == 0 or last or interrupted:
            checkpoint()
        if interrupted and not last:
            break
    result.step = progress.step
    if progress.step >= config.max_steps:
        model.eval()
        result.metrics = _evaluate(model, source)
        if acc.is_main_process:
            result.model_dir, scaling = _export(
                model, cfg, config, output_dir, progress.step, acc, crops=source.eval_crops
            )
            if scaling:
                say(
                    f"latents: std {scaling['latent_std']:.4f} on the held-out crops; the exported VQ is "
                    f"rescaled by {scaling['latent_scale']:.4f} to unit std (exact: same codes and images)"
                )
            final = {
                "step": progress.step,
                **scaling,
                "history": history,
                "held_out": result.metrics,
                "settings": config.to_dict(),
                "wall_time_s_this_run": time.perf_counter() - started,
                "train_wall_time_s": earlier_s + time.perf_counter() - started,
            }
            with atomic_path(output_dir / METRICS) as tmp:
                tmp.write_text(json.dumps(final, indent=2))
    result.wall_time_s = time.perf_counter() - started
    acc.end_training()
    return result


def _read_metrics(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / METRICS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def _export(
    vae: torch.nn.Module,
    cfg: ZoomLDMConfig,
    config: VAETrainConfig,
    output_dir: Path,
    step: int,
    acc,
    crops: torch.Tensor,
) -> tuple[Path, dict[str, float]]:
    """``<output_dir>/model``: our pipeline format with the trained VQ (UNet and Summarizer random, seeded),
    rescaled to unit latent std on ``crops`` when ``config.normalize_latents``; returns the folder and the
    scaling it applied (``latent_std`` before, ``latent_scale``)."""
    import copy

    from ..models.autoencoder import rescale_latents
    from ..models.bundle import ZoomLDMModel

    random = ZoomLDMModel.from_config(cfg, seed=config.seed)
    trained = copy.deepcopy(vae).to("cpu").float().eval()
    scaling: dict[str, float] = {}
    if config.normalize_latents and len(crops):
        std, scale = latent_scale(trained, crops)
        rescale_latents(trained, scale)
        scaling = {"latent_std": std, "latent_scale": scale}
    pipe = ZoomLDMModel(random.unet, trained, random.summarizer, cfg, {"config": cfg.preset})
    prov = {
        "weights": f"VQ-f4 trained by `zoomldm train-vae` ({step} steps); UNet and Summarizer random (seed "
        f"{config.seed}): use this model for `zoomldm prepare --checkpoint` and `model.vae`",
        "vae_training": {"step": step, "images": [str(p) for p in config.images], **scaling},
    }
    return pipe.save_pretrained(output_dir / MODEL_DIR, extra=prov), scaling
