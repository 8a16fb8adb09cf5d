"""The CDM trainer (accelerate): a DiT learns the Summarizer's tokens of a prepared store (SPEC §6).

:meth:`CDMTrainer.fit` in the order of the authors' ``cdm_dit/train_cdm.py``:

1. accelerator (mixed precision, one process to many) and seeds;
2. the frozen Summarizer of a trained or official ZoomLDM (any ``ZoomLDMModel.from_pretrained``
   source), and the store ``zoomldm prepare`` made for it (checked against it);
3. the DiT (``--model``, DiT-B by default) sized to the Summarizer's width and levels, its EMA copy
   (decay 0.9999 from the first step, no warm-up: the authors' ``update_ema``), AdamW(lr 1e-4,
   weight decay 0, constant); on resume, live weights + optimizer + RNG (``accelerator.load_state``), the
   EMA, the noise generator and the data position;
4. the loop: tokens = Summarizer(grid, magnification) under no_grad (magnifications drawn uniformly per
   sample, as in LDM training), loss = MSE(x̂0) + VB (:class:`~zoomldm.models.cdm_diffusion.CDMDiffusion`),
   EMA update; atomic checkpoints ``checkpoints/step-XXXXXXXX/{cdm/, training_state/}``, where ``cdm/`` is
   the EMA model in our format (``ConditioningDiT.from_pretrained`` / :func:`~zoomldm.models.cdm.load_cdm`).
   SIGINT/SIGTERM finish the step, save and exit; rerunning the same command resumes exactly.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ZoomLDMError
from ..fsutil import atomic_path
from .checkpointing import (
    CHECKPOINTS,
    PROGRESS,
    STATE,
    Progress,
    list_checkpoints,
    noise_rng_path,
    save_checkpoint,
)
from .interrupt import stop_vote

CDM_DIR = "cdm"
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class CDMTrainConfig:
    """Settings of ``zoomldm train-cdm``; defaults are the authors' (``train_cdm.py``) except
    ``vb_through_trunk`` (see its comment)."""

    store: str
    zoomldm: str  # the ZoomLDM whose (frozen) Summarizer defines the tokens: our dir, official file, hub id
    output_dir: str
    zoomldm_config: str | None = None  # preset or yaml for an official checkpoint
    model: str = "DiT-B"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"depth": 2, "hidden_size": 64, ...}
    max_steps: int = 400_000
    batch_size: int = 256  # global, over all processes (the authors' --global-batch-size)
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50_000
    keep_checkpoints: int = 0  # 0 keeps all
    log_every: int = 100
    num_workers: int = 4
    levels: list[str] | None = None
    resume: str | None = "auto"  # auto, never, or a checkpoint / output directory
    tf32: bool = True
    # the authors let the VB term's gradient reach the DiT trunk; off here because it spoils x̂0 at small
    # t (models.cdm_diffusion.CDMDiffusion has the measurement); True reproduces their training exactly
    vb_through_trunk: bool = False

    def validate(self, world_size: int = 1) -> None:
        from ..models.cdm import CDM_PRESETS

        if self.model not in CDM_PRESETS:
            raise ConfigError(f"--model must be one of {', '.join(CDM_PRESETS)}, got {self.model!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        for name in ("max_steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by {world_size} processes")
        # written so that NaN fails too (every comparison with NaN is false)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay: expected a number in [0, 1), got {self.ema_decay}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr: expected a finite number > 0, got {self.lr}")


@dataclass
class CDMTrainResult:
    output_dir: Path
    step: int
    start_step: int
    losses: list[float] = field(default_factory=list)  # mean loss per step on this process
    checkpoints: list[Path] = field(default_factory=list)
    interrupted: bool = False


# ------------------------------------------------------------------------------------------------
# checkpoints of a CDM run (complete = cdm/config.json and training_state/progress.json)
# ------------------------------------------------------------------------------------------------
def _complete(path: Path) -> bool:
    return (path / CDM_DIR / "config.json").is_file() and (path / STATE / PROGRESS).is_file()


def list_cdm_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete CDM checkpoints of a run, oldest first."""
    return [path for _, path in list_checkpoints(output_dir, complete=_complete)]


def resolve_cdm_resume(spec: str | None, output_dir: str | Path) -> Path | None:
    if spec in (None, "never"):
        return None
    if spec == "auto":
        found = list_cdm_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if (path / CHECKPOINTS).is_dir():
        found = list_cdm_checkpoints(path)
        if not found:
            raise ZoomLDMError(f"resume: {path} has no complete CDM checkpoint")
        return found[-1]
    if not _complete(path):
        raise ZoomLDMError(
            f"resume: {path} is not a complete CDM checkpoint (expected {CDM_DIR}/ and {STATE}/)"
        )
    return path


class CDMTrainer:
    """Train a :class:`~zoomldm.models.cdm.ConditioningDiT` from a :class:`CDMTrainConfig`."""

    def __init__(
        self, config: CDMTrainConfig, log: Callable[[str], None] | None = None, progress: bool = True
    ) -> None:
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._log = log or (lambda line: None)
        self.progress = progress
        self._stop_requested = False

    def info(self, line: str) -> None:
        if self.accelerator.is_main_process:
            self._log(line)

    def request_stop(self) -> None:
        self._stop_requested = True

    def fit(self) -> CDMTrainResult:
        self._setup()
        try:
            with self._signals():
                return self._loop()
        finally:
            self.accelerator.end_training()

    # -- 1-3 ----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from safetensors.torch import load_file

        from ..models.bundle import ZoomLDMModel
        from ..models.cdm import ConditioningDiT
        from ..models.cdm_diffusion import CDMDiffusion
        from .config import check_store
        from .data import TrainLoader, derive_seed

        c = self.config
        self.accelerator = acc = Accelerator(mixed_precision=c.mixed_precision)
        c.validate(acc.num_processes)
        set_seed(c.seed)
        if c.tf32 and torch.cuda.is_available():  # the authors enable TF32
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # 2. the frozen Summarizer and its store
        self.resume_from = resolve_cdm_resume(c.resume, self.output_dir)
        pipe = ZoomLDMModel.from_pretrained(c.zoomldm, c.zoomldm_config)
        self.summarizer = pipe.summarizer.float().to(acc.device).eval().requires_grad_(False)
        self.dataset = check_store(c.store, pipe.config, c.levels)
        self.source = {"zoomldm": str(c.zoomldm), "provenance": pipe.provenance}
        del pipe  # UNet and VQ are not needed

        # 3. the DiT, its EMA, the optimizer, the noise generator, the data
        width, levels = self.summarizer.config.hidden_channels, self.summarizer.config.mag_levels
        torch.manual_seed(c.seed)
        model = ConditioningDiT.from_preset(
            c.model, **{**c.model_overrides, "token_dim": width, "num_magnifications": levels}
        ).train()
        if c.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.ema = copy.deepcopy(model).eval().requires_grad_(False).to(acc.device)
        if self.resume_from is not None:
            self.ema.load_state_dict(ConditioningDiT.from_pretrained(self.resume_from / CDM_DIR).state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.diffusion = CDMDiffusion(vb_through_trunk=c.vb_through_trunk)
        self.generator = torch.Generator(device=acc.device).manual_seed(
            derive_seed(c.seed, acc.process_index, 1 << 30)
        )
        per_rank = c.batch_size // acc.num_processes
        self.loader = TrainLoader(
            self.dataset, per_rank, c.num_workers, c.seed, acc.process_index, acc.num_processes,
            pin_memory=acc.device.type == "cuda",
        )  # fmt: skip
        self.state = Progress(world_size=acc.num_processes, batch_size=per_rank, seed=c.seed)
        if self.resume_from is not None:
            acc.load_state(str(self.resume_from / STATE))
            saved = Progress.read(self.resume_from)
            if (saved.world_size, saved.batch_size, saved.seed) != (acc.num_processes, per_rank, c.seed):
                self.info(
                    "warning: resuming with another process count, batch size or seed: not an exact resume"
                )
            self.state = Progress(
                **{**saved.__dict__, "world_size": acc.num_processes, "batch_size": per_rank, "seed": c.seed}
            )
            rng = noise_rng_path(self.resume_from, acc.process_index)
            if rng.is_file():
                self.generator.set_state(load_file(str(rng))["state"])
            self.info(f"resumed from {self.resume_from} at step {self.state.step}")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.output_dir / "cdm_config.json") as tmp:  # whole or absent
                tmp.write_text(json.dumps(asdict(c), indent=2))
        params = sum(p.numel() for p in model.parameters())
        self.info(
            f"{c.model} ({params / 1e6:.1f}M parameters, tokens 65×{width}, {levels} levels) on "
            f"{acc.num_processes} process(es), {acc.device.type}, precision {acc.mixed_precision}; store {c.store}: "
            + ", ".join(
                f"{m.name} {n}" for m, n in zip(self.dataset.levels, self.dataset.counts, strict=True)
            )
        )

    # -- 4 ------------------------------------------------------------------------------------------
    def _loop(self) -> CDMTrainResult:
        from ..progress import make_progress, progress_enabled

        c, acc, st = self.config, self.accelerator, self.state
        result = CDMTrainResult(self.output_dir, st.step, st.step)
        if st.step >= c.max_steps:
            self.info(f"nothing to do: step {st.step} ≥ max_steps {c.max_steps}")
            return result
        live = list(acc.unwrap_model(self.model).parameters())
        shadow = list(self.ema.parameters())
        bar = make_progress() if acc.is_main_process and progress_enabled(self.progress) else None
        task = bar.add_task("training the CDM", total=c.max_steps, completed=st.step) if bar else None
        if bar:
            bar.start()
        try:
            while True:
                if st.batch_in_epoch >= len(self.loader):
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                for batch in self.loader.batches(st.epoch, skip=st.batch_in_epoch):
                    st.batch_in_epoch += 1
                    loss = self._step(batch)
                    with torch.no_grad():  # EMA: ema ← decay·ema + (1 − decay)·live
                        torch._foreach_lerp_(shadow, live, 1 - c.ema_decay)
                    st.step += 1
                    st.samples_seen += c.batch_size
                    result.losses.append(loss)
                    stop = stop_vote(self.accelerator, self._stop_requested)
                    last = st.step >= c.max_steps
                    if bar:
                        bar.update(task, completed=st.step, description=f"training the CDM (loss {loss:.4f})")
                    if st.step % c.log_every == 0 or last:
                        self.info(f"step {st.step}: loss {loss:.4f}")
                    if st.step % c.checkpoint_every == 0 or last or stop:
                        result.checkpoints.append(self.save_checkpoint())
                    if last or stop:
                        result.step = st.step
                        result.interrupted = stop and not last
                        return result
        finally:
            if bar:
                bar.stop()

    def _step(self, batch: dict[str, Any]) -> float:
        acc = self.accelerator
        device = acc.device
        grids = [g.to(device, non_blocking=True) for g in batch["ssl"]]
        mag = batch["mag"].to(device)
        with torch.no_grad(), acc.autocast():
            tokens = self.summarizer(grids, mag).float()  # frozen, p_uncond 0: the CDM's data
        with acc.autocast():
            loss = self.diffusion.training_losses(self.model, tokens, mag, generator=self.generator)[
                "loss"
            ].mean()
        acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``checkpoints/step-…/{cdm/ (EMA, our format), training_state/}``, published atomically
        (:func:`~.checkpointing.save_checkpoint`)."""
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.state,
            self.generator,
            self._write_cdm,
            keep=self.config.keep_checkpoints,
            complete=_complete,
            log=self.info,
        )

    def _write_cdm(self, staging: Path) -> None:
        """``cdm/``: the EMA model in our format (safetensors + config.json) and its provenance (main process)."""
        if not self.accelerator.is_main_process:
            return
        self.ema.save_pretrained(staging / CDM_DIR)
        (staging / CDM_DIR / "provenance.json").write_text(
            json.dumps(
                {
                    "step": self.state.step,
                    "weights": "ema",
                    "ema_decay": self.config.ema_decay,
                    **self.source,
                },
                indent=2,
                default=str,
            )
        )

    def _signals(self):
        """SIGINT/SIGTERM: finish the step, save, exit; a second SIGINT aborts at once."""
        from .interrupt import stop_requests

        return stop_requests(self)
