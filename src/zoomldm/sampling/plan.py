"""The plan before the work: what a large-image run will compute, hold and write (``--dry-run``).

:func:`plan_large` takes the request of ``zoomldm generate`` / ``zoomldm superres`` (or
:meth:`ZoomLDMPipeline.generate_large` / ``.super_resolve``) and returns a :class:`RunPlan`: the scale
cascade, tiles and canvas blocks, UNet rows and VQ passes per stage, the disk the run needs, the peak host
and GPU memory term by term, and an estimated time on the device. It loads no weights and runs no network:
the model is read from its configuration only (a checkpoint's ``zoomldm.json`` or yaml; an official file
without a yaml is the one case whose tensors are read, to recognise the architecture), parameters are
counted on PyTorch's ``meta`` device, and activation memory and FLOPs come from one forward pass of each
network on ``meta`` tensors (shapes only, no arithmetic) under a dispatch mode that records every
allocation and its release (:func:`activation_profile`).

**The memory model** is the out-of-core contract of the large-image engine (docs/large_images.md,
"Out-of-core canvas, resume and many GPUs"): the tile latents (double-buffered), a fixed guide's pixels,
the post-processing sums and counts and each cascade stage's output live in a zarr group beside the output
(``.<out>.resume/``); one canvas block (``block_shape(tile_batch)`` tiles) is in memory at a time; the decode
holds one band of window rows and the TIFF writer one row of tiles, both O(width). Every term is computed in
:func:`_host_terms`, :func:`_gpu_terms` and :func:`_disk_terms` and printed by name, so a term that turns
out wrong in a measurement can be found and corrected in one place.

**Counts** are exact for the sampler in :mod:`.constrained` / :mod:`.newton` (tested against
``metrics["unet_forwards"]`` and ``metrics["vq_passes"]`` of real runs): per outer step each tile costs
``(1 + 2·inner)`` guided ε evaluations (2 UNet rows each when ``w > 0``) and ``3·inner`` VQ images (one
decode, two encodes); a sampled guide adds one guided ε and one decode per step and one final decode; the
constraint metrics decode every tile once more.

**Time** is FLOPs ÷ an effective rate: the FLOPs of one UNet row and one VQ image are counted on ``meta``
(``torch.utils.flop_counter``), the device's dense matmul rate is measured in a short calibration
(~0.2 s, random matrices, no model), and the share of that rate the sampler reaches is
:data:`UTILISATION` (CPU: measured, benchmarks/RESULTS.md "Large images" CPU rows; CUDA: an assumption
until the ``gigapixel`` rows of ``benchmarks/gpu_check.sh`` are recorded). The output says which.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import PRESETS, ZoomLDMConfig
from ..errors import ConfigError, ZoomLDMError

__all__ = [
    "ModelSpec",
    "RunPlan",
    "StagePlan",
    "Term",
    "activation_profile",
    "available_disk_bytes",
    "available_gpu_bytes",
    "available_host_bytes",
    "format_bytes",
    "model_spec",
    "plan_large",
    "process_rss_bytes",
]

#: share of the measured dense-matmul rate the joint sampler reaches: CPU measured (benchmarks/RESULTS.md,
#: "Large images", CPU rows: 10.4–13.9 % of the fp32 matmul rate); CUDA assumed until the gigapixel GPU rows
#: of benchmarks/gpu_check.sh are measured
UTILISATION = {"cpu": (0.12, "measured: RESULTS.md CPU joint-sampling rows"), "cuda": (0.35, "assumed")}
#: the decode's accumulator band is shifted by concatenation (sampling/decode.py ``flush``): the band and
#: its shifted copy are alive together
DECODE_BAND_COPIES = 2
#: the TIFF writer's rows of tiles alive at once: its band, the copy handed to the queue, two queued bands
#: (queue size 2) and the band tifffile is encoding (io/tiff.py)
TIFF_BAND_COPIES = 5
#: the constraint metric sink: its uint8 band (1 B/px·channel) and the band as float levels, twice
#: (to_levels, then the per-tile view made contiguous): 1 + 4 + 4 bytes per pixel and channel
METRIC_BYTES_PER_VALUE = 9
#: latent-sized tensors per tile alive in a Newton iteration (x, ε, x̂0, x_h, ε_h, x̂0_h, e_z, z, z_h, ξ) plus
#: the tile's slot read from and written to the double-buffered canvas
LATENT_COPIES = 12
#: pixel-sized (3·S²) float tensors per tile alive in a Newton iteration: img, e_im, up(·), img + h·e_im and
#: the two-image encoder batch
PIXEL_COPIES = 6
#: PLMS steps of the reference-free guide patch (``generate_large(guide_steps=50)``)
REFERENCE_FREE_GUIDE_STEPS = 50
#: bytes of one float32 value
F32 = 4
COARSE_KIND = "sliding-window canvas"  # StagePlan.guide_kind of the coarse stage (sampling/coarse.py)
COARSE_WINDOW_BATCH = 8  # generate_coarse_canvas's default window_batch (tested equal)
#: margin on the traced activation peaks: the meta-device trace counts tensors, not the allocator; measured
#: against the resident-memory growth of real CPU forward passes it was 0.76–1.5× of the truth (brca VQ
#: decode ×2: 1 GiB traced / 780 MiB measured; brca VQ encode ×2: 322 / 347 MiB; tiny VQ decode ×4: 193 /
#: 264 MiB; tiny UNet ×8 rows: 88 / 134 MiB)
ACTIVATION_MARGIN = 1.25


@dataclass(frozen=True)
class Term:
    """One named part of a memory or disk estimate."""

    name: str
    bytes: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bytes": int(self.bytes),
            "human": format_bytes(self.bytes),
            "note": self.note,
        }


@dataclass(frozen=True)
class ModelSpec:
    """What the plan needs to know about a model, without its weights."""

    config: ZoomLDMConfig
    parameters: dict[str, int]  # unet, vae, summarizer
    source: str
    checkpoint_file_bytes: int = 0  # an official file is read whole while loading (0: our format / preset)

    @property
    def scales(self):
        return self.config.scales


class _ConfigPipe:
    """The attributes of a pipeline the geometry functions read (``config``, ``scales``, UNet channels)."""

    def __init__(self, config: ZoomLDMConfig) -> None:
        self.config = config
        self.unet = type("U", (), {"config": type("C", (), {"in_channels": config.unet["in_channels"]})()})()

    @property
    def scales(self):
        return self.config.scales


@dataclass
class StagePlan:
    """One scale pair of the cascade: geometry and the work it costs."""

    name: str
    guide: str
    target: str
    k: int
    width: int
    height: int
    tiles: int  # tiles computed (the request's canvas blocks)
    block_shape: tuple[int, int]
    blocks: int
    tile_batch: int
    outer_steps: int
    inner_steps: int
    newton_steps: int  # outer steps that run the Newton iterations (all unless newton_max_t < t0)
    guide_kind: str  # "sampled patch" | "fixed image"
    unet_rows: int  # joint sampling (rows: cond and uncond count separately)
    vq_passes: int  # joint sampling (images through the VQ encoder or decoder), incl. the metric decodes
    post_steps: int = 0
    post_windows: int = 0
    post_unet_rows: int = 0
    decode_windows: int = 0
    inversion_patches: int = 0
    inversion_unet_rows: int = 0
    flops: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunPlan:
    """The plan of one large-image run (:func:`plan_large`); :meth:`lines` is what ``--dry-run`` prints."""

    command: str
    model: str
    device: str
    dtype: str
    schedule: str
    output: str | None
    width: int
    height: int
    stages: list[StagePlan]
    host_terms: list[Term]
    gpu_terms: list[Term]
    disk_terms: list[Term]
    peak_host_bytes: int
    peak_gpu_bytes: int | None
    disk_bytes: int
    output_bytes: int
    bigtiff: bool | None
    seconds: float
    time_source: str
    available: dict[str, int | None] = field(default_factory=dict)
    shortfalls: list[str] = field(default_factory=list)

    @property
    def unet_rows(self) -> int:
        return sum(s.unet_rows + s.post_unet_rows + s.inversion_unet_rows for s in self.stages)

    @property
    def vq_passes(self) -> int:
        return sum(s.vq_passes + s.decode_windows for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["host_terms"] = [t.to_dict() for t in self.host_terms]
        record["gpu_terms"] = [t.to_dict() for t in self.gpu_terms]
        record["disk_terms"] = [t.to_dict() for t in self.disk_terms]
        record["stages"] = [s.to_dict() for s in self.stages]
        return json.loads(json.dumps(record, default=str))

    def check(self) -> None:
        """Raise a one-line :class:`ZoomLDMError` naming what is short (disk, host or GPU memory)."""
        if self.shortfalls:
            raise ZoomLDMError("; ".join(self.shortfalls))

    def lines(self) -> list[str]:
        """Human-readable plan: stages, counts, memory and disk terms, time."""
        out = [
            f"plan: zoomldm {self.command}, {self.width}×{self.height} px "
            f"({self.width * self.height / 1e9:.3g} gigapixels), model {self.model}, {self.device} {self.dtype}, "
            f"schedule {self.schedule}",
            f"output: {self.output or 'memory'}"
            + ("" if self.bigtiff is None else f" ({'BigTIFF' if self.bigtiff else 'classic TIFF'})"),
            f"scale cascade: {' → '.join([self.stages[0].guide] + [s.target for s in self.stages])}",
        ]
        for s in self.stages:
            if s.guide_kind == COARSE_KIND:
                out.append(
                    f"  {s.name}: {s.target}, {s.width}×{s.height} px = {s.tiles} patches from noise "
                    f"(sliding windows, stride 1/4 patch: {s.blocks} windows; ours, not the paper's)"
                )
                out.append(
                    f"    {s.outer_steps} steps × {s.blocks} windows: {s.unet_rows:,} UNet rows; "
                    f"decode: {s.decode_windows:,} VQ windows"
                )
                continue
            out.append(
                f"  {s.name}: {s.guide} → {s.target} (k = {s.k}), {s.width}×{s.height} px, {s.tiles} tiles in "
                f"{s.blocks} blocks of {s.block_shape[0]}×{s.block_shape[1]}, guide: {s.guide_kind}"
            )
            out.append(
                f"    joint sampling: {s.outer_steps} steps × {s.inner_steps} Newton iterations"
                + (f" (in the last {s.newton_steps})" if s.newton_steps < s.outer_steps else "")
                + f": {s.unet_rows:,} UNet rows, {s.vq_passes:,} VQ passes"
            )
            if s.inversion_patches:
                out.append(
                    f"    condition inversion: {s.inversion_patches} patches, {s.inversion_unet_rows:,} UNet rows "
                    "(forward + backward)"
                )
            if s.post_steps:
                out.append(
                    f"    post-processing: {s.post_steps} steps × {s.post_windows:,} windows: "
                    f"{s.post_unet_rows:,} UNet rows"
                )
            out.append(f"    decode: {s.decode_windows:,} VQ windows")
        out.append(f"total: {self.unet_rows:,} UNet rows, {self.vq_passes:,} VQ passes")
        out.append("host memory terms:")
        out += [
            f"  {t.name}: {format_bytes(t.bytes)}" + (f" ({t.note})" if t.note else "")
            for t in self.host_terms
        ]
        out.append(f"peak host memory: {format_bytes(self.peak_host_bytes)}")
        if self.peak_gpu_bytes is not None:
            out.append("GPU memory terms:")
            out += [
                f"  {t.name}: {format_bytes(t.bytes)}" + (f" ({t.note})" if t.note else "")
                for t in self.gpu_terms
            ]
            out.append(f"peak GPU memory: {format_bytes(self.peak_gpu_bytes)}")
        out.append("disk terms:")
        out += [
            f"  {t.name}: {format_bytes(t.bytes)}" + (f" ({t.note})" if t.note else "")
            for t in self.disk_terms
        ]
        out.append(f"canvas disk: {format_bytes(self.disk_bytes)}")
        avail = ", ".join(
            f"{name} {format_bytes(value)}" for name, value in self.available.items() if value is not None
        )
        if avail:
            out.append(f"available: {avail}")
        out.append(f"estimated time: {_format_seconds(self.seconds)} ({self.time_source})")
        return out


# ---------------------------------------------------------------------------------------------------
# probes (monkeypatched in tests)
# ---------------------------------------------------------------------------------------------------
def process_rss_bytes() -> int:
    """Resident memory of this process now (``/proc/self/status`` VmRSS; 0 where there is none)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+)\s+kB", text)
    return int(match.group(1)) * 1024 if match else 0


def available_host_bytes() -> int | None:
    """Memory the system can give a new allocation now (``MemAvailable``), None where unknown."""
    try:
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+)\s+kB", text).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def available_disk_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def available_gpu_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``); None for other devices."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info(dev)[0])


def matmul_rate(device: str, dtype: str, size: int = 1024, repeats: int = 3) -> float:
    """Dense matmul FLOP/s measured on ``device`` in ``dtype`` (a 0.1–0.3 s calibration, no model)."""
    import torch

    dev = torch.device(device)
    dt = _torch_dtype(dtype) if dev.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=dev, dtype=dt)
    b = torch.randn(size, size, device=dev, dtype=dt)
    a @ b  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return 2 * size**3 * repeats / max(time.perf_counter() - start, 1e-9)


# ---------------------------------------------------------------------------------------------------
# the model, from its configuration
# ---------------------------------------------------------------------------------------------------
def model_spec(model: Any = None, config: str | Path | None = None) -> ModelSpec:
    """The configuration and parameter counts of ``model`` without loading its weights.

    ``model`` is a :class:`~zoomldm.pipeline.ZoomLDMPipeline` (its config and real counts), a
    :class:`~zoomldm.config.ZoomLDMConfig`, a preset name (``brca``, ``naip``, ``tiny``) or a checkpoint as
    ``--checkpoint`` takes it (our folder: its ``zoomldm.json``; an official file: ``config`` or the yaml
    beside it, else its tensors are read to recognise the architecture).
    """
    if hasattr(model, "unet") and hasattr(model, "config") and isinstance(model.config, ZoomLDMConfig):
        counts = {
            name: sum(p.numel() for p in getattr(model, name).parameters())
            for name in ("unet", "vae", "summarizer")
        }
        return ModelSpec(model.config, counts, str(model.provenance.get("checkpoint", "pipeline")))
    file_bytes = 0
    if isinstance(model, ZoomLDMConfig):
        cfg, source = model, model.preset or "config"
    elif model is None:
        raise ConfigError("plan_large needs a model: a pipeline, a config, a preset name or a checkpoint")
    else:
        cfg, source, file_bytes = _checkpoint_config(model, config)
    return ModelSpec(cfg, _parameter_counts(cfg), source, file_bytes)


def _checkpoint_config(checkpoint: Any, config: str | Path | None) -> tuple[ZoomLDMConfig, str, int]:
    from ..checkpoints import guess_preset, read_state_dict, resolve_checkpoint
    from ..errors import CheckpointError
    from ..tensorfiles import read_json_object

    text = str(checkpoint)
    preset = text.rstrip("/").rsplit("/", 1)[-1]
    if (
        not Path(text).expanduser().exists()
        and preset in PRESETS
        and (text == preset or text.count("/") >= 2)
    ):
        # a preset name or the hub id of published weights (…/brca, …/naip): the architecture is known, so
        # the plan needs no download (the run itself fetches the weights)
        return ZoomLDMConfig.resolve(config or preset), text, 0
    src = resolve_checkpoint(checkpoint, None if config is None else str(config))
    if src.kind == "ours":
        meta = read_json_object(src.path / "zoomldm.json", "model description")
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{src.path / 'zoomldm.json'} is not a zoomldm model description")
        return ZoomLDMConfig.from_dict(meta["config"]), str(src.path), 0
    chosen = config or src.config
    if chosen is None:
        chosen = guess_preset(read_state_dict(src.path))  # the one case that reads the tensors
        if chosen is None:
            raise ZoomLDMError(
                f"{src.path.name}: pass --config (brca, naip or the yaml it was trained with); "
                "the architecture is not one of the published ones"
            )
    return ZoomLDMConfig.resolve(chosen), str(src.path), src.path.stat().st_size


@functools.lru_cache(maxsize=16)
def _counts_cached(key: str) -> tuple[int, int, int]:
    import torch

    from ..models.autoencoder import build_vae
    from ..models.summarizer import Summarizer
    from ..models.unet import build_unet

    cfg = ZoomLDMConfig.from_dict(json.loads(key))
    with torch.device("meta"):
        modules = (build_unet(cfg.unet), build_vae(cfg.vae), Summarizer(**cfg.summarizer))
    return tuple(sum(p.numel() for p in m.parameters()) for m in modules)  # type: ignore[return-value]


def _config_key(cfg: ZoomLDMConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str)


def _parameter_counts(cfg: ZoomLDMConfig) -> dict[str, int]:
    unet, vae, summarizer = _counts_cached(_config_key(cfg))
    return {"unet": unet, "vae": vae, "summarizer": summarizer}


class _PeakMemory:
    """A dispatch mode that adds every new tensor's storage on allocation and subtracts it on release: the
    peak of live activation bytes of the code it wraps (no allocator caching or fragmentation)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage") and not t._is_view():
                        n = t.untyped_storage().nbytes()
                        outer.live += n
                        outer.peak = max(outer.peak, outer.live)
                        weakref.finalize(t, outer._free, n)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n


@functools.lru_cache(maxsize=16)
def _profile_cached(key: str, dtype: str, vae_dtype: str) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.autoencoder import build_vae
    from ..models.unet import build_unet

    cfg = ZoomLDMConfig.from_dict(json.loads(key))
    dt, vdt = _torch_dtype(dtype), _torch_dtype(vae_dtype)
    with torch.device("meta"):
        unet, vae = build_unet(cfg.unet), build_vae(cfg.vae)
    if dt != torch.float32:
        unet = unet.to(dt)
    if vdt != torch.float32:
        vae = vae.to(vdt)
    C, P, S, D = cfg.unet["in_channels"], cfg.latent_size, cfg.image_size, cfg.context_dim
    result: dict[str, float] = {}

    def measure(name: str, fn, batch: int) -> None:
        peak, flops = _PeakMemory(), FlopCounterMode(display=False)
        with torch.no_grad(), _fused_attention() as attention_flops, flops, peak.mode:
            fn(batch)
        result[f"{name}_{batch}"] = float(peak.peak)
        result[f"{name}_flops_{batch}"] = float(flops.get_total_flops() + attention_flops[0])

    def run_unet(b):
        x = torch.zeros(b, C, P, P, device="meta", dtype=dt)
        unet(
            x,
            torch.zeros(b, device="meta"),
            encoder_hidden_states=torch.zeros(b, 65, D, device="meta", dtype=dt),
        )

    def run_decode(b):
        vae.decode(torch.zeros(b, C, P, P, device="meta", dtype=vdt))

    def run_encode(b):
        vae.encode(torch.zeros(b, 3, S, S, device="meta", dtype=vdt))

    for name, fn in (("unet", run_unet), ("decode", run_decode), ("encode", run_encode)):
        for b in (1, 2):
            measure(name, fn, b)
    return result


class _fused_attention:
    """Replace ``F.scaled_dot_product_attention`` during a meta trace by its output allocation alone, and
    count its FLOPs (4·B·H·L·S·E): on ``meta`` PyTorch would trace the unfused math path and record the
    L×S score matrices, which the fused CPU and CUDA kernels never allocate (measured: the traced VQ encoder
    of the tiny preset was 4× its real peak with them)."""

    def __enter__(self) -> list[float]:
        import torch
        import torch.nn.functional as F

        self.original = F.scaled_dot_product_attention
        counter = self.counter = [0.0]

        def fused(q, k, v, *args, **kwargs):
            counter[0] += 4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
            return torch.empty(*q.shape[:-1], v.shape[-1], device=q.device, dtype=q.dtype)

        F.scaled_dot_product_attention = fused
        return counter

    def __exit__(self, *exc: object) -> None:
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self.original


def activation_profile(config: ZoomLDMConfig, dtype: str = "float32", vae_dtype: str = "float32") -> dict:
    """Per-item activation bytes and FLOPs of one UNet row, one VQ decode and one VQ encode, and their
    fixed parts, from forward passes on the ``meta`` device (shapes only): ``{"unet": (fixed, per_item),
    "unet_flops": per_item, …}``. Peak activation memory of a batch is affine in its size (as in
    :mod:`.memory`), so two probes (1 and 2 items) give both parts."""
    raw = _profile_cached(_config_key(config), dtype, vae_dtype)
    out: dict[str, Any] = {}
    for name in ("unet", "decode", "encode"):
        one, two = raw[f"{name}_1"], raw[f"{name}_2"]
        per = max(two - one, 0.0)
        out[name] = (ACTIVATION_MARGIN * max(one - per, 0.0), ACTIVATION_MARGIN * per)
        out[f"{name}_flops"] = raw[f"{name}_flops_1"]
    return out


def _torch_dtype(name: str):
    """The pipeline's dtype names (``float32``/``fp32``, ``float16``/``fp16``, ``bfloat16``/``bf16``)."""
    from ..pipeline import _dtype

    return _dtype(name)


def _dtype_bytes(name: str) -> int:
    return 4 if _torch_dtype(name).itemsize == 4 else 2


# ---------------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------------
def plan_large(
    model: Any = None,
    *,
    command: str = "generate",
    guide: Any = None,
    target: Any = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    input_shape: tuple[int, int] | None = None,
    from_magnification: Any = None,
    out: str | Path | None = None,
    config: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    live_weights: bool = False,
    compression: str = "jpeg",
    schedule: str = "official",
    reference_free: bool = False,
    calibrate: bool = True,
    trace: bool = True,
    **options: Any,
) -> RunPlan:
    """Plan a ``generate`` (``command="generate"``: ``guide``/``target``/``size``/``region`` as
    :meth:`~zoomldm.pipeline.ZoomLDMPipeline.generate_large`) or ``superres`` run (``input_shape`` =
    ``(H, W)`` of the low-resolution image at ``from_magnification``) without doing it.

    Args:
        model: pipeline, config, preset name or checkpoint (:func:`model_spec`); ``config`` as ``--config``.
        out: the output file (its folder's free space is checked; None: in memory).
        device, dtype: where and how the run would go (``"cuda"`` adds the GPU terms and free-memory check;
            default: the pipeline's, else ``"cpu"`` / ``"float32"``).
        live_weights: a second UNet is loaded for post-processing (``post_live_weights``).
        schedule: ``official`` or ``fast`` (:data:`zoomldm.sampling.settings.SCHEDULES`), then ``options``
            by CLI name on top (``inner_steps=…``, ``tile_batch=…``, …) as the pipeline methods take them.
        reference_free: the guide comes from the CDM: its guide patch's PLMS steps and condition inversion
            are added, the guide is then fixed (the CDM's own cost, a small DiT, is not counted).
        calibrate: measure the device's matmul rate for the time estimate (False: 0 s, "not estimated").
        trace: trace the networks on ``meta`` for activation memory and FLOPs. False (the check before a
            real run: no network is called before the inputs are validated) leaves activations out, so the
            memory figures are lower bounds and the time is not estimated.

    Returns:
        :class:`RunPlan`; :meth:`RunPlan.check` raises when disk or memory would not suffice.
    """
    from ..io.tiff import estimated_tiff_bytes, needs_bigtiff
    from .output import MAX_IN_MEMORY_PIXELS, check_output_path
    from .settings import large_image_settings, schedule_options

    spec = model_spec(model, config)
    cfg = spec.config
    pipe = _ConfigPipe(cfg)
    is_pipeline = hasattr(model, "unet") and hasattr(model, "device")
    device = device or (str(model.device) if is_pipeline else "cpu")
    dtype = dtype or (str(model.dtype).removeprefix("torch.") if is_pipeline else "float32")
    if command not in ("generate", "superres"):
        raise ConfigError(f"command must be generate or superres; got {command!r}")
    sr = command == "superres"
    if sr:
        from .superres import SRConfig

        sampling_cls = SRConfig
    else:
        from .newton import JointSamplingConfig as sampling_cls  # type: ignore[assignment]
    options = dict(schedule_options(schedule, sr), **options)
    if options.get("tile_batch") == "auto":  # measured on the device at run time; the plan takes 16
        options["tile_batch"] = 16
    settings = large_image_settings(pipe, sampling_cls=sampling_cls, **options)
    coarse = _coarse_of(pipe, sr, guide, target, size, region)
    if coarse is not None and reference_free:
        span = coarse.level.downsample // final_target(coarse).downsample * pipe.config.image_size
        raise ConfigError(
            f"sizes above {span} px need --reference (the coarse canvas past one {coarse.level} guide patch "
            "is conditioned on the reference grid; the CDM makes one guide patch)"
        )
    if coarse is not None:
        stages = coarse.stages
    else:
        stages = _geometry(pipe, sr, guide, target, size, region, input_shape, from_magnification)
    final = stages[-1]
    out_path = check_output_path(out, final.height, final.width, compression)
    is_tiff = out_path is not None and out_path.suffix.lower() in (".tif", ".tiff")

    if trace:
        profile = activation_profile(cfg, dtype, dtype if device.startswith("cuda") else "float32")
    else:
        profile = {name: (0.0, 0.0) for name in ("unet", "decode", "encode")}
        profile.update(unet_flops=0.0, decode_flops=0.0, encode_flops=0.0)
        calibrate = False
    stage_plans = [
        _stage_plan(pipe, i, len(stages), geo, settings, sr, profile, reference_free, coarse is not None)
        for i, geo in enumerate(stages)
    ]
    if coarse is not None:
        stage_plans.insert(0, _coarse_stage_plan(pipe, coarse, settings, profile))
    on_gpu = device.startswith("cuda")
    kept = final.height * final.width <= MAX_IN_MEMORY_PIXELS or out_path is None or not is_tiff
    output_bytes = (
        estimated_tiff_bytes(final.height, final.width, compression)
        if is_tiff
        else (final.height * final.width * 3 if out_path is not None else 0)
    )
    host = _host_terms(
        spec,
        cfg,
        stages,
        stage_plans,
        settings,
        profile,
        dtype,
        on_gpu,
        kept,
        sr,
        input_shape,
        is_tiff,
        live_weights,
        weights_resident=is_pipeline and not on_gpu,
        coarse=coarse,
    )
    measured = (
        _measured_newton_bytes(model, max(p.tile_batch for p in stage_plans)) if on_gpu and trace else None
    )
    gpu = (
        _gpu_terms(spec, cfg, stage_plans, settings, profile, dtype, live_weights, measured) if on_gpu else []
    )
    disk = _disk_terms(cfg, stages, settings, output_bytes, is_tiff, final, sr)
    peak_host = _peak(host)
    peak_gpu = _peak(gpu) if on_gpu else None
    disk_bytes = sum(t.bytes for t in disk)
    seconds, source = _estimate_time(stage_plans, device, dtype, calibrate)

    avail = {
        "host memory": available_host_bytes(),
        "disk": available_disk_bytes(out_path.parent) if out_path is not None else None,
        "GPU memory": available_gpu_bytes(device) if on_gpu else None,
    }
    if avail["GPU memory"] is not None and is_pipeline:  # its weights are already there, and in the plan
        import torch

        avail["GPU memory"] += torch.cuda.memory_allocated(torch.device(device))
    short = []
    where = f" under {out_path.parent}" if out_path is not None else ""
    resident = host[0].bytes  # the baseline is this process, already resident: only the rest is new
    for what, need, have, advice in (
        ("disk", disk_bytes, avail["disk"], f"free space{where} or write --out to a larger disk"),
        (
            "host memory",
            peak_host,
            None if avail["host memory"] is None else avail["host memory"] + resident,
            "close other programs or lower --tile-batch",
        ),
        ("GPU memory", peak_gpu, avail["GPU memory"], "lower --tile-batch or use --dtype float16"),
    ):
        if need is not None and have is not None and need > have:
            short.append(
                f"not enough {what} for this run: needs {'' if trace else 'at least '}{format_bytes(need)}, "
                f"{format_bytes(have)} available "
                f"(short by {format_bytes(need - have)}; {advice})"
            )
    return RunPlan(
        command=command,
        model=spec.source,
        device=device,
        dtype=dtype,
        schedule=schedule,
        output=None if out_path is None else str(out_path),
        width=final.width,
        height=final.height,
        stages=stage_plans,
        host_terms=host,
        gpu_terms=gpu,
        disk_terms=disk,
        peak_host_bytes=peak_host,
        peak_gpu_bytes=peak_gpu,
        disk_bytes=disk_bytes,
        output_bytes=output_bytes,
        bigtiff=needs_bigtiff(final.height, final.width) if is_tiff else None,
        seconds=seconds,
        time_source=source,
        available=avail,
        shortfalls=short,
    )


def plan_geometry(model: Any, config: str | Path | None = None, command: str = "generate", **request: Any):
    """The stages (:class:`~.joint.LargeImagePlan` list) of a ``generate`` or ``superres`` request from the
    model's configuration only (``guide``, ``target``, ``size``, ``region``, ``input_shape``,
    ``from_magnification`` as :func:`plan_large`)."""
    pipe = _ConfigPipe(model_spec(model, config).config)
    get = request.get
    return _geometry(
        pipe,
        command == "superres",
        get("guide"),
        get("target"),
        get("size"),
        get("region"),
        get("input_shape"),
        get("from_magnification"),
    )


def guide_for_reference(
    model: Any, reference: str | Path, target: Any = None, config: str | Path | None = None
):
    """The guide level whose field of view a reference file covers (as ``generate_large`` chooses it when
    neither guide nor size is given), read from the file's header or grid shape only; None if none fits."""
    from ..conditioning import load_ssl_grid
    from .levels import parse_level
    from .reference import GRID_SUFFIXES

    cfg = model_spec(model, config).config
    pipe = _ConfigPipe(cfg)
    path = Path(reference)
    if path.suffix.lower() in GRID_SUFFIXES:
        h, w = load_ssl_grid(path, channels=cfg.ssl_channels).shape[1:]
    else:
        from PIL import Image

        from ..errors import InputError

        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable image ({err})") from None
        tile = cfg.image_size
        if height % tile or width % tile:
            return None
        h, w = height // tile, width // tile
    if h != w:
        return None
    tmag = parse_level(pipe, target, "--to") if target is not None else pipe.scales[0]
    return next((m for m in pipe.scales if m.grid_size == h and m.index > tmag.index), None)


def _geometry(pipe, sr, guide, target, size, region, input_shape, from_magnification):
    from .joint import _plan_pair, plan_stages
    from .levels import parse_level

    if not sr:
        coarse = _coarse_of(pipe, sr, guide, target, size, region)
        return coarse.stages if coarse is not None else plan_stages(pipe, guide, target, size, region)
    if input_shape is None or from_magnification is None:
        raise ConfigError("a super-resolution plan needs input_shape=(H, W) and from_magnification")
    tile = pipe.config.image_size
    h, w = (int(v) for v in input_shape[:2])
    if h % tile or w % tile or h < tile or w < tile:
        raise ConfigError(f"the input is {w}×{h}; it must be a whole number of {tile}² patches")
    source = parse_level(pipe, from_magnification, "input magnification")
    tmag = parse_level(pipe, target, "target magnification") if target is not None else pipe.scales[0]
    return [_plan_pair(pipe, source, tmag, region=region, guide_shape=(h, w))]


def _coarse_of(pipe, sr, guide, target, size, region):
    """The coarse canvas of a ``generate --size`` past the coarsest level's one guide patch
    (:func:`.joint.coarse_request`), or None (super-resolution, a named guide, or one patch covers it)."""
    from .joint import coarse_request
    from .levels import parse_level

    if sr or guide is not None or size is None:
        return None
    tmag = parse_level(pipe, target, "target magnification") if target is not None else pipe.scales[0]
    return coarse_request(pipe, tmag, int(size), region)


def final_target(coarse):
    """The target level of a coarse request's last stage."""
    return coarse.stages[-1].target


def _coarse_stage_plan(pipe, coarse, settings, profile) -> StagePlan:
    """The coarse canvas as a stage: sliding-window denoising from noise (no tiles, no Newton), decoded."""
    from .coarse import coarse_canvas_cost

    cost = coarse_canvas_cost(pipe, coarse.rows, coarse.cols, settings.sampling, settings.decode)
    tile = pipe.config.image_size
    flops = cost.unet_rows * profile["unet_flops"] + cost.vq_passes * profile["decode_flops"]
    return StagePlan(
        name="coarse canvas",
        guide="noise",
        target=coarse.level.name,
        k=1,
        width=coarse.cols * tile,
        height=coarse.rows * tile,
        tiles=coarse.rows * coarse.cols,
        block_shape=(1, 1),
        blocks=cost.windows,
        tile_batch=COARSE_WINDOW_BATCH,
        outer_steps=cost.steps,
        inner_steps=0,
        newton_steps=0,
        guide_kind=COARSE_KIND,
        unet_rows=cost.unet_rows,
        vq_passes=0,
        decode_windows=cost.vq_passes,
        flops=float(flops),
    )


def _stage_plan(
    pipe, index, count, geo, settings, sr, profile, reference_free, fixed_first: bool = False
) -> StagePlan:
    from .constrained import block_cover, block_shape
    from .decode import window_starts
    from .strided import strided_steps

    cfg = pipe.config
    sampling = settings.sampling
    tile_batch = int(sampling.tile_batch)
    computed = block_cover(geo.tile_ids, geo.canvas_cols, geo.canvas_rows, tile_batch)
    n = len(computed)
    bh, bw = block_shape(tile_batch)
    blocks = _count_blocks(computed, geo.canvas_cols, bh, bw)
    schedule = strided_steps(cfg.schedule, sampling.t0, sampling.stride)
    steps = len(schedule)
    inner = sampling.inner_steps
    newton = sum(sampling.iterations_at(s.t) for s in schedule)  # Newton iterations over the steps
    rows_per_eps = 1 if sampling.guidance_w == 0 else 2
    # reference-free: a fixed CDM guide; past one guide patch: the decoded coarse canvas
    sampled_guide = index == 0 and not sr and not reference_free and not fixed_first
    unet_rows = n * (steps + 2 * newton) * rows_per_eps
    vq = n * 3 * newton + n
    if sampled_guide:
        unet_rows += steps * rows_per_eps
        vq += steps + 1
    P = cfg.latent_size
    lat_h, lat_w = geo.rows * P, geo.cols * P
    post_steps = post_windows = post_rows = 0
    if settings.postprocess is not None:
        post = settings.postprocess
        window, stride = post.resolved(P)
        post_steps = len(strided_steps(cfg.schedule, post.t0, post.stride))
        post_windows = len(window_starts(lat_h, window, stride)) * len(window_starts(lat_w, window, stride))
        post_rows = post_steps * post_windows * (1 if post.guidance_w == 0 else 2)
    dec = settings.decode
    decode_windows = len(window_starts(lat_h, dec.window, dec.stride)) * len(
        window_starts(lat_w, dec.window, dec.stride)
    )
    inv_patches = inv_rows = 0
    if sr:
        inv_patches = (geo.canvas_rows // geo.k) * (geo.canvas_cols // geo.k)
        inv_rows = inv_patches * settings.inversion.steps
    elif reference_free and index == 0:  # the CDM's guide patch (PLMS, s = 2), then its inversion
        inv_patches = 1
        inv_rows = settings.inversion.steps + REFERENCE_FREE_GUIDE_STEPS * 2
    flops = (unet_rows + post_rows + 3 * inv_rows) * profile["unet_flops"]
    flops += n * newton * (profile["decode_flops"] + 2 * profile["encode_flops"])
    flops += (n + decode_windows) * profile["decode_flops"]
    name = f"stage {index + 1}/{count}" if count > 1 else "stage 1/1"
    return StagePlan(
        name=name,
        guide=geo.guide.name,
        target=geo.target.name,
        k=geo.k,
        width=geo.width,
        height=geo.height,
        tiles=n,
        block_shape=(bh, bw),
        blocks=blocks,
        tile_batch=tile_batch,
        outer_steps=steps,
        inner_steps=inner,
        newton_steps=sum(1 for s in schedule if sampling.iterations_at(s.t)),
        guide_kind="sampled patch" if sampled_guide else "fixed image",
        unet_rows=unet_rows,
        vq_passes=vq,
        post_steps=post_steps,
        post_windows=post_windows,
        post_unet_rows=post_rows,
        decode_windows=decode_windows,
        inversion_patches=inv_patches,
        inversion_unet_rows=inv_rows,
        flops=float(flops),
    )


def _count_blocks(ids: list[int], cols: int, bh: int, bw: int) -> int:
    return len({(tid // cols // bh, tid % cols // bw) for tid in ids})


def _peak(terms: list[Term]) -> int:
    return int(sum(t.bytes for t in terms))


def _host_terms(
    spec,
    cfg,
    stages,
    plans,
    settings,
    profile,
    dtype,
    on_gpu,
    kept,
    sr,
    input_shape,
    is_tiff,
    live_weights,
    weights_resident: bool = False,
    coarse=None,
) -> list[Term]:
    """Peak host memory = baseline + weights + the largest of the phases' working sets (each phase — load,
    sampling of a block, post-processing band, decode band + writer — ends before the next starts)."""
    from ..io.tiff import TIFF_TILE

    width_px = max(s.width for s in stages)
    final = stages[-1]
    C, P, S, f = cfg.unet["in_channels"], cfg.latent_size, cfg.image_size, cfg.vae_factor
    D = cfg.context_dim
    b = max(p.tile_batch for p in plans)
    wbytes = _dtype_bytes(dtype)
    n_unet = spec.parameters["unet"] * (2 if live_weights else 1)
    weights_host = (
        0 if on_gpu else (n_unet + spec.parameters["summarizer"]) * wbytes + spec.parameters["vae"] * F32
    )
    baseline = process_rss_bytes()
    if weights_resident:  # planning with a loaded CPU pipeline: its weights are already in the baseline
        baseline = max(baseline - weights_host, 0)
    terms = [
        Term("process baseline", baseline, "this process's resident memory (Python, torch, diffusers)"),
        Term(
            "model weights",
            weights_host,
            "on the GPU" if on_gpu else f"{sum(spec.parameters.values()):,} parameters",
        ),
    ]
    # phases: only the largest one counts (they follow one another)
    lat = C * P * P * F32
    pix = 3 * S * S * F32
    act = 0
    if not on_gpu:  # activations live where the networks run
        act = int(
            max(
                _affine(profile["unet"], 2 * b),
                _affine(profile["decode"], b),
                _affine(profile["encode"], 2 * b),
            )
        )
    grid_bytes = _grid_bytes(cfg, stages, sr, coarse)
    block = b * (LATENT_COPIES * lat + PIXEL_COPIES * pix + 2 * 65 * D * F32) + 2 * lat + pix + act
    decode_band = DECODE_BAND_COPIES * 3 * settings.decode.window * f * width_px * F32
    decode_batch = settings.decode.batch_size * 3 * (settings.decode.window * f) ** 2 * F32
    if not on_gpu:
        decode_batch += int(_affine(profile["decode"], settings.decode.batch_size))
    writer = TIFF_BAND_COPIES * TIFF_TILE * final.width * 3 if is_tiff else 0
    metric = METRIC_BYTES_PER_VALUE * S * final.width * 3
    image = final.height * final.width * 3 if kept else 0
    latent_kept = C * final.height // f * final.width // f * F32 if kept else 0
    post = 0
    if settings.postprocess is not None:
        window, stride = settings.postprocess.resolved(P)
        lat_w = final.cols * P
        band = 3 * (2 * window) * lat_w * (C * F32) + (2 * window) * lat_w * F32
        windows = max(p.post_windows for p in plans)
        contexts = windows * 65 * D * F32
        cap = settings.postprocess.context_cache_mib * 2**20
        cached = contexts if contexts <= cap else 0
        chunk = min(256, settings.postprocess.window_batch) * 2 * (65 * D * F32 + C * window * window * F32)
        post_act = 0 if on_gpu else int(_affine(profile["unet"], 2 * settings.postprocess.window_batch))
        post = band + (0 if on_gpu else cached) + chunk + post_act
    load = spec.checkpoint_file_bytes
    input_bytes = 0
    if sr and input_shape is not None:
        input_bytes = int(input_shape[0]) * int(input_shape[1]) * 3
    coarse_bytes = 0
    if coarse is not None:  # the canvas, its ε sums, window contexts, decoded pixels; a window batch
        from .coarse import coarse_canvas_cost

        cost = coarse_canvas_cost(
            _ConfigPipe(cfg), coarse.rows, coarse.cols, settings.sampling, settings.decode
        )
        coarse_bytes = int(cost.buffers_mib * 2**20) + COARSE_WINDOW_BATCH * 2 * (lat + 65 * D * F32)
        if not on_gpu:
            coarse_bytes += int(_affine(profile["unet"], 2 * COARSE_WINDOW_BATCH))
    phases = {
        "loading (official checkpoint read whole)": load,
        "sampling: one block in flight": block,
        "post-processing: one band of windows": post,
        "decode band + TIFF writer row + metric band": decode_band + decode_batch + writer + metric,
    }
    if coarse is not None:
        phases["coarse canvas: whole canvas + a window batch"] = coarse_bytes
    phase, peak_phase = max(phases.items(), key=lambda kv: kv[1])
    terms += [
        Term(
            "SSL grid of the request", grid_bytes, "reference grid, or the inverted grid of every input patch"
        ),
        Term("low-resolution input image", input_bytes, "uint8, read whole")
        if sr
        else Term("guide patch", lat + pix)
        if coarse is None
        else Term(
            "coarse canvas (decoded, the fixed guide)",
            coarse.rows * coarse.cols * S * S * 3,
            f"{coarse.rows}×{coarse.cols} {coarse.level} patches, uint8, kept through the run",
        ),
        Term("image kept in memory", image + latent_kept, "outputs up to 8192² px are also returned")
        if kept
        else Term("image kept in memory", 0, "larger outputs are only written"),
        Term(f"largest phase: {phase}", peak_phase, _phase_note(phases)),
    ]
    return terms


def _phase_note(phases: dict[str, int]) -> str:
    return "; ".join(f"{name} {format_bytes(v)}" for name, v in phases.items())


def _affine(pair: tuple[float, float], n: int) -> float:
    fixed, per = pair
    return fixed + per * n


def _grid_bytes(cfg, stages, sr, coarse=None) -> int:
    first = stages[0]
    if coarse is not None:  # the reference grid covers the whole coarse canvas
        g = coarse.level.grid_size
        return cfg.ssl_channels * coarse.rows * g * coarse.cols * g * F32
    if sr:
        g = first.target.grid_size
        return cfg.ssl_channels * first.canvas_rows * g * first.canvas_cols * g * F32
    side = first.guide.grid_size
    return cfg.ssl_channels * side * side * F32


def _gpu_terms(spec, cfg, plans, settings, profile, dtype, live_weights, measured=None) -> list[Term]:
    """Peak GPU memory = weights + the largest phase: one Newton batch (traced activations of the widest
    call + the block's tensors, or ``measured`` by :func:`.memory.newton_peak_bytes` on the pipeline's own
    CUDA device), post-processing (window contexts cached on the device + a window batch), decode batch."""
    C, P, S, D = cfg.unet["in_channels"], cfg.latent_size, cfg.image_size, cfg.context_dim
    b = max(p.tile_batch for p in plans)
    wbytes = _dtype_bytes(dtype)
    n_unet = spec.parameters["unet"] * (2 if live_weights else 1)
    weights = (n_unet + spec.parameters["summarizer"] + spec.parameters["vae"]) * wbytes
    lat, pix = C * P * P * F32, 3 * S * S * F32
    act = max(
        _affine(profile["unet"], 2 * b), _affine(profile["decode"], b), _affine(profile["encode"], 2 * b)
    )
    block = b * (LATENT_COPIES * lat + PIXEL_COPIES * pix + 2 * 65 * D * F32)
    sampling = ("sampling: one Newton batch", int(act + block))
    if measured is not None:
        sampling = ("sampling: one Newton batch (measured, sampling/memory.py)", int(measured))
    post = 0
    if settings.postprocess is not None:
        windows = max(p.post_windows for p in plans)
        contexts = windows * 65 * D * F32
        cap = settings.postprocess.context_cache_mib * 2**20
        post = (contexts if contexts <= cap else 0) + _affine(
            profile["unet"], 2 * settings.postprocess.window_batch
        )
    phases = {
        sampling[0]: sampling[1],
        "post-processing: window contexts + a window batch": int(post),
        "decode: a batch of windows": int(_affine(profile["decode"], settings.decode.batch_size)),
    }
    phase, peak_phase = max(phases.items(), key=lambda kv: kv[1])
    return [
        Term("model weights", int(weights), dtype),
        Term(f"largest phase: {phase}", peak_phase, _phase_note(phases)),
    ]


def _measured_newton_bytes(model, tile_batch: int) -> int | None:
    """On a pipeline already on a CUDA device: the measured peak of one Newton iteration of a batch
    (:func:`.memory.newton_peak_bytes`) less the memory allocated before it (the weights)."""
    import torch

    device = getattr(model, "device", None)
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    from .memory import newton_peak_bytes

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    return max(newton_peak_bytes(model, tile_batch) - before, 0)


def _disk_terms(cfg, stages, settings, output_bytes, is_tiff, final, sr) -> list[Term]:
    C, P = cfg.unet["in_channels"], cfg.latent_size
    lat = C * P * P * F32
    tiles = sum(s.rows * s.cols for s in stages)
    terms = [Term("tile latents (double buffer)", 2 * tiles * lat, "zarr, fp32")]
    fixed = sum(
        s.canvas_rows * (s.tile_px // s.k) * s.canvas_cols * (s.tile_px // s.k) * 3
        for i, s in enumerate(stages)
        if i > 0 or sr
    )
    terms.append(Term("fixed guide pixels", fixed, "cascade stage / super-resolution input, uint8"))
    if settings.postprocess is not None:
        post = sum(s.rows * P * s.cols * P * (2 * C + 1) * F32 for s in stages)
        terms.append(Term("post-processing sums + counts", post, "latent canvas, fp32"))
    cascade = sum(s.height * s.width * 3 for s in stages[:-1])
    if cascade:
        terms.append(Term("cascade stage outputs", cascade, "uint8 pixels"))
    if is_tiff:
        terms.append(Term("output TIFF", output_bytes, "estimated (io/tiff.py estimated_tiff_bytes)"))
        spool = sum(h * w * 3 for h, w in _level_shapes(final.height, final.width)[1:])
        terms.append(Term("TIFF reduced-level spool", spool, "uint8, removed when the TIFF is complete"))
    elif output_bytes:
        terms.append(Term("output PNG", output_bytes, "at most raw size"))
    return terms


def _level_shapes(h: int, w: int) -> list[tuple[int, int]]:
    from ..io.tiff import level_shapes

    return level_shapes(h, w)


def _estimate_time(plans: list[StagePlan], device: str, dtype: str, calibrate: bool) -> tuple[float, str]:
    if not calibrate:
        return 0.0, "not estimated"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rate = matmul_rate(device, dtype)
    share, how = UTILISATION[kind]
    flops = sum(p.flops for p in plans)
    return flops / (rate * share), (
        f"{flops / 1e15:.3g} PFLOP at {share:.0%} ({how}) of the measured {rate / 1e12:.3g} TFLOP/s matmul rate"
    )


def format_bytes(n: float | None) -> str:
    """``3.1 GiB``: binary units, 3 significant digits."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" or abs(value) >= 100 else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} PiB"


def _format_seconds(s: float) -> str:
    if s <= 0:
        return "0 s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days" if s < 100 * 86400 else f"{s / 86400:.0f} days"
