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
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from ..errors import ConfigError
from ..fsutil import atomic_path
from .checkpointing import (
    STATE,
    Progress,
    list_checkpoints,
    noise_rng_path,
    resolve_resume,
    save_checkpoint,
)
from .config import TrainConfig
from .interrupt import stop_vote

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


class Trainer:
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

    # -- 1-4: setup -------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from accelerate.utils import set_seed

        from .ema import load_shadow, official_ema
        from .objective import ZoomLDMTrainingModel, training_noise_scheduler
        from .optim import build_lr_scheduler, build_optimizer

        c = self.config
        self.accelerator = acc = self._make_accelerator()
        set_seed(c.seed)
        if c.train.tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # 2-3. the store and the networks
        self.resume_from = resolve_resume(c.checkpoint.resume, self.output_dir)
        existing = list_checkpoints(self.output_dir)
        if self.resume_from is None and existing:
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints up to step {existing[-1][0]}: resume them "
                "(checkpoint.resume: auto), or train into another output_dir"
            )
        hint = self._model_config_hint()
        if hint is not None:  # fail on a bad store before loading any weights
            self._open_store(hint)
        nets = self._load_networks()
        self.model_config = nets.config
        self.dataset = self._open_store(nets.config)
        self._check_vae(nets.vae)

        unet, summarizer = nets.unet.float(), nets.summarizer.float()
        if c.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if c.train.compile:
            unet.compile(mode=c.train.compile_mode)  # in place: state-dict keys unchanged
        model = ZoomLDMTrainingModel(unet, summarizer).train()
        _own_memory(model)
        self.vae = nets.vae.to(acc.device).eval().requires_grad_(False)  # float32, as loaded
        self.noise_scheduler = training_noise_scheduler(nets.config.schedule)

        # 4. optimisation
        scale = 1.0
        if c.optim.scale_lr:
            scale = acc.num_processes * c.data.batch_size * c.optim.gradient_accumulation_steps
        optimizer = build_optimizer(model.parameters(), c.optim, scale)
        lr_scheduler = build_lr_scheduler(optimizer, c.optim)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(model, optimizer, lr_scheduler)

        unwrapped = acc.unwrap_model(self.model)
        names = [n for n, _ in unwrapped.unet.named_parameters()]
        self.ema_params = list(unwrapped.unet.parameters())
        self.ema = None
        if c.ema.enabled:
            self.ema = official_ema(self.ema_params, c.ema.decay, nets.ema_num_updates)
            if nets.ema_unet is not None:
                load_shadow(self.ema, names, nets.ema_unet)
        self.generator = torch.Generator(device=acc.device)
        from .data import derive_seed

        self.generator.manual_seed(derive_seed(c.seed, acc.process_index, 1 << 30))
        self.state = Progress(
            world_size=acc.num_processes,
            batch_size=c.data.batch_size,
            gradient_accumulation_steps=c.optim.gradient_accumulation_steps,
            seed=c.seed,
            ema_num_updates=nets.ema_num_updates,
        )
        if self.resume_from is not None:
            self._load_training_state(self.resume_from)

        from .data import TrainLoader

        self.loader = TrainLoader(
            self.dataset,
            c.data.batch_size,
            c.data.num_workers,
            c.seed,
            acc.process_index,
            acc.num_processes,
            c.data.samples_per_epoch,
            c.data.level_weights,
            pin_memory=acc.device.type == "cuda",
        )
        self._sample_set = None
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.output_dir / "config.yaml") as tmp:  # whole or absent
                tmp.write_text(c.to_yaml())
        if c.logging.trackers:
            acc.init_trackers(c.logging.project, config=_flat_hparams(c.to_dict()))
        self.info(
            f"{acc.num_processes} process(es) on {acc.device.type} ({acc.distributed_type.value}), "
            f"precision {acc.mixed_precision}; store {c.data.store}: "
            + ", ".join(
                f"{m.name} {n}" for m, n in zip(self.dataset.levels, self.dataset.counts, strict=True)
            )
            + f"; {len(self.loader)} batches of {c.data.batch_size} per epoch and process"
        )

    def _make_accelerator(self):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        c = self.config
        fsdp_plugin = None
        if c.distributed.strategy == "fsdp":
            from accelerate import FullyShardedDataParallelPlugin

            fsdp_plugin = FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **c.distributed.fsdp})
        acc = Accelerator(
            # without any accelerator device, torchrun/accelerate processes form a gloo (MULTI_CPU) group
            cpu=not _accelerator_available(),
            mixed_precision=c.train.mixed_precision,
            gradient_accumulation_steps=c.optim.gradient_accumulation_steps,
            log_with=list(c.logging.trackers) or None,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            # the official LambdaLR steps once per optimizer step whatever the number of processes;
            # accelerate's default would step it num_processes times
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=c.distributed.find_unused_parameters)
            ],
            fsdp_plugin=fsdp_plugin,
        )
        if c.distributed.strategy == "fsdp" and acc.distributed_type != DistributedType.FSDP:
            warnings.warn(
                f"distributed.strategy is fsdp but accelerate runs {acc.distributed_type.value} "
                "(FSDP needs GPU processes); training continues without sharding",
                stacklevel=2,
            )
        if c.distributed.strategy == "ddp" and acc.distributed_type == DistributedType.FSDP:
            raise ConfigError(
                "distributed.strategy is ddp but the accelerate config/environment asks for FSDP; "
                "set strategy: fsdp or use an accelerate config without FSDP"
            )
        return acc

    def _model_config_hint(self):
        """The architecture when it is known without loading weights (to check the store first)."""
        from ..config import ZoomLDMConfig

        m = self.config.model
        if self.resume_from is not None:
            import json

            meta = json.loads((self.resume_from / "zoomldm.json").read_text())
            return ZoomLDMConfig.from_dict(meta["config"])
        if m.config is not None and m.init in ("scratch", "compvis", "official"):
            return ZoomLDMConfig.resolve(m.config)
        return None

    def _open_store(self, model_config):
        from .config import check_store

        d = self.config.data
        return check_store(d.store, model_config, d.levels, d.storage_options)

    def _load_networks(self):
        from .init import InitialWeights, load_initial_weights

        if self.resume_from is None:
            weights = load_initial_weights(self.config.model, self.config.seed)
            self.init_provenance = weights.provenance
            self.info(f"initial weights: {weights.provenance}")
            return weights
        from ..pipeline import ZoomLDMPipeline

        pipe = ZoomLDMPipeline.from_pretrained(self.resume_from)
        progress = Progress.read(self.resume_from)
        ema = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
        self.init_provenance = dict(pipe.provenance.get("init", {}), resumed_from=str(self.resume_from))
        return InitialWeights(
            pipe.unet,
            pipe.summarizer,
            pipe.vae,
            pipe.config,
            ema,
            progress.ema_num_updates,
            self.init_provenance,
        )

    def _check_vae(self, vae) -> None:
        from ..data.prepare import vae_fingerprint

        stored = self.dataset.attrs.get("vae", {}).get("weights_sha256")
        if stored and stored != vae_fingerprint(vae):
            message = (
                "the VQ-f4 encoder of this model is not the one that made the store's latents: training is "
                "unaffected (it reads stored latents) but sample grids will not decode to sensible images; "
                "set model.vae to the autoencoder used by `zoomldm prepare`"
            )
            warnings.warn(message, stacklevel=2)
            self.info(f"warning: {message}")

    def _load_training_state(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        acc = self.accelerator
        acc.load_state(str(checkpoint / STATE))
        saved = Progress.read(checkpoint)
        rng = noise_rng_path(checkpoint, acc.process_index)
        if rng.is_file():
            self.generator.set_state(load_file(str(rng))["state"])
        if self.ema is not None:
            self.ema.optimization_step = saved.ema_num_updates
        changed = [
            f"{name} {getattr(saved, name)} → {getattr(self.state, name)}"
            for name in ("world_size", "batch_size", "gradient_accumulation_steps", "seed")
            if getattr(saved, name) != getattr(self.state, name)
        ]
        if changed:
            self.info(
                f"warning: resuming with other settings ({', '.join(changed)}): the run continues, but the "
                "data order and noise are no longer those of an uninterrupted run"
            )
        self.state = Progress(
            **{
                **saved.__dict__,
                **{
                    k: getattr(self.state, k)
                    for k in ("world_size", "batch_size", "gradient_accumulation_steps", "seed")
                },
            }
        )
        self.info(
            f"resumed from {checkpoint} at step {saved.step} (epoch {saved.epoch}, batch {saved.batch_in_epoch})"
        )

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
        from ..pipeline import ZoomLDMPipeline

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
        ZoomLDMPipeline(unet, self.vae, summarizer, cfg).save_pretrained(directory, extra=prov)

    # -- signals ----------------------------------------------------------------------------------------------
    def _signals(self):
        """SIGINT/SIGTERM: finish the step, save, exit; a second SIGINT aborts at once."""
        from .interrupt import stop_requests

        return stop_requests(self)


def _accelerator_available() -> bool:
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, ROCm, XPU, MPS, …
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


@torch.no_grad()
def _own_memory(module: torch.nn.Module) -> None:
    """Give every parameter and buffer its own freshly allocated, contiguous storage.

    Loaders can leave weights as views into a memory-mapped file (safetensors aligns tensors to 8 bytes
    only); CPU BLAS kernels round differently at other alignments, so a resumed run drifted from an
    uninterrupted one in the last bits (measured). Owned storage makes the numerics independent of how the
    weights were loaded, and in-place optimizer updates never touch pages of a checkpoint file.
    """
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


def _flat_hparams(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → flat ``section/key`` scalars (what TensorBoard's hparams accept)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_hparams(value, name + "/"))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out
