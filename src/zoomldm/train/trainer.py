"""The ZoomLDM trainer (accelerate): one process on CPU or a GPU, or many under ``accelerate launch`` / torchrun.

:meth:`Trainer.fit` reads as the method's steps:

1. accelerator (mixed precision, accumulation, DDP or FSDP, trackers) and seeds;
2. the store, checked against the model (domain, magnification count, SSL width);
3. the networks: resumed from a checkpoint, or initialised (:mod:`.init`); the VQ-f4 is frozen and only
   decodes sample grids (training reads stored latents);
4. AdamW + the official warm-up, ``accelerator.prepare``; the EMA of the UNet; on resume,
   ``accelerator.load_state`` (live weights, optimizer, scheduler, RNG) + EMA + noise generator + data
   position;
5. the loop: ε-MSE (:mod:`.objective`), EMA update per optimizer step, scalars, sample grids, atomic
   checkpoints; SIGINT/SIGTERM finish the step, save and exit.

Distributed work is accelerate's (DDP gradient all-reduce, FSDP sharding, ``save_state``); the only
collective of our own is the per-step "stop requested?" vote (:func:`.interrupt.stop_vote`), so that all
ranks stop at the same step.

Steps 1-4 are :class:`.trainer_setup.TrainerSetup` and the reporting (progress bar, scalars, sample grids)
:class:`.trainer_reporting.TrainerReporting`, the base classes of :class:`Trainer`; the loop, the
checkpoints and the signals are here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from .checkpointing import save_checkpoint
from .config import TrainConfig
from .interrupt import stop_vote
from .runtime import _accelerator_available, _own_memory  # noqa: F401 (their home was this module)
from .trainer_reporting import TrainerReporting
from .trainer_setup import TrainerSetup, _flat_hparams  # noqa: F401 (its home was this module)

StepCallback = Callable[["Trainer", int], None]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did."""

    output_dir: Path
    step: int  # optimizer steps done in total (including before a resume)
    start_step: int  # the step this run started from (0, or the resumed checkpoint's)
    losses: list[float] = field(default_factory=list)  # this process's mean loss per micro-batch
    checkpoints: list[Path] = field(default_factory=list)  # written by this run
    interrupted: bool = False  # stopped by SIGINT/SIGTERM (after saving)


class Trainer(TrainerSetup, TrainerReporting):
    """Train ZoomLDM (UNet + Summarizer) from a :class:`TrainConfig`.

    Args:
        config: the validated configuration.
        log: receives human-readable lines (main process only); default: discard.
        progress: show a rich progress bar (main process, when stderr is a terminal).
        callbacks: ``callback(trainer, step)`` after every optimizer step (all processes).
    """

    def __init__(
        self,
        config: TrainConfig,
        log: Callable[[str], None] | None = None,
        progress: bool = True,
        callbacks: list[StepCallback] | None = None,
    ) -> None:
        self.config = config
        self._log = log or (lambda line: None)
        self.progress_bar = progress
        self.callbacks = list(callbacks or [])
        self.output_dir = Path(config.output_dir)
        self._stop_requested = False

    # ------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run (or continue) training until ``train.max_steps``; returns a :class:`TrainResult`."""
        try:
            self._setup()
            with self._signals():
                return self._loop()
        finally:
            if getattr(self, "accelerator", None) is not None:
                self.accelerator.end_training()  # closes the trackers

    def request_stop(self) -> None:
        """Ask the loop to stop after the current step (saving a checkpoint); what SIGINT does."""
        self._stop_requested = True

    def info(self, line: str) -> None:
        if self.accelerator.is_main_process:
            self._log(line)

    # -- 5: the loop ------------------------------------------------------------------------------------
    def _loop(self) -> TrainResult:
        from .data import to_device
        from .monitor import LossMeter, Throughput
        from .objective import diffusion_loss

        c, acc, st = self.config, self.accelerator, self.state
        result = TrainResult(self.output_dir, st.step, st.step)
        if st.step >= c.train.max_steps:
            self.info(f"nothing to do: step {st.step} ≥ train.max_steps {c.train.max_steps}")
            return result
        meter = LossMeter(self.dataset.levels, acc.device)
        speed = Throughput()
        pending: list[torch.Tensor] = []
        p_uncond = c.train.p_uncond
        samples_per_batch = c.data.batch_size * acc.num_processes
        bar = self._bar(st.step)
        stop = False
        while not stop:
            if st.batch_in_epoch >= len(self.loader):
                st.epoch, st.batch_in_epoch = st.epoch + 1, 0
            for batch in self.loader.batches(st.epoch, skip=st.batch_in_epoch):
                st.batch_in_epoch += 1
                b = to_device(batch, acc.device)
                with acc.accumulate(self.model):
                    per_sample = diffusion_loss(
                        self.model,
                        self.noise_scheduler,
                        b["latent"],
                        b["ssl"],
                        b["mag"],
                        p_uncond,
                        self.generator,
                        c.train.snr_gamma,
                    )
                    loss = per_sample.mean()
                    acc.backward(loss)
                    if acc.sync_gradients and c.optim.max_grad_norm is not None:
                        acc.clip_grad_norm_(self.model.parameters(), c.optim.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                meter.update(per_sample, b["mag"])
                pending.append(loss.detach())
                speed.add(samples_per_batch)
                st.samples_seen += samples_per_batch
                if not acc.sync_gradients:
                    continue
                # one optimizer step done
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.step(self.ema_params)
                    st.ema_num_updates = self.ema.optimization_step
                st.step += 1
                speed.add(0, 1)
                for callback in self.callbacks:
                    callback(self, st.step)
                stop = stop_vote(self.accelerator, self._stop_requested)
                last = st.step >= c.train.max_steps
                if st.step % c.logging.every == 0 or last or stop:
                    result.losses.extend(torch.stack(pending).float().cpu().tolist())
                    pending.clear()
                    self._log_scalars(meter, speed, bar)
                # sample grids and checkpoints are not training: keep their time out of samples/s
                if c.logging.sample_every and (st.step % c.logging.sample_every == 0 or last):
                    with speed.paused():
                        self._log_samples()
                if st.step % c.checkpoint.every == 0 or last or stop:
                    with speed.paused():
                        result.checkpoints.append(self.save_checkpoint())
                if last:
                    stop = True
                if stop:
                    break
        if pending:
            result.losses.extend(torch.stack(pending).float().cpu().tolist())
        if bar is not None:
            bar.stop()
        result.step = st.step
        result.interrupted = self._stop_requested and st.step < c.train.max_steps
        if result.interrupted:
            self.info(f"stopped at step {st.step}; checkpoint saved. Rerun the same command to resume.")
        return result

    # -- the EMA weights (sample grids, checkpoints) ------------------------------------------------------
    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[None]:
        """Swap the EMA weights into the UNet (bit-exact restore afterwards)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.ema_params)
        self.ema.copy_to(self.ema_params)
        try:
            yield
        finally:
            self.ema.restore(self.ema_params)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-…`` atomically (:func:`~.checkpointing.save_checkpoint`); returns its path.

        Besides ``training_state/`` it holds our pipeline format (:meth:`_export_pipeline`: EMA UNet, live
        Summarizer, VQ-f4), which ``save_pretrained`` renames into the staging directory itself.
        """
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.state,
            self.generator,
            self._export_pipeline,
            keep=self.config.checkpoint.keep,
            log=self.info,
        )

    def _export_pipeline(self, directory: Path) -> None:
        """Our format with the EMA UNet and the live Summarizer (main process writes; FSDP gathers)."""
        from ..models import Summarizer, build_unet
        from ..models.bundle import ZoomLDMModel

        acc = self.accelerator
        fsdp = acc.distributed_type == DistributedType.FSDP
        with self._ema_weights():
            if fsdp:
                state = acc.get_state_dict(self.model)  # collective; full state on the main process
            else:
                state = acc.unwrap_model(self.model).state_dict() if acc.is_main_process else None
            if acc.is_main_process:
                state = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in state.items()}
        if not acc.is_main_process:
            return
        cfg = self.model_config
        with torch.device("meta"):
            unet, summarizer = build_unet(cfg.unet), Summarizer(**cfg.summarizer)
        for prefix, module in (("unet.", unet), ("summarizer.", summarizer)):
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True, assign=True)
        prov = {
            "step": self.state.step,
            "unet": "ema" if self.ema is not None else "live",
            "ema_num_updates": self.state.ema_num_updates,
            "init": self.init_provenance,
            "store": self.config.data.store,
        }
        ZoomLDMModel(unet, self.vae, summarizer, cfg).save_pretrained(directory, extra=prov)

    # -- signals ----------------------------------------------------------------------------------------------
    def _signals(self):
        """SIGINT/SIGTERM: finish the step, save, exit; a second SIGINT aborts at once."""
        from .interrupt import stop_requests

        return stop_requests(self)
