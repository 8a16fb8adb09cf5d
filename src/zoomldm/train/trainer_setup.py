"""Steps 1-4 of :meth:`~.trainer.Trainer.fit`, the setup: accelerator and seeds, the store checked against
the model, the networks (resumed or initialised), optimisation, EMA and, on resume, the training state.

:class:`TrainerSetup` is a base class of :class:`~.trainer.Trainer`: its methods read and set the trainer's
attributes (``config``, ``output_dir``, ``accelerator``, ``resume_from``, …) as they did when they were
written in the trainer itself.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from ..errors import ConfigError
from ..fsutil import atomic_path
from .checkpointing import STATE, Progress, list_checkpoints, noise_rng_path, resolve_resume
from .runtime import _accelerator_available, _own_memory


class TrainerSetup:
    """The setup steps of :class:`~.trainer.Trainer` (see the module docstring)."""

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
        from ..models.bundle import ZoomLDMModel

        pipe = ZoomLDMModel.from_pretrained(self.resume_from)
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
