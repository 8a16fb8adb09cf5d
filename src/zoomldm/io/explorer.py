"""The zoom explorer's tile source: finer magnifications of an image generated where the user zooms in.

:class:`Explorer` turns one image at a magnification the model has (``--from``, e.g. 5x) into a Deep Zoom
pyramid that continues past the image's own pixels down to ``--to`` (default the model's finest level).
The HTTP side is :mod:`zoomldm.io.viewer` (``serve(image, generate=True, …)``); this module owns the
pixels: geometry, blocks, the cache, the model worker and the consistency record.

**Geometry.** Pathology (and satellite) levels are a factor 2 apart, so one DZI level is one magnification
step. The full canvas is the image's size × 2^steps; the DZI levels up to the image's own are box-filtered
halvings of the image, DZI level ``image + k`` is the k-th generated magnification. Each generated level is
cut into square *blocks* of ``B`` pixels. Block ``(bx, by)`` of step ``k`` is made by
:meth:`ZoomLDMPipeline.super_resolve` of a *window* of the parent level (step ``k − 1``: the image itself for
the first generated level, the previous generated level, i.e. exactly the pixels the user saw, below that):
the block's parent footprint ``B/2`` plus a ring of ``ring`` parent pixels on every side; the window is
``window_patches`` model patches wide (``B/2 + 2·ring = window_patches · P``, ``P`` the model's image size).
The super-resolved window (``2×`` the window) is the block's *generation*: its footprint ``B × B`` plus
``2·ring`` px on every side. Parent pixels outside the canvas are mirrored.
Defaults: ``window_patches = 2``, ``ring = P/4`` → ``B = 3P`` (768 px for 256² models).

**Blending.** Neighbouring generations overlap by ``4·ring`` px across their border. A served pixel is the
:func:`feather`-weighted sum of the generations covering it: raised-cosine ramps over the ``2·blend`` px
centred on each border (default ``blend = ring``), weights adding up to 1 (2 blocks across a border, 4 at a
corner), weight 1 in a block's interior (its own pixels exactly), no ramp at the canvas edges. The parent
pixels of a deeper level are these served pixels. The cache holds generations; tiles are composited on read.

**Determinism.** A block's generation depends only on (settings, seed, level, block index, parent pixels):
it is sampled with seed ``blake2b(seed, level, bx, by)``, and its parent pixels are a fixed blend of such
generations. The order in which the user zooms does not enter, so the cache is byte-identical whatever the
order (tested).

**Cache.** ``<cache>/<fingerprint>/``: ``<level>/<bx>_<by>.png`` (each block's whole generation, lossless,
written atomically) and ``<level>.json`` (per-block PSNR of the 2× box-downsampled footprint of the
generation against the parent pixels it came from,
seconds, seed; and the seam statistics). The fingerprint (sha256 of image pixels, model, settings, seed,
levels and geometry) makes a restart reuse the blocks and any change start a new folder.

**Concurrency.** One worker thread runs the model; HTTP threads only read finished blocks or ask for
missing ones. A request for a block joins the pending request for it when there is one, so concurrent
requests compute a block once. Parent blocks are computed inline by the worker (levels strictly decrease:
no cycle). While a block is generating, finished tiles are served from the cache without waiting.

**Seams.** Over the served pixels: ``seam_mae`` is the mean absolute difference (0-255) between the two pixel
columns (rows) that meet at a block border, over every pair of adjacent blocks whose served pixels are final;
``interior_mae`` is the same statistic over every pair of adjacent columns (rows) inside blocks
(:func:`seam_statistics` of a whole level gives the same numbers). ``seam_ratio = seam_mae / interior_mae`` is 1 when
borders are as smooth as the texture inside blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..fsutil import atomic_path

FORMAT_VERSION = 2  # 2: the cache holds each block's whole generation (centre + ring); tiles are blended
TILE_SIZE = 256


@dataclass(frozen=True)
class Geometry:
    """Sizes of an explorer pyramid (pixels).

    Attributes:
        width, height: the image at the input magnification. steps: generated magnifications.
        patch: the model's image size ``P``. window_patches: parent window side in patches.
        ring: parent pixels of context on every side of a block's footprint (``2·ring`` px at the block's
            level). blend: half-width (block-level px) of the feathered overlap across a border between two
            blocks; default ``ring`` (an overlap ``2·ring`` px wide, inside both generations); 0: no blending.
        tile_size: Deep Zoom tile side (overlap 0).
    """

    width: int
    height: int
    steps: int
    patch: int
    window_patches: int = 2
    ring: int | None = None
    tile_size: int = TILE_SIZE
    blend: int | None = None

    def __post_init__(self) -> None:
        if self.ring is None:
            object.__setattr__(self, "ring", self.patch // 4)
        if self.blend is None:
            object.__setattr__(self, "blend", self.ring)
        if self.window_patches < 1:
            raise ConfigError(f"window_patches must be ≥ 1; got {self.window_patches}")
        if not 0 <= self.ring < self.window_patches * self.patch / 2:
            raise ConfigError(
                f"ring must be 0 ≤ ring < window/2 = {self.window_patches * self.patch // 2} parent px; "
                f"got {self.ring}"
            )
        if not 0 <= self.blend <= 2 * self.ring or 2 * self.blend > self.block:
            raise ConfigError(
                f"blend must be 0 ≤ blend ≤ 2·ring = {2 * self.ring} px and ≤ block/2 = {self.block // 2}; "
                f"got {self.blend}"
            )
        if self.tile_size < 16:
            raise ConfigError(f"tile_size must be ≥ 16; got {self.tile_size}")

    @property
    def window(self) -> int:
        """Side of the parent window fed to super-resolution."""
        return self.window_patches * self.patch

    @property
    def block(self) -> int:
        """Side ``B`` of a kept block at its own level: ``2·(window − 2·ring)``."""
        return 2 * (self.window - 2 * self.ring)

    @property
    def margin(self) -> int:
        """Pixels of a block's generation beyond its footprint on every side, at the block's level."""
        return 2 * self.ring

    @property
    def generation(self) -> int:
        """Side of a block's whole generation (centre + ring) at its level: ``2·window``."""
        return 2 * self.window

    @property
    def max_level(self) -> int:
        """The finest Deep Zoom level (DZI level 0 is 1×1 px)."""
        side = max(self.width, self.height) << self.steps
        return max(0, math.ceil(math.log2(side)))

    @property
    def image_level(self) -> int:
        """The Deep Zoom level of the image's own pixels."""
        return self.max_level - self.steps

    def level_size(self, level: int) -> tuple[int, int]:
        """``(width, height)`` of Deep Zoom ``level``."""
        if level >= self.image_level:
            k = level - self.image_level
            return self.width << k, self.height << k
        scale = 2 ** (self.image_level - level)
        return max(1, math.ceil(self.width / scale)), max(1, math.ceil(self.height / scale))

    def level_tiles(self, level: int) -> tuple[int, int]:
        """Tile columns and rows of ``level``."""
        w, h = self.level_size(level)
        return math.ceil(w / self.tile_size), math.ceil(h / self.tile_size)

    def step_blocks(self, step: int) -> tuple[int, int]:
        """Block columns and rows of generated step ``step`` (1 = first generated level)."""
        w, h = self.width << step, self.height << step
        return math.ceil(w / self.block), math.ceil(h / self.block)

    def dzi(self, fmt: str = "png") -> bytes:
        """The ``.dzi`` descriptor."""
        w, h = self.level_size(self.max_level)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
            f'Overlap="0" TileSize="{self.tile_size}"><Size Width="{w}" Height="{h}"/></Image>\n'
        ).encode()


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices mirrored into ``[0, size)`` (half-sample symmetric, any distance)."""
    period = 2 * size
    index = np.mod(index, period)
    return np.where(index >= size, period - 1 - index, index)


def _ramp(t: np.ndarray) -> np.ndarray:
    """Raised cosine from 0 (``t ≤ 0``) to 1 (``t ≥ 1``); ``ramp(t) + ramp(1 − t) = 1``."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def feather(coord: np.ndarray, index: int, count: int, block: int, blend: int) -> np.ndarray:
    """Weight of block ``index`` (of ``count`` along one axis, side ``block``) at pixel coordinates ``coord``.

    1 inside the block's footprint away from its borders, 0 outside its footprint + ``blend``; across a
    border with a neighbour, a raised-cosine ramp over the ``2·blend`` pixels centred on it, such that the
    weights of the two blocks add up to 1 (a partition of unity; in 2-D the product of the two axes', so
    the 4 blocks of a corner add up to 1 too). At the canvas edges (no neighbour) there is no ramp.
    """
    lo, hi = index * block, (index + 1) * block
    centre = coord.astype(np.float64) + 0.5
    weight = np.ones(coord.shape, np.float64)
    if blend == 0:
        inside = (centre > lo if index > 0 else True) & (centre < hi if index < count - 1 else True)
        return weight * inside
    if index > 0:
        weight *= _ramp((centre - (lo - blend)) / (2 * blend))
    if index < count - 1:
        weight *= _ramp(((hi + blend) - centre) / (2 * blend))
    return weight


def block_seed(seed: int, step: int, bx: int, by: int) -> int:
    """The sampling seed of one block: a hash of (seed, step, block index), never of the request order."""
    digest = hashlib.blake2b(f"{seed}:{step}:{bx}:{by}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) of two uint8 images, capped at 100 dB (equal images; JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse <= 255.0**2 * 1e-10 else min(100.0, 10 * math.log10(255.0**2 / mse))


def downsample2(image: np.ndarray) -> np.ndarray:
    """2× box downsampling of a uint8 image with even sides."""
    h, w = image.shape[:2]
    x = image.astype(np.float64).reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def model_digest(pipe) -> str:
    """A cheap identity of a pipeline's weights: config, and every tensor's name, shape and first values."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(pipe.config), sort_keys=True, default=str).encode())
    for name in ("unet", "vae", "summarizer"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            h.update(f"{name}.{key}{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _seam_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Seam vs interior statistics of a level record (see the module docstring)."""
    inside = [b["interior"] for b in record["blocks"].values() if "interior" in b]
    seams = list(record.get("pairs", {}).values())
    result: dict[str, Any] = {"pairs": len(seams)}
    inside_n = sum(n for _, n in inside)
    seam_n = sum(n for _, n in seams)
    if inside_n:
        result["interior_mae"] = round(sum(v for v, _ in inside) / inside_n, 3)
    if seam_n:
        result["seam_mae"] = round(sum(v for v, _ in seams) / seam_n, 3)
        if result.get("interior_mae"):
            result["seam_ratio"] = round(result["seam_mae"] / result["interior_mae"], 3)
    return result


def seam_statistics(image: np.ndarray, block: int) -> dict[str, float]:
    """The seam statistic of a whole served level (uint8 ``[H, W, 3]``) cut in blocks of ``block`` px:
    ``seam_mae`` over the adjacent column (row) pairs that straddle a block border, ``interior_mae`` over the
    others, ``seam_ratio`` their quotient (what the level record accumulates block by block)."""
    x = image.astype(np.float64)
    dx, dy = np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0))
    cx = (np.arange(1, x.shape[1]) % block) == 0  # pair (c-1, c) straddles a border when c % block == 0
    cy = (np.arange(1, x.shape[0]) % block) == 0
    seam = dx[:, cx].sum() + dy[cy].sum()
    seam_n = dx[:, cx].size + dy[cy].size
    inside = dx[:, ~cx].sum() + dy[~cy].sum()
    inside_n = dx[:, ~cx].size + dy[~cy].size
    result = {"interior_mae": round(float(inside / inside_n), 3) if inside_n else float("nan")}
    if seam_n:
        result["seam_mae"] = round(float(seam / seam_n), 3)
        result["seam_ratio"] = round(result["seam_mae"] / result["interior_mae"], 3)
    return result


class BlockError(RuntimeError):
    """Generating a block failed (the model raised); the message says which block and why."""


class Explorer:
    """Deep Zoom tiles of ``image`` at ``source`` and of the finer magnifications generated on request.

    Args:
        pipe: a :class:`~zoomldm.pipeline.ZoomLDMPipeline`.
        image: path or uint8 ``[H, W, 3]`` array at ``source``.
        source: the image's magnification (a level of the model, e.g. ``"5x"``).
        target: the finest level to generate (default the model's finest; must be finer than ``source``).
        cache: cache folder (default ``<image>.explore`` beside a path; required for an array).
        seed: sampling seed. window_patches, ring, tile_size, blend: :class:`Geometry`.
        model_id: identity of the model in the fingerprint (default :func:`model_digest`).
        memory_blocks: finished blocks kept in memory. name: the image's name on the page.
        **settings: super-resolution settings by CLI name (``t0``, ``stride``, ``inner_steps``,
            ``inversion_steps``, ``no_postprocess``, …; :data:`zoomldm.sampling.settings.OPTIONS`).

    Raises:
        InputError: the image is missing, damaged or not RGB. ConfigError: bad levels or settings.
    """

    def __init__(
        self,
        pipe,
        image: str | os.PathLike[str] | np.ndarray,
        source: str | int,
        target: str | int | None = None,
        *,
        cache: str | os.PathLike[str] | None = None,
        seed: int = 0,
        window_patches: int = 2,
        ring: int | None = None,
        tile_size: int = TILE_SIZE,
        blend: int | None = None,
        model_id: str | None = None,
        memory_blocks: int = 32,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        from ..sampling.levels import parse_level
        from ..sampling.reference import read_image
        from ..sampling.settings import large_image_settings
        from ..sampling.superres import SRConfig

        self.pipe = pipe
        if isinstance(image, str | os.PathLike):
            self.image_path: Path | None = Path(image)
            self.image = read_image(self.image_path, what="image")
        else:
            self.image_path = None
            self.image = read_image(image, what="image")
        self.name = name or (self.image_path.name if self.image_path else "image")
        self.source = parse_level(pipe, source, "--from")
        self.target = parse_level(pipe, target, "--to") if target is not None else pipe.scales[0]
        if self.target.index >= self.source.index:
            raise ConfigError(
                f"--to {self.target.name} must be finer than --from {self.source.name} "
                f"(this model's levels: {', '.join(pipe.scales.names)})"
            )
        self.levels = [pipe.scales[i] for i in range(self.source.index, self.target.index - 1, -1)]
        for coarse, fine in zip(self.levels, self.levels[1:], strict=False):
            if not math.isclose(coarse.downsample / fine.downsample, 2.0):
                raise ConfigError(
                    f"levels {coarse.name} → {fine.name} are not a factor 2 apart; the explorer needs "
                    "one Deep Zoom level per magnification step"
                )
        height, width = self.image.shape[:2]
        patch = pipe.config.image_size
        self.geometry = Geometry(
            width, height, len(self.levels) - 1, patch, window_patches, ring, tile_size, blend
        )
        self.settings = large_image_settings(pipe, sampling_cls=SRConfig, **settings)
        self.seed = int(seed)
        self.model_id = model_id or model_digest(pipe)
        record = {
            "format": FORMAT_VERSION,
            "image_sha256": hashlib.sha256(self.image.tobytes()).hexdigest(),
            "image_shape": list(self.image.shape),
            "levels": [m.name for m in self.levels],
            "model": self.model_id,
            "settings": dataclasses.asdict(self.settings),
            "seed": self.seed,
            "geometry": dataclasses.asdict(self.geometry),
        }
        self.fingerprint = hashlib.sha256(
            json.dumps(record, sort_keys=True, default=str).encode()
        ).hexdigest()
        if cache is None:
            if self.image_path is None:
                raise ConfigError("cache= is required when the image is an array (a folder for the blocks)")
            cache = self.image_path.with_name(self.image_path.name + ".explore")
        self.cache_root = Path(cache)
        self.cache_dir = self.cache_root / self.fingerprint[:16]
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.cache_dir / "explorer.json") as tmp:
                tmp.write_text(json.dumps(record, indent=1, default=str))
        except OSError as err:
            raise ConfigError(
                f"--cache {self.cache_root}: cannot write there ({err.strerror}); pass another --cache"
            ) from err

        self.note: str | None = None  #: set by serve(): the line saying the embedded model is used
        self.generated = 0  #: blocks computed by this instance (0 after a restart over a full cache)
        self._lock = threading.Lock()
        self._json_lock = threading.Lock()
        self._pending: dict[tuple[int, int, int], Future] = {}
        self._queue: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
        self._memory: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._memory_blocks = memory_blocks
        self._pyramid: dict[int, np.ndarray] = {self.geometry.image_level: self.image}
        self._running: dict[str, Any] | None = None
        self._durations: list[float] = []
        self._errors: list[str] = []
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="zoomldm-explorer", daemon=True)
        self._worker.start()

    # -- geometry helpers ------------------------------------------------------------------------------
    @property
    def max_level(self) -> int:
        return self.geometry.max_level

    def step_of(self, level: int) -> int:
        """Generated step of Deep Zoom ``level`` (≤ 0: a level of the image's own pixels)."""
        return level - self.geometry.image_level

    def block_path(self, step: int, bx: int, by: int) -> Path:
        return self.cache_dir / self.levels[step].key / f"{bx}_{by}.png"

    def level_record_path(self, step: int) -> Path:
        return self.cache_dir / f"{self.levels[step].key}.json"

    def has_block(self, step: int, bx: int, by: int) -> bool:
        return (step, bx, by) in self._memory or self.block_path(step, bx, by).is_file()

    def blocks_for(self, step: int, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int, int]]:
        """Blocks of ``step`` whose generations enter the served pixels of the box ``[x0, x1) × [y0, y1)``
        (inside the canvas): the blocks under it, and the neighbours whose blend zone reaches into it."""
        g = self.geometry
        b, e = g.block, g.blend
        cols, rows = g.step_blocks(step)
        return [
            (step, bx, by)
            for by in range(max(0, (y0 - e) // b), min(rows - 1, (y1 - 1 + e) // b) + 1)
            for bx in range(max(0, (x0 - e) // b), min(cols - 1, (x1 - 1 + e) // b) + 1)
        ]

    def tile_blocks(self, level: int, col: int, row: int) -> list[tuple[int, int, int]] | None:
        """Blocks a tile needs (empty for image levels), or None when the tile is outside the pyramid."""
        if not 0 <= level <= self.max_level:
            return None
        cols, rows = self.geometry.level_tiles(level)
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        step = self.step_of(level)
        if step <= 0:
            return []
        x0, y0, x1, y1 = self._tile_box(level, col, row)
        return self.blocks_for(step, x0, y0, x1, y1)

    def _tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        t = self.geometry.tile_size
        w, h = self.geometry.level_size(level)
        return col * t, row * t, min((col + 1) * t, w), min((row + 1) * t, h)

    # -- pixels ----------------------------------------------------------------------------------------
    def _image_level(self, level: int) -> np.ndarray:
        from PIL import Image

        with self._lock:
            found = self._pyramid.get(level)
        if found is not None:
            return found
        w, h = self.geometry.level_size(level)
        array = np.asarray(Image.fromarray(self.image).resize((w, h), Image.Resampling.BOX))
        with self._lock:
            self._pyramid[level] = array
        return array

    def _read_block(self, key: tuple[int, int, int]) -> np.ndarray | None:
        from PIL import Image

        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return found
        path = self.block_path(*key)
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            return None
        self._remember(key, array)
        return array

    def _remember(self, key: tuple[int, int, int], array: np.ndarray) -> None:
        with self._lock:
            self._memory[key] = array
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_blocks:
                self._memory.popitem(last=False)

    def region(self, step: int, x0: int, y0: int, w: int, h: int, *, inline: bool = False) -> np.ndarray:
        """The served pixels ``[y0, y0+h) × [x0, x0+w)`` of generated step ``step`` (0 = the image), mirrored
        at the canvas edges: each pixel is the :func:`feather`-weighted sum of the generations of the blocks
        that cover it (one block inside a block, 2 across a border, 4 at a corner), rounded to uint8.
        ``inline``: compute missing blocks in this thread (the worker does), else wait for them through the
        worker."""
        g = self.geometry
        gw, gh = g.width << step, g.height << step
        ys = _mirror(np.arange(y0, y0 + h), gh)
        xs = _mirror(np.arange(x0, x0 + w), gw)
        if step == 0:
            return self.image[np.ix_(ys, xs)]
        b, m = g.block, g.margin
        cols, rows = g.step_blocks(step)
        out = np.zeros((h, w, 3), np.float64)
        for _, bx, by in self.blocks_for(
            step, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        ):
            wy, wx = feather(ys, by, rows, b, g.blend), feather(xs, bx, cols, b, g.blend)
            sy, sx = wy > 0, wx > 0
            if not (sy.any() and sx.any()):
                continue
            key = (step, bx, by)
            generation = self._ensure(key) if inline else self.generation(*key)
            part = generation[np.ix_(ys[sy] - by * b + m, xs[sx] - bx * b + m)].astype(np.float64)
            out[np.ix_(sy, sx)] += wy[sy, None, None] * wx[None, sx, None] * part
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def tile_array(self, level: int, col: int, row: int, timeout: float | None = None) -> np.ndarray | None:
        """One tile as uint8 ``[h, w, 3]`` (None outside the pyramid); waits for missing blocks.

        Raises:
            TimeoutError: the blocks were not ready within ``timeout`` seconds (they keep generating).
            BlockError: generating a block failed.
        """
        keys = self.tile_blocks(level, col, row)
        if keys is None:
            return None
        x0, y0, x1, y1 = self._tile_box(level, col, row)
        if not keys:
            return self._image_level(level)[y0:y1, x0:x1]
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [self.request(*key) for key in keys]
        for future in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future.result(timeout=left)
            except FutureTimeout:
                raise TimeoutError("blocks still generating") from None
        return self.region(self.step_of(level), x0, y0, x1 - x0, y1 - y0)

    def tile_png(self, level: int, col: int, row: int, timeout: float | None = None) -> bytes | None:
        """:meth:`tile_array` encoded as PNG (lossless: the cached pixels, exactly)."""
        import io

        from PIL import Image

        array = self.tile_array(level, col, row, timeout=timeout)
        if array is None:
            return None
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    # -- the worker ------------------------------------------------------------------------------------
    def request(self, step: int, bx: int, by: int) -> Future:
        """A future of block ``(bx, by)`` of ``step``: done at once when cached, else queued once."""
        key = (step, bx, by)
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                return pending
        if self.block_path(*key).is_file() or key in self._memory:
            done: Future = Future()
            done.set_result(None)
            return done
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = Future()
                self._queue.put(key)
            return pending

    def block(self, step: int, bx: int, by: int, timeout: float | None = None) -> np.ndarray:
        """The served (blended) pixels of block ``(bx, by)``'s footprint (``B × B``, mirrored past the canvas)
        of generated ``step`` (1 = first generated level); missing blocks are computed by the worker."""
        g = self.geometry
        for key in self.blocks_for(step, bx * g.block, by * g.block, (bx + 1) * g.block, (by + 1) * g.block):
            self.generation(*key, timeout=timeout)
        return self.region(step, bx * g.block, by * g.block, g.block, g.block)

    def generation(self, step: int, bx: int, by: int, timeout: float | None = None) -> np.ndarray:
        """Block ``(bx, by)``'s whole generation (``2·window`` px: its footprint + ``2·ring`` px on every side)
        of generated ``step``, as cached; computed by the worker when missing."""
        cols, rows = self.geometry.step_blocks(step)
        if not (1 <= step < len(self.levels) and 0 <= bx < cols and 0 <= by < rows):
            raise InputError(f"block {step}/{bx}_{by} is outside the pyramid ({len(self.levels) - 1} steps)")
        found = self._read_block((step, bx, by))
        if found is not None:
            return found
        self.request(step, bx, by).result(timeout=timeout)
        found = self._read_block((step, bx, by))
        if found is None:
            raise BlockError(f"block {step}/{bx}_{by} vanished from the cache {self.cache_dir}")
        return found

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            with self._lock:
                future = self._pending.get(key)
            if self._closed:
                with self._lock:
                    self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(BlockError("the explorer was closed"))
                continue
            try:
                self._ensure(key)
            except BaseException as err:  # noqa: BLE001 — reported to the waiting request, never lost
                message = f"block {self.levels[key[0]].name} {key[1]}_{key[2]}: {type(err).__name__}: {err}"
                with self._lock:
                    self._errors.append(message)
                    self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(BlockError(message))
                continue
            self._resolve(key)

    def _resolve(self, key: tuple[int, int, int]) -> None:
        """Mark a pending request of ``key`` done (it may have been computed inline, as a parent)."""
        with self._lock:
            future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _ensure(self, key: tuple[int, int, int]) -> np.ndarray:
        """Block ``key``'s whole generation from the cache, or generated now in this thread (the worker)."""
        found = self._read_block(key)
        if found is not None:
            return found
        step, bx, by = key
        g = self.geometry
        half = g.block // 2
        parent = self.region(
            step - 1, bx * half - g.ring, by * half - g.ring, g.window, g.window, inline=True
        )
        with self._lock:
            self._running = {"level": self.levels[step].name, "block": [bx, by], "since": time.monotonic()}
        start = time.perf_counter()
        try:
            window = self._generate(step, bx, by, parent)
        finally:
            with self._lock:
                self._running = None
        seconds = time.perf_counter() - start
        window = np.ascontiguousarray(window)
        self._write_block(key, window, parent[g.ring : g.ring + half, g.ring : g.ring + half], seconds)
        with self._lock:
            self.generated += 1
            self._durations.append(seconds)
        self._resolve(key)
        return window

    def _generate(self, step: int, bx: int, by: int, parent: np.ndarray) -> np.ndarray:
        """Super-resolve one parent window (uint8 ``[window, window, 3]``) one level finer."""
        s = self.settings
        result = self.pipe.super_resolve(
            parent,
            self.levels[step - 1],
            self.levels[step],
            config=s.sampling,
            postprocess=s.postprocess if s.postprocess is not None else False,
            decode=s.decode,
            inversion=s.inversion,
            seed=block_seed(self.seed, step, bx, by),
            resume=False,
            progress=False,
        )
        window = np.asarray(result.image)
        expected = (2 * self.geometry.window, 2 * self.geometry.window, 3)
        if window.shape != expected:
            raise BlockError(f"super-resolution returned {window.shape}, expected {expected}")
        return window

    # -- the consistency record ------------------------------------------------------------------------
    def _visible_size(self, step: int, bx: int, by: int) -> tuple[int, int]:
        """``(w, h)`` of the part of block ``(bx, by)``'s footprint inside the canvas (edge blocks reach past)."""
        g = self.geometry
        return min(g.block, (g.width << step) - bx * g.block), min(g.block, (g.height << step) - by * g.block)

    def _write_block(
        self, key: tuple[int, int, int], generation: np.ndarray, parent: np.ndarray, seconds: float
    ) -> None:
        """Cache a block's generation, then update the level record: the block's PSNR, and the seam
        statistics of the blocks whose served pixels became final with it (see :meth:`_settle`)."""
        from PIL import Image

        step, bx, by = key
        g = self.geometry
        w, h = self._visible_size(step, bx, by)
        w2, h2 = (w + 1) // 2 * 2, (h + 1) // 2 * 2
        centre = generation[g.margin : g.margin + h2, g.margin : g.margin + w2]
        score = psnr(downsample2(centre), parent[: h2 // 2, : w2 // 2])
        path = self.block_path(*key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".png") as tmp:
            Image.fromarray(generation).save(tmp, format="PNG", compress_level=1)
        self._remember(key, generation)
        with self._json_lock:
            record = self.level_record(step)
            record["blocks"][f"{bx}_{by}"] = {
                "psnr_db": round(score, 3),
                "seconds": round(seconds, 3),
                "seed": block_seed(self.seed, step, bx, by),
            }
            self._settle(record, step, bx, by)
            record["seam"] = _seam_summary(record)
            values = [b["psnr_db"] for b in record["blocks"].values()]
            record["psnr_db_mean"] = round(float(np.mean(values)), 3)
            record["psnr_db_min"] = round(float(np.min(values)), 3)
            with atomic_path(self.level_record_path(step), suffix=".json") as tmp:
                tmp.write_text(json.dumps(record, indent=1))

    def _settle(self, record: dict[str, Any], step: int, bx: int, by: int) -> None:
        """Seam statistics over *served* pixels, added once they are final: a block's served pixels are final
        when every block whose generation enters them is generated. For each block that became final with
        ``(bx, by)``: ``interior`` = ``[Σ|Δ|, count]`` of adjacent columns and rows inside its footprint; for
        each pair of 4-adjacent final blocks: ``pairs`` = ``[Σ|Δ|, count]`` of the two columns (rows) that meet
        at their border. Each is a fixed function of the generations, so the order of generation does not
        change the totals."""
        g = self.geometry
        b = g.block
        cols, rows = g.step_blocks(step)
        blocks, pairs = record["blocks"], record.setdefault("pairs", {})
        served: dict[tuple[int, int], np.ndarray] = {}
        for ny in range(max(0, by - 1), min(rows, by + 2)):
            for nx in range(max(0, bx - 1), min(cols, bx + 2)):
                entry = blocks.get(f"{nx}_{ny}")
                if entry is None or "interior" in entry:
                    continue
                w, h = self._visible_size(step, nx, ny)
                needed = self.blocks_for(step, nx * b, ny * b, nx * b + w, ny * b + h)
                if any(f"{k[1]}_{k[2]}" not in blocks for k in needed):
                    continue
                pixels = self.region(step, nx * b, ny * b, w, h, inline=True).astype(np.float64)
                served[(nx, ny)] = pixels
                dx, dy = np.abs(np.diff(pixels, axis=1)), np.abs(np.diff(pixels, axis=0))
                entry["interior"] = [float(dx.sum() + dy.sum()), int(dx.size + dy.size)]
                for mx, my in ((nx - 1, ny), (nx + 1, ny), (nx, ny - 1), (nx, ny + 1)):
                    if "interior" not in blocks.get(f"{mx}_{my}", {}):
                        continue
                    other = served.get((mx, my))
                    if other is None:
                        ow, oh = self._visible_size(step, mx, my)
                        other = self.region(step, mx * b, my * b, ow, oh, inline=True).astype(np.float64)
                    (a, ax, ay), (c, cx, cy) = sorted(
                        [(pixels, nx, ny), (other, mx, my)], key=lambda v: (v[2], v[1])
                    )
                    d = np.abs(a[:, -1] - c[:, 0]) if ay == cy else np.abs(a[-1] - c[0])
                    pairs[f"{ax}_{ay}|{cx}_{cy}"] = [float(d.sum()), int(d.size)]

    def level_record(self, step: int) -> dict[str, Any]:
        """The JSON record of generated ``step`` (PSNR per block, seams), or a fresh one."""
        path = self.level_record_path(step)
        if path.is_file():
            return json.loads(path.read_text())
        return {
            "level": self.levels[step].name,
            "parent": self.levels[step - 1].name,
            "block": self.geometry.block,
            "ring": self.geometry.ring,
            "blend": self.geometry.blend,
            "psnr": "2x box-downsampled block vs the parent pixels it was generated under (dB)",
            "blocks": {},
            "pairs": {},
        }

    # -- status ----------------------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        """What the worker is doing: queued blocks, the running one (elapsed), mean seconds per block."""
        with self._lock:
            running = dict(self._running) if self._running else None
            pending = len(self._pending)
            durations = list(self._durations)
            errors = self._errors[-5:]
        if running:
            running["elapsed_s"] = round(time.monotonic() - running.pop("since"), 2)
        return {
            "pending": pending,
            "running": running,
            "generated": len(durations),
            "mean_block_s": round(float(np.mean(durations)), 3) if durations else None,
            "errors": errors,
        }

    def info(self) -> dict[str, Any]:
        """Sizes, levels and cache of this explorer (the page's ``info.json``)."""
        g = self.geometry
        return {
            "name": self.name,
            "width": g.width << g.steps,
            "height": g.height << g.steps,
            "image": {"width": g.width, "height": g.height, "magnification": self.source.name},
            "levels": [m.name for m in self.levels],
            "dzi_levels": {m.name: g.image_level + k for k, m in enumerate(self.levels)},
            "block": g.block,
            "ring": g.ring,
            "blend": g.blend,
            "seed": self.seed,
            "cache": str(self.cache_dir),
        }

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker: the block it is computing is finished and cached (waited for up to
        ``timeout`` seconds, default as long as it takes), queued ones are dropped."""
        self._closed = True
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=timeout)


def load_model(
    checkpoint: str | os.PathLike[str] | None = None,
    config: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
):
    """The explorer's model, by the package's one default-model rule
    (:func:`zoomldm.models.embedded.default_checkpoint`): ``checkpoint`` (model dir, official file or hub id)
    when given, else ``$ZOOMLDM_CHECKPOINT``, else the published model when cached or reachable, else the
    embedded offline model. Returns ``(pipe, note)``: ``note`` is the rule's one line when it fell back to the
    embedded model (else None). Super-resolution needs no SSL encoder, so none is loaded."""
    from ..models.embedded import default_checkpoint
    from ..pipeline import ZoomLDMPipeline

    notes: list[str] = []
    chosen = default_checkpoint(checkpoint, log=notes.append)
    pipe = ZoomLDMPipeline.from_pretrained(str(chosen), config=config, device=device, dtype=dtype)
    return pipe, (notes[0] if notes else None)
