"""The options that ``zoomldm generate`` and ``zoomldm superres`` (:mod:`.large`) share: one table of them
(:func:`_shared_options`, with the official values as defaults), their values with what both commands build
from them (:class:`LargeImageOptions`: the model, the settings, the plan), and the decorator that gives a
command those options (:func:`with_large_image_options`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ..devices import resolve_rank_device  # cuda:LOCAL_RANK under torchrun: blocks are sharded over ranks
from .core import (
    CHECKPOINT_ENV,
    COMPILE_OPTION,
    DEFAULT_CHECKPOINT,
    OPTIMIZE_OPTION,
    apply_speed_settings,
)


def _shared_options(inner_steps: int, inner_help: str) -> list[tuple[str, Any, Any]]:
    """``(name, type, typer option)`` of every option both commands take, in --help order; the defaults are
    the official values (only the Newton iterations differ: 10 for joint sampling, 5 in the SR notebook)."""
    opt = typer.Option
    return [
        (
            "checkpoint",
            str | None,
            opt(
                None,
                "--checkpoint",
                help="model dir, official file or hub id "
                f"(default ${CHECKPOINT_ENV} or {DEFAULT_CHECKPOINT})",
            ),
        ),
        ("config", str | None, opt(None, "--config", "-c", help="preset or yaml for an official checkpoint")),
        (
            "schedule",
            str,
            opt(
                "official",
                "--schedule",
                help="official (the defaults below) or fast (stride 100: 10 steps, 5 Newton iterations; a "
                "cost/constraint trade-off, docs/large_images.md); --stride/--inner-steps given override it",
            ),
        ),
        (
            "dry_run",
            bool,
            opt(
                False,
                "--dry-run",
                help="print the plan (cascade, tiles, blocks, UNet rows, VQ passes, disk, peak host/GPU "
                "memory, time) without loading weights or sampling; exit 2 if disk or memory would not do",
            ),
        ),
        ("t0", int, opt(1000, "--t0", help="first timestep of constrained sampling")),
        ("stride", int, opt(50, "--stride", help="timestep stride (20 steps for 1000/50)")),
        (
            "guidance_w",
            float,
            opt(2.0, "--guidance-w", help="w in (w+1)·e_c − w·e_u (w = 2 is s = 3, official)"),
        ),
        ("fd_step", float, opt(0.005, "--fd-step", help="finite-difference step h of the Newton JVPs")),
        ("newton_lr", float, opt(0.5, "--newton-lr", help="Newton update rate")),
        ("inner_steps", int, opt(inner_steps, "--inner-steps", help=inner_help)),
        (
            "tile_batch",
            str,
            opt(
                "16",
                "--tile-batch",
                help="tiles per batch (2 UNet rows each: cond + uncond), or auto: as many as fit in the "
                "free GPU memory (measured; 16 on a CPU)",
            ),
        ),
        (
            "colab_update",
            bool,
            opt(
                False,
                "--colab-update",
                help="Colab notebook outer update √(1−ā_prev)·ε (default: variance preserving)",
            ),
        ),
        (
            "newton_max_t",
            int,
            opt(
                1000,
                "--newton-max-t",
                help="Newton iterations only at outer steps with t ≤ this (default 1000: every step, "
                "official); a small model keeps tissue with late iterations only",
            ),
        ),
        ("no_postprocess", bool, opt(False, "--no-postprocess", help="skip seam removal")),
        ("post_t0", int, opt(300, "--post-t0", help="post-processing re-noising timestep")),
        ("post_stride", int, opt(50, "--post-stride", help="post-processing timestep stride")),
        ("post_guidance_w", float, opt(2.0, "--post-guidance-w", help="post-processing guidance g")),
        (
            "post_window",
            int | None,
            opt(None, "--post-window", help="window in latent px (default: one tile, 64)"),
        ),
        (
            "post_window_stride",
            int | None,
            opt(None, "--post-window-stride", help="window stride in latent px (default 16)"),
        ),
        ("post_interp", str, opt("slerp", "--post-interp", help="slerp (official) or linear")),
        ("window_batch", int, opt(16, "--window-batch", help="post-processing windows per UNet call")),
        (
            "post_live_weights",
            bool,
            opt(False, "--post-live-weights", help="post-process with the live UNet (official quirk)"),
        ),
        ("decode_batch", int, opt(16, "--decode-batch", help="VQ windows decoded at once")),
        (
            "decode_stride",
            int | None,
            opt(
                None,
                "--decode-stride",
                help="decode window stride in latent px (default: a quarter window, 16 = official; "
                "32 decodes 3.4× fewer windows, still overlapping)",
            ),
        ),
        ("inversion_steps", int, opt(200, "--inversion-steps", help="condition-inversion Adam steps")),
        ("inversion_lr", float, opt(0.1, "--inversion-lr", help="condition-inversion Adam learning rate")),
        ("sim_weight", float, opt(0.05, "--sim-weight", help="weight of the token-similarity term")),
        ("seed", int, opt(0, "--seed")),
        ("device", str, opt("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:1, …")),
        (
            "dtype",
            str,
            opt("float32", "--dtype", help="float32, float16 or bfloat16 (UNet, Summarizer; VQ on GPU)"),
        ),
        ("live", bool, opt(False, "--live", help="sample with the live UNet weights instead of EMA")),
        ("optimize", bool | None, OPTIMIZE_OPTION),
        ("compile", str | None, COMPILE_OPTION),
        ("no_resume", bool, opt(False, "--no-resume", help="ignore and do not write the resume state")),
        (
            "overwrite",
            bool,
            opt(False, "--overwrite", help="replace an existing output (default: refuse it)"),
        ),
        (
            "compression",
            str,
            opt("jpeg", "--compression", help="TIFF tiles: jpeg (quality 90), zlib (lossless), none"),
        ),
    ]


@dataclass
class LargeImageOptions:
    """The values of the shared options (:func:`_shared_options`) and what both commands build from them."""

    checkpoint: str | None
    config: str | None
    schedule: str
    dry_run: bool
    t0: int
    stride: int
    guidance_w: float
    fd_step: float
    newton_lr: float
    inner_steps: int
    tile_batch: str
    colab_update: bool
    newton_max_t: int
    no_postprocess: bool
    post_t0: int
    post_stride: int
    post_guidance_w: float
    post_window: int | None
    post_window_stride: int | None
    post_interp: str
    window_batch: int
    post_live_weights: bool
    decode_batch: int
    decode_stride: int | None
    inversion_steps: int
    inversion_lr: float
    sim_weight: float
    seed: int
    device: str
    dtype: str
    live: bool
    optimize: bool | None
    compile: str | None
    no_resume: bool
    overwrite: bool
    compression: str
    #: the options given on the command line (the rest have their default values): a --schedule preset
    #: sets only the options not given
    given: frozenset[str] = frozenset()
    #: the checkpoint the plan read (:func:`_checkpoint`)
    resolved_checkpoint: str | None = None

    def load(self):
        """Resolve the device and load the pipeline (EMA unless ``--live``): ``(checkpoint id, pipeline)``."""
        from ..pipeline import ZoomLDMPipeline

        self.device = resolve_rank_device(self.device)
        from .core import model_checkpoint  # the package's one default-model rule (checkpoints.default)

        if self.resolved_checkpoint is None:  # once per run: its offline note is printed once
            self.resolved_checkpoint = model_checkpoint(self.checkpoint)
        ckpt = self.resolved_checkpoint
        pipe = ZoomLDMPipeline.from_pretrained(
            ckpt, config=self.config, ema=not self.live, device=self.device, dtype=self.dtype
        )
        return ckpt, pipe

    def live_unet_and_speed(self, ckpt: str, pipe):
        """The live UNet when post-processing asks for it (else None), after applying the speed settings to
        the pipeline and to that UNet. Called once the request is validated."""
        from ..pipeline import ZoomLDMPipeline

        live_unet = None
        if self.post_live_weights:
            live_unet = ZoomLDMPipeline.from_pretrained(
                ckpt, config=self.config, ema=False, device=self.device, dtype=self.dtype
            ).unet
        apply_speed_settings(pipe, self.optimize, self.compile, unet=live_unet)
        return live_unet

    def sampling_options(self) -> dict[str, Any]:
        """The settings as the pipeline methods take them (by option name; see
        :func:`zoomldm.sampling.settings.large_image_settings`) and the run options."""
        from ..sampling.settings import FLAGS, OPTIONS, schedule_options

        preset = schedule_options(self.schedule)
        values = {name: getattr(self, name) for name in (*OPTIONS, *FLAGS)}
        values = {k: v for k, v in values.items() if k not in preset or k in self.given}  # the preset's value
        values["tile_batch"] = _parse_tile_batch(self.tile_batch)
        run = dict(
            seed=self.seed,
            compression=self.compression,
            resume=not self.no_resume,
            overwrite=self.overwrite,
            schedule=self.schedule,
        )
        return dict(values, **run)

    def plan(self, command: str, out: Path | None, **request: Any):
        """The run's plan (:func:`zoomldm.sampling.plan.plan_large`) from the configuration only: printed
        and checked with ``--dry-run`` (then exit), otherwise only checked, so that a run whose disk or
        memory would not suffice is refused before the model is loaded."""
        from ..sampling.plan import plan_large

        options = self.sampling_options()
        for name in ("seed", "resume", "overwrite"):
            options.pop(name)
        plan = plan_large(
            _checkpoint(self),
            command=command,
            config=self.config,
            out=out,
            device=str(resolve_rank_device(self.device)),
            dtype=self.dtype,
            live_weights=self.post_live_weights,
            calibrate=self.dry_run,
            trace=self.dry_run,  # a real run checks lower bounds: no network runs before its inputs are read
            **request,
            **options,
        )
        if self.dry_run:
            for line in plan.lines():
                typer.echo(line)
            plan.check()
            raise typer.Exit(0)
        plan.check()
        return plan


def with_large_image_options(inner_steps: int, inner_help: str) -> Callable[[Callable], Callable]:
    """Give a command the shared options: its own parameters stay as written, a final ``opts`` parameter is
    replaced by the shared ones in its signature (what typer reads), and their values reach it as a
    :class:`LargeImageOptions`. Why: typer reads options from the signature only, and the two commands share
    32 of them; written out twice (and collected twice) every change had to be made in four places."""
    shared = _shared_options(inner_steps, inner_help)
    names = [name for name, _, _ in shared]

    def wrap(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "opts"]
        extra = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t)
            for n, t, o in shared
        ]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            opts = LargeImageOptions(**{name: kwargs.pop(name) for name in names}, given=_given(names))
            return func(**kwargs, opts=opts)

        params = own + extra
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must see the merged signature, not the wrapped one's
        return command

    return wrap


def _given(names: list[str]) -> frozenset[str]:
    """The options among ``names`` that the command line set (the parameter source of the running
    command's context), so that a ``--schedule`` preset does not override them but does override the
    defaults. Outside a command line every option counts as given."""
    ctx = _current_context()
    if ctx is None:
        return frozenset(names)
    given = set()
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return frozenset(given)


def _current_context():
    """The running command's context: typer's own click (typer ≥ 0.20 vendors it) or click's."""
    try:
        from typer._click.globals import get_current_context  # type: ignore[import-not-found]
    except ImportError:
        from click import get_current_context
    return get_current_context(silent=True)


def _parse_tile_batch(text: str) -> int | str:
    from ..errors import ConfigError, quoted

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--tile-batch takes a number of tiles or auto; got {quoted(text)}") from None


def _checkpoint(opts: LargeImageOptions) -> str:
    """The checkpoint the run would load, by the same rule as :meth:`LargeImageOptions.load` (resolved
    once per command: the rule may print a note)."""
    from .core import model_checkpoint

    if opts.resolved_checkpoint is None:
        opts.resolved_checkpoint = model_checkpoint(opts.checkpoint)
    return opts.resolved_checkpoint
