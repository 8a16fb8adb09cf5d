"""What :class:`~.trainer.Trainer` reports while it trains: the progress bar, the scalars (loss per
magnification, learning rate, throughput, memory) and the sample grids of the EMA UNet.

:class:`TrainerReporting` is a base class of :class:`~.trainer.Trainer`: its methods read the trainer's
attributes (``accelerator``, ``state``, ``config``, ``dataset``, ``ema``, …) and use its
:meth:`~.trainer.Trainer._ema_weights`, as they did when they were written in the trainer itself.
"""

from __future__ import annotations

import math

import torch
from accelerate.utils import DistributedType


class TrainerReporting:
    """The reporting of :class:`~.trainer.Trainer` (see the module docstring)."""

    # -- reporting ----------------------------------------------------------------------------------------
    def _bar(self, start: int):
        from ..progress import make_progress, progress_enabled

        if not (self.accelerator.is_main_process and progress_enabled(self.progress_bar)):
            return None
        bar = make_progress()
        bar.start()
        self._task = bar.add_task("training", total=self.config.train.max_steps, completed=start)
        return bar

    def _log_scalars(self, meter, speed, bar) -> None:
        acc, st = self.accelerator, self.state
        metrics = meter.compute(acc)
        metrics.update(speed.compute())
        metrics["lr"] = float(self.lr_scheduler.get_last_lr()[0])
        metrics["epoch"] = float(st.epoch)
        if self.ema is not None and self.ema.cur_decay_value is not None:
            metrics["ema_decay"] = float(self.ema.cur_decay_value)
        if acc.device.type == "cuda":
            metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
        if self.config.logging.trackers:
            acc.log(metrics, step=st.step)
        line = (
            f"step {st.step}: loss {metrics.get('loss', math.nan):.4f} ("
            + ", ".join(
                f"{m.name} {metrics[f'loss/{m.name}']:.3f}"
                for m in self.dataset.levels
                if f"loss/{m.name}" in metrics
            )
            + f"), lr {metrics['lr']:.3g}, {metrics['throughput/samples_per_s']:.1f} samples/s"
        )
        if bar is not None:
            bar.update(
                self._task,
                completed=st.step,
                description=f"training (loss {metrics.get('loss', math.nan):.4f})",
            )
            bar.console.print(line, markup=False, highlight=False)
        else:
            self.info(line)

    def _log_samples(self) -> None:
        """Sample grids per magnification with the EMA UNet (PNG + trackers)."""
        from ..io.images import contact_sheet, save_png
        from .monitor import fixed_samples, sample_grids

        acc, c = self.accelerator, self.config
        fsdp = acc.distributed_type == DistributedType.FSDP
        if acc.is_main_process or fsdp:  # FSDP forwards are collective: every rank runs them
            if self._sample_set is None:
                self._sample_set = fixed_samples(self.dataset, c.logging.samples_per_level)
            unwrapped = acc.unwrap_model(self.model)
            unwrapped.eval()
            try:
                with self._ema_weights(), acc.autocast():
                    sheets = sample_grids(
                        unwrapped.unet,
                        unwrapped.summarizer,
                        self.vae,
                        self.model_config.schedule,
                        self._sample_set,
                        c.logging.sample_steps,
                        c.logging.sample_guidance,
                        c.logging.sample_scheduler,
                        seed=c.seed,
                    )
            finally:
                unwrapped.train()
            if acc.is_main_process:
                step = self.state.step
                sheet = contact_sheet(list(sheets.values()), ncols=1, padding=8)
                meta = {
                    "step": step,
                    "rows": [f"{name}: stored latent decoded (top), EMA sample (bottom)" for name in sheets],
                    "steps": c.logging.sample_steps,
                    "guidance_scale": c.logging.sample_guidance,
                    "scheduler": c.logging.sample_scheduler,
                    "seed": c.seed,
                }
                save_png(self.output_dir / "samples" / f"step-{step:08d}.png", sheet, meta)
                for tracker in acc.trackers:
                    extra = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
                    if hasattr(tracker, "log_images"):
                        tracker.log_images(
                            {f"samples/{k}": v[None] for k, v in sheets.items()}, step, **extra
                        )
        acc.wait_for_everyone()
