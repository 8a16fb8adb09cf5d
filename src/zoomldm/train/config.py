"""``TrainConfig``: the training YAML, typed and validated (defaults = the authors' settings, SPEC §2.4-2.5).

A config file has the sections below; every key is optional except ``data.store``, and an unknown key is
an error that names it and lists the valid ones (a typo never silently falls back to a default)::

    output_dir: runs/brca          # checkpoints/, logs/ (TensorBoard), samples/, config.yaml
    seed: 23                       # the authors' main.py default
    model:   {config, init, checkpoint, ema, vae}
    data:    {store, levels, batch_size, num_workers, samples_per_epoch, level_weights, storage_options}
    optim:   {lr, scale_lr, betas, eps, weight_decay, warmup_steps, warmup_start, max_grad_norm,
              gradient_accumulation_steps}
    train:   {max_steps, p_uncond, snr_gamma, mixed_precision, gradient_checkpointing, compile, compile_mode, tf32}
    ema:     {enabled, decay}
    checkpoint: {every, keep, resume}
    logging: {every, trackers, project, sample_every, samples_per_level, sample_steps, sample_guidance,
              sample_scheduler}
    distributed: {strategy, find_unused_parameters, fsdp}

``configs/train_brca.yaml`` documents every key. Command-line overrides use dotted keys
(``--set optim.lr=1e-4``), parsed as YAML values.

The sections are :mod:`.config_sections`; the typed loader and the overrides :mod:`.config_parsing`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .config_parsing import _at, _build, _override_key, _Source, _unwrap_optional, apply_overrides
from .config_sections import (
    INIT_KINDS,
    PRECISIONS,
    STRATEGIES,
    TRACKERS,
    CheckpointSection,
    DataSection,
    DistributedSection,
    EMASection,
    LoggingSection,
    ModelSection,
    OptimSection,
    TrainSection,
)

__all__ = [
    "INIT_KINDS",
    "PRECISIONS",
    "STRATEGIES",
    "TRACKERS",
    "CheckpointSection",
    "DataSection",
    "DistributedSection",
    "EMASection",
    "LoggingSection",
    "ModelSection",
    "OptimSection",
    "TrainConfig",
    "TrainSection",
    "apply_overrides",
    "check_override_keys",
    "check_store",
]


@dataclass
class TrainConfig:
    """The whole training configuration (see the module docstring and ``configs/train_brca.yaml``)."""

    output_dir: str = "runs/zoomldm"
    seed: int = 23
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    ema: EMASection = field(default_factory=EMASection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | _Source = "config") -> TrainConfig:
        """Build and validate; unknown keys and wrong types raise :class:`ConfigError` naming the key."""
        cfg = _build(cls, data if data is not None else {}, "", source)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML file, apply ``key.sub=value`` overrides, validate."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:  # a binary file given as the config
            raise ConfigError(
                f"{path.name}: not a UTF-8 text YAML file (undecodable byte at position {err.start}); "
                "give a training config such as configs/train_tiny.yaml"
            ) from None
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = " ".join(p for p in (err.context, err.problem) if p) or "invalid YAML"
            raise ConfigError(f"{path.name}{where}: {what} (fix the YAML syntax there)") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path.name} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path.name}: expected a mapping of sections at the top level")
        overrides = list(overrides or [])
        check_override_keys(overrides)
        source = _Source(path.name, tuple(_override_key(o) for o in overrides))
        return cls.from_dict(apply_overrides(data, overrides), source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- validation ------------------------------------------------------------------------------------
    def validate(self, source: str | _Source = "config") -> None:
        """Value checks that need no file access (the store is checked by :func:`check_store`)."""

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{_at(source, key)}: {message}")

        m, d, o, t = self.model, self.data, self.optim, self.train
        if m.init not in INIT_KINDS:
            fail("model.init", f"{m.init!r} is not one of {', '.join(INIT_KINDS)}")
        if m.init != "scratch" and not m.checkpoint:
            fail("model.checkpoint", f"model.init: {m.init} needs a checkpoint path")
        if m.init == "scratch" and m.checkpoint:  # init omitted (default scratch) would ignore the checkpoint
            fail(
                "model.init",
                f"is scratch (the default when omitted) but model.checkpoint is set ({m.checkpoint}); set "
                "model.init to official, pretrained or compvis to start from it, or remove model.checkpoint",
            )
        if m.init in ("scratch", "compvis") and not m.config:
            fail(
                "model.config", f"model.init: {m.init} needs the architecture (a preset or the authors' yaml)"
            )
        if not d.store:
            fail("data.store", "give the store made by `zoomldm prepare` (a path or an fsspec URL)")
        for key, value, low in (
            ("data.batch_size", d.batch_size, 1),
            ("data.num_workers", d.num_workers, 0),
            ("optim.warmup_steps", o.warmup_steps, 0),
            ("optim.gradient_accumulation_steps", o.gradient_accumulation_steps, 1),
            ("train.max_steps", t.max_steps, 1),
            ("checkpoint.every", self.checkpoint.every, 1),
            ("checkpoint.keep", self.checkpoint.keep, 0),
            ("logging.every", self.logging.every, 1),
            ("logging.sample_every", self.logging.sample_every, 0),
            ("logging.samples_per_level", self.logging.samples_per_level, 1),
            ("logging.sample_steps", self.logging.sample_steps, 1),
        ):
            if value < low:
                fail(key, f"must be at least {low}, got {value}")
        if d.samples_per_epoch is not None and d.samples_per_epoch < 1:
            fail("data.samples_per_epoch", f"must be at least 1, got {d.samples_per_epoch}")
        import math

        for key, value in (
            ("optim.lr", o.lr),
            ("optim.eps", o.eps),
            ("optim.weight_decay", o.weight_decay),
            ("optim.warmup_start", o.warmup_start),
            ("optim.max_grad_norm", o.max_grad_norm),
            ("train.p_uncond", t.p_uncond),
            ("train.snr_gamma", t.snr_gamma),
            ("ema.decay", self.ema.decay),
            ("logging.sample_guidance", self.logging.sample_guidance),
        ):
            if value is not None and not math.isfinite(value):
                fail(key, f"expected a finite number, got {value}")
        if o.lr <= 0:
            fail("optim.lr", f"must be > 0, got {o.lr}")
        if o.eps <= 0 or o.weight_decay < 0:
            fail("optim", "eps must be > 0 and weight_decay >= 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            fail("optim.betas", f"expected two numbers in [0, 1), got {o.betas}")
        if not 0 < o.warmup_start <= 1:
            fail("optim.warmup_start", f"expected a factor in (0, 1], got {o.warmup_start}")
        if o.max_grad_norm is not None and o.max_grad_norm <= 0:
            fail("optim.max_grad_norm", f"must be > 0 (or null), got {o.max_grad_norm}")
        if t.snr_gamma is not None and t.snr_gamma <= 0:
            fail("train.snr_gamma", f"must be > 0 (or null for the plain ε-MSE), got {t.snr_gamma}")
        if not 0 <= t.p_uncond < 1:
            fail("train.p_uncond", f"expected a probability in [0, 1), got {t.p_uncond}")
        if t.mixed_precision not in PRECISIONS:
            fail("train.mixed_precision", f"{t.mixed_precision!r} is not one of {', '.join(PRECISIONS)}")
        if not 0 < self.ema.decay < 1:
            fail("ema.decay", f"expected a number in (0, 1), got {self.ema.decay}")
        unknown = [x for x in self.logging.trackers if x not in TRACKERS]
        if unknown:
            fail(
                "logging.trackers", f"unknown tracker {unknown[0]!r}; expected some of {', '.join(TRACKERS)}"
            )
        if self.distributed.strategy not in STRATEGIES:
            fail(
                "distributed.strategy", f"{self.distributed.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        if d.level_weights is not None and any(w < 0 for w in d.level_weights):
            fail("data.level_weights", "weights must be non-negative")
        from ..schedule import SCHEDULERS

        if self.logging.sample_scheduler.lower() not in SCHEDULERS:
            fail("logging.sample_scheduler", f"expected one of {', '.join(SCHEDULERS)}")


# -- the store against the model ------------------------------------------------------------------------
def check_store(store: str, model_config, levels: list[str | int] | None = None, storage_options=None):
    """Open the store's dataset and check it against the model: domain, magnification count, SSL width.

    Returns the :class:`~zoomldm.data.dataset.MultiScaleDataset`. Raises :class:`ConfigError` with one line
    saying what disagrees (a missing store, another domain, a model whose Summarizer has another number of
    magnification levels than the store's domain, another SSL embedding size, an empty store).
    """
    from ..data.dataset import MultiScaleDataset
    from ..errors import ZoomLDMError
    from ..scales import scales_for

    try:
        dataset = MultiScaleDataset(store, levels=levels, storage_options=storage_options)
    except ZoomLDMError as err:
        raise ConfigError(f"data.store: {err}") from None
    domain = dataset.attrs["domain"]
    store_levels = scales_for(domain)
    stored = ", ".join(m.name for m in dataset.levels)
    mag_levels = int(model_config.summarizer["mag_levels"])
    beyond = [m for m in dataset.levels if m.index >= mag_levels]
    if domain != model_config.domain or beyond:
        raise ConfigError(
            f"magnification levels disagree: the store {store} is {domain} data with levels {stored} "
            f"(of {len(store_levels)}: {store_levels.names[0]} … {store_levels.names[-1]}) but the model is "
            f"{model_config.domain} with a Summarizer of mag_levels {mag_levels}; use a model config with "
            f"mag_levels {len(store_levels)} (or select data.levels below index {mag_levels})"
        )
    if dataset.ssl_dim != model_config.ssl_channels:
        raise ConfigError(
            f"SSL width disagrees: the store's embeddings are {dataset.ssl_dim}-d "
            f"({dataset.attrs['encoder'].get('name')}) but the model's Summarizer takes "
            f"{model_config.ssl_channels} (input_channels)"
        )
    if len(dataset) == 0:
        raise ConfigError(f"data.store: {store} holds no committed samples yet (run `zoomldm prepare`)")
    return dataset


# -- overrides -----------------------------------------------------------------------------------------
def check_override_keys(overrides: list[str]) -> None:
    """Refuse an override whose key is not a config key, naming ``--set KEY`` and the valid keys."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set optim.lr=1e-4")
        key = _override_key(item)
        if not key:
            raise ConfigError(f"--set {item}: empty key")
        cls: Any = TrainConfig
        done: list[str] = []
        for part in key.split("."):
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                if typing.get_origin(cls) is dict or cls is Any:  # free-form mapping (storage_options, fsdp)
                    break
                raise ConfigError(f"--set {key}: {'.'.join(done)} is a value, not a section")
            fields = [f.name for f in dataclasses.fields(cls)]
            if part not in fields:
                where = f" of {'.'.join(done)}" if done else ""
                raise ConfigError(
                    f"--set {key}: unknown key {'.'.join([*done, part])!r}; valid keys{where}: {', '.join(fields)}"
                )
            cls = _unwrap_optional(typing.get_type_hints(cls)[part])
            done.append(part)
