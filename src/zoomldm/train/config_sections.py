"""The sections of :class:`~.config.TrainConfig` (``model``, ``data``, ``optim``, ``train``, ``ema``,
``checkpoint``, ``logging``, ``distributed``) with the authors' settings as defaults, and the values some of
their keys may take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INIT_KINDS = ("scratch", "official", "pretrained", "compvis")
PRECISIONS = ("no", "fp16", "bf16")
STRATEGIES = ("auto", "ddp", "fsdp")
TRACKERS = ("tensorboard", "wandb")


@dataclass
class ModelSection:
    """What to train and where its first weights come from."""

    #: architecture: a preset (brca, naip, tiny, tiny-naip) or the authors' yaml. Required for ``scratch``
    #: and ``compvis``; for ``official`` optional (else the yaml beside the checkpoint, or recognised).
    config: str | None = None
    #: scratch | official (a ZoomLDM .ckpt: fine-tuning) | pretrained (our format) | compvis (the ImageNet
    #: LDM cin256-v2 checkpoint the authors started from: UNet (+ VQ-f4) only, class embedder dropped)
    init: str = "scratch"
    checkpoint: str | None = None
    #: compvis only: take the checkpoint's EMA UNet (``model_ema.*``) instead of its live weights
    ema: bool = False
    #: the (frozen) VQ-f4 to use instead of the one ``init`` provides (scratch: random; compvis: the
    #: checkpoint's, else random): our format dir or an official .ckpt (+ model.config). It only decodes
    #: sample grids and is saved with checkpoints; it must be the VQ that made the store's latents.
    vae: str | None = None


@dataclass
class DataSection:
    """The store made by ``zoomldm prepare`` and how it is read."""

    store: str = ""
    #: magnifications to train on (names or indices; default: all levels in the store)
    levels: list[str | int] | None = None
    #: samples per process per step (the authors: 420 per GPU for BRCA, 400 for NAIP)
    batch_size: int = 32
    num_workers: int = 4
    #: draws per epoch over all processes (default: the store's sample count); epochs only set the
    #: sampler's seed, as the authors' loader draws magnification-first at random (SPEC §1.5)
    samples_per_epoch: int | None = None
    #: probability per stored level (default uniform: the official magnification-balanced sampling)
    level_weights: list[float] | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSection:
    """AdamW with the official linear warm-up (SPEC §2.5)."""

    lr: float = 2.0e-5
    #: multiply lr by processes × batch_size × accumulation (the authors' ``--scale_lr``; off by default)
    scale_lr: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    weight_decay: float = 0.01
    #: LambdaLinearScheduler: the lr factor rises linearly from warmup_start to 1 over warmup_steps
    warmup_steps: int = 1000
    warmup_start: float = 1.0e-6
    #: gradient-norm clipping (None: none, as the authors)
    max_grad_norm: float | None = None
    gradient_accumulation_steps: int = 1


@dataclass
class TrainSection:
    """The loop."""

    max_steps: int = 100_000
    #: classifier-free dropout of the Summarizer output (zeros = unconditional)
    p_uncond: float = 0.1
    #: Min-SNR-γ loss weighting (``train.objective.min_snr_weights``; e.g. 5); null: the authors' plain ε-MSE
    snr_gamma: float | None = None
    #: no | fp16 | bf16 (autocast via accelerate; master weights stay float32)
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    #: torch.compile the UNet (nn.Module.compile: state-dict keys unchanged)
    compile: bool = False
    compile_mode: str | None = None
    #: allow TF32 matmuls on Ampere+ GPUs (only matters with mixed_precision: no)
    tf32: bool = True


@dataclass
class EMASection:
    """EMA of the UNet only (the Summarizer has none), decay ``min(decay, (1+n)/(10+n))``."""

    enabled: bool = True
    decay: float = 0.9999


@dataclass
class CheckpointSection:
    """Checkpoints in our format (+ training_state/ for an exact resume)."""

    every: int = 5000
    #: number of checkpoints kept (oldest deleted first); 0 keeps all
    keep: int = 3
    #: auto (continue from the newest checkpoint in output_dir, if any) | never | a checkpoint path
    resume: str = "auto"


@dataclass
class LoggingSection:
    """Scalars every ``every`` steps; sample grids every ``sample_every`` steps (0 = never)."""

    every: int = 50
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    project: str = "zoomldm"
    sample_every: int = 5000
    samples_per_level: int = 4
    sample_steps: int = 50
    sample_guidance: float = 2.0
    sample_scheduler: str = "ddim"


@dataclass
class DistributedSection:
    """How the processes started by ``accelerate launch`` / ``torchrun`` share the work."""

    #: auto (whatever ``accelerate config`` says; DDP when several processes) | ddp | fsdp
    strategy: str = "auto"
    #: DDP: the Summarizer's pad token is unused in a batch of 8×8 grids only
    find_unused_parameters: bool = True
    #: extra ``accelerate.FullyShardedDataParallelPlugin`` arguments for ``strategy: fsdp``
    fsdp: dict[str, Any] = field(default_factory=dict)
