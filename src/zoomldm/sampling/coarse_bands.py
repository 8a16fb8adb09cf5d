"""The coarse canvas out of core: sliding-window denoising by bands of a zarr canvas, resumable, sharded.

:mod:`.coarse` says what the coarse stage computes; this module is how it runs at any size (issue 24). A
whole slide at 20x makes a coarse canvas of hundreds of patches, whose latents, ε sums, window contexts
and decoded pixels outgrow host memory long before the disk. Here, as in the joint stages (:mod:`.canvas`),
everything lives in one zarr group of the run's state folder (``.<out>.resume/coarse.zarr``, in memory
without an output)::

    latent_0/, latent_1/   [C, rows·L, cols·L] float32, chunk = one *band* (a patch row: C × L × cols·L)
    contexts/              [window rows, window cols, 65, D] float32, chunk = one window row
    pixels/                the decoded canvas [rows·S, cols·S, 3] uint8: the next stage's fixed guide
    done/<step>/<band>     empty markers: band finished in that step (written after its chunk)
    contexts_done/<row>    empty markers: window row's contexts written
    decoded                empty marker: the pixels are complete

**A step, band by band.** Step ``s`` reads ``latent_{s % 2}`` (step 0: the keyed initial noise, never
stored) and writes ``latent_{(s+1) % 2}``. The window rows are visited top to bottom; each window's guided
ε is added to the ε sums of the (at most two) bands it overlaps, and a band is finished — ε averaged by
the separable window count, x̂0, the strided update with its keyed noise, written — as soon as no later
window row reaches it. Memory is a window row's contexts, the ε sums of two bands and the latent rows of
three: O(width), whatever the height.

**The same numbers as the whole-canvas algorithm.** Every window's ε comes from a UNet batch of windows of
its own window row (``window_batch`` at a time), every latent pixel's ε sum is added in the same row-major
window order, and the noise is keyed per patch and step: so the image does not depend on where a run
stopped or how many processes shared it.

**Resume.** A band's chunk is written before its marker. A rerun finds the last recorded step, redoes its
unmarked bands — each run of them starts at the first window row that reaches it, so the ε sums are rebuilt
from the start — and gives the uninterrupted image bit for bit. Contexts are computed once (before the first
step, window row by window row, also marked) and the decode is redone only when unmarked.

**Many processes.** Window rows of contexts, and bands of each step, are split into one contiguous run per
rank (the only work done twice: the window rows that straddle a boundary between two ranks' bands); a
barrier ends each step; rank 0 decodes.

**The reference grid** is read by box: the windows of a chunk of one window row read one box of the grid
(:class:`~zoomldm.io.grids.SSLGridFile` keeps a file-backed grid on disk).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..conditioning import prepare_grid
from ..errors import ConfigError
from ..progress import make_progress, progress_enabled
from .canvas import BlockLayout, TileCanvas, pixel_array
from .conditions import summarize, window_grids
from .decode import DecodeConfig, decode_large_to, window_starts
from .distributed import barrier, rank_world
from .guidance import guided_eps
from .post_bands import _TileNoise
from .post_windows import _axis_counts
from .strided import predict_x0, strided_steps, strided_update

__all__ = ["CoarseRun", "contiguous_share", "run_coarse_canvas"]


@dataclass
class CoarseRun:
    """What a coarse stage produced: the final latent (zarr ``[C, rows·L, cols·L]``), the decoded pixels
    (zarr uint8, None before decoding), and what this process computed."""

    latent: Any
    pixels: Any
    unet_rows: int
    window_rows: int
    bands: int
    seconds: dict


def contiguous_share(n: int, rank: int, world: int) -> range:
    """Items ``0..n−1`` of ``rank`` of ``world``: one contiguous run (the first ``n % world`` ranks get one
    more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class _CoarseState:
    """The coarse stage's zarr group (module docstring) over a :class:`~.canvas.TileCanvas` whose blocks
    are the bands (``bh = 1``, ``bw = cols``)."""

    def __init__(self, canvas: TileCanvas, n_wy: int, n_wx: int, dim: int, pixels_shape) -> None:
        self.canvas = canvas
        root = canvas.root
        if rank_world()[0] == 0 and "contexts" not in root:  # rank 0 creates, the others wait (barrier)
            root.create_array(
                "contexts",
                shape=(n_wy, n_wx, 65, dim),
                chunks=(1, n_wx, 65, dim),
                dtype="float32",
                fill_value=0.0,
                compressors=None,
            )
        barrier()
        self.contexts = root["contexts"]
        self.pixels_shape = pixels_shape
        self._marks: set[str] = set()  # in-memory markers (folder None)

    # markers beside the canvas' own (done/<step>/<band>)
    def _path(self, name: str) -> Path | None:
        return None if self.canvas.folder is None else self.canvas.folder / name

    def marked(self, name: str) -> bool:
        path = self._path(name)
        return name in self._marks if path is None else path.exists()

    def mark(self, name: str) -> None:
        path = self._path(name)
        if path is None:
            self._marks.add(name)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def pixels(self, create: bool) -> Any:
        root = self.canvas.root
        if create:
            h, w = self.pixels_shape
            return pixel_array(root, "pixels", h, w, 1024)
        return root["pixels"]


#: bytes of the reference grid one read of a window row's windows may take (at least one window's region)
GRID_READ_BYTES = 64 * 2**20


def windows_per_read(channels: int, g: int, step_tiles: int, batch: int) -> int:
    """Windows of one window row whose grid region is read at once: up to ``batch``, while the box (``g``
    rows × ``g + (n − 1)·step_tiles`` columns of ``channels`` float32) stays within :data:`GRID_READ_BYTES`."""
    n = batch
    while n > 1 and channels * g * (g + (n - 1) * step_tiles) * 4 > GRID_READ_BYTES:
        n -= 1
    return n


def grid_read_bytes(channels: int, g: int, step_tiles: int, batch: int) -> int:
    """Bytes of the largest grid box :func:`_window_row_contexts` reads."""
    n = windows_per_read(channels, g, step_tiles, batch)
    return channels * g * (g + (n - 1) * step_tiles) * 4


def _window_row_contexts(pipe, grid, mag, y: int, xs: list[int], chunk: int) -> torch.Tensor:
    """Contexts ``[len(xs), 65, D]`` of the windows at latent row ``y``: each window's ``g × g`` region of the
    grid, pooled and standardised as the guide's (a half-tile offset, odd ``g`` only: interpolated as the
    post-processing windows). ``chunk`` windows per Summarizer call; the grid is read in boxes of
    :func:`windows_per_read` windows."""
    L, g = pipe.config.latent_size, mag.grid_size
    step_tiles = max((xs[1] - xs[0]) * g // L, 1) if len(xs) > 1 else g
    per_read = windows_per_read(int(grid.shape[0]), g, step_tiles, chunk)
    parts = []
    for i in range(0, len(xs), chunk):
        batch = xs[i : i + chunk]
        grids = []
        for k in range(0, len(batch), per_read):
            part = batch[k : k + per_read]
            if (y * g) % L == 0 and all((x * g) % L == 0 for x in part):
                r, c0, c1 = y * g // L, part[0] * g // L, part[-1] * g // L + g
                box = grid[:, r : r + g, c0:c1]  # one read for the part's windows
                grids += [prepare_grid(box[:, :, x * g // L - c0 : x * g // L - c0 + g]) for x in part]
            else:  # a half-tile offset (odd g): interpolated, window by window
                grids += [window_grids(grid, torch.tensor([[y, x]]), L, mag)[0] for x in part]
        parts.append(summarize(pipe, grids, mag).float().cpu())
    return torch.cat(parts)


def run_coarse_canvas(
    pipe,
    mag,
    grid: Any,
    rows: int,
    cols: int,
    *,
    folder: Path | None,
    fingerprint: str,
    fresh: bool,
    seed: int,
    config,
    window_batch: int,
    window_stride: int,
    decode: DecodeConfig | None,
    progress: bool,
) -> CoarseRun:
    """Sample (and with ``decode``, decode) the coarse canvas in ``folder`` (None: in memory), continuing
    from its state there when ``fingerprint`` matches and not ``fresh`` (module docstring)."""
    started = time.perf_counter()
    L, C, S = pipe.config.latent_size, pipe.unet.config.in_channels, pipe.config.image_size
    ys, xs = window_starts(rows * L, L, window_stride), window_starts(cols * L, L, window_stride)
    layout = BlockLayout(rows, cols, 1, cols, C, L)
    canvas = TileCanvas.open(folder, layout, fingerprint, fresh=fresh)
    rank, world = rank_world()
    state = _CoarseState(canvas, len(ys), len(xs), pipe.config.context_dim, (rows * S, cols * S))
    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    device = pipe.device
    bar = make_progress() if progress_enabled(progress) else None
    seconds: dict[str, float] = {}
    unet_rows = window_rows = bands_done = 0
    with bar if bar is not None else contextlib.nullcontext(), torch.no_grad():
        # 1. the window contexts, once, window row by window row (each rank its share)
        t = time.perf_counter()
        mine = [j for j in contiguous_share(len(ys), rank, world) if not state.marked(f"contexts_done/{j}")]
        task = bar.add_task(f"coarse canvas {rows}×{cols}: contexts", total=len(mine)) if bar else None
        for j in mine:
            state.contexts[j] = _window_row_contexts(pipe, grid, mag, ys[j], xs, window_batch).numpy()
            state.mark(f"contexts_done/{j}")
            if bar:
                bar.advance(task)
        barrier()
        seconds["contexts"] = time.perf_counter() - t

        # 2. the strided steps, band by band (each rank its contiguous share of the bands)
        t = time.perf_counter()
        start, finished = canvas.resume_point(list(range(rows)))
        barrier()  # every rank has read the record before any writes to it
        share = list(contiguous_share(rows, rank, world))
        count_y = _axis_counts(rows * L, ys, L).to(device)
        count_x = _axis_counts(cols * L, xs, L).to(device)
        s_guid = config.guidance_w + 1.0
        task = (
            bar.add_task(f"coarse canvas {rows}×{cols}: steps", total=len(steps), completed=start)
            if bar
            else None
        )
        for s in range(start, len(steps)):
            todo = [b for b in share if not (s == start and b in finished)]
            step = steps[s]
            src = _Source(canvas, s, seed, C, L, rows, cols, device)
            xi = _TileNoise(seed, "guide_step", step.index, (C, rows * L, cols * L), L, cols, (0, 0))
            for a, b in _runs(todo):
                n_rows, n_windows = _sample_bands(
                    pipe.unet,
                    step,
                    s,
                    (a, b),
                    src,
                    canvas.latent(s + 1),
                    xi,
                    state.contexts,
                    (ys, xs, L),
                    (count_y, count_x),
                    window_batch,
                    s_guid,
                    config.variance_preserving_update,
                    canvas,
                )
                window_rows += n_rows
                unet_rows += n_windows * (1 if config.guidance_w == 0 else 2)
                bands_done += b - a
            barrier()
            if rank == 0 and s > 0:
                canvas.drop_step(s - 1)
            if bar:
                bar.advance(task)
        seconds["sampling"] = time.perf_counter() - t
        latent = canvas.latent(len(steps))

        # 3. decode (rank 0; the others wait): the next stage's fixed guide, on disk
        pixels = None
        if decode is not None:
            t = time.perf_counter()
            if rank == 0 and not state.marked("decoded"):
                pixels = state.pixels(create=True)
                sink = lambda y, rows_: pixels.__setitem__(slice(y, y + rows_.shape[0]), rows_)  # noqa: E731
                decode_large_to(pipe.vae, latent, sink, decode, output="uint8", progress=progress)
                state.mark("decoded")
            barrier()
            pixels = state.pixels(create=False)
            seconds["decode"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return CoarseRun(latent, pixels, unet_rows, window_rows, bands_done, seconds)


def _runs(items: list[int]) -> list[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of consecutive integers in sorted ``items``."""
    out: list[tuple[int, int]] = []
    for i in sorted(items):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class _Source:
    """The latent rows of one band at the start of step ``s``: the keyed initial noise at step 0 (patch
    ``r·cols + c``, stream ``guide_init``), else the canvas buffer ``s % 2``."""

    def __init__(self, canvas: TileCanvas, s: int, seed: int, C: int, L: int, rows: int, cols: int, device):
        self.L, self.device = L, device
        self.array = canvas.latent(s) if s > 0 else None
        self.noise = (
            _TileNoise(seed, "guide_init", 0, (C, rows * L, cols * L), L, cols, (0, 0)) if s == 0 else None
        )

    def band(self, r: int) -> torch.Tensor:
        L = self.L
        if self.noise is not None:
            return self.noise.rows(r * L, (r + 1) * L).to(self.device)
        return torch.from_numpy(np.asarray(self.array[:, r * L : (r + 1) * L, :])).to(self.device)


def _sample_bands(
    unet, step, s, span, src, dst, xi, contexts, windows, counts, window_batch, s_guid, vp, canvas
) -> tuple[int, int]:
    """Bands ``[a, b)`` of step ``s`` (module docstring); returns (window rows, windows) evaluated."""
    (a, b), (ys, xs, L), (count_y, count_x) = span, windows, counts
    device = count_y.device
    C, W = int(dst.shape[0]), int(dst.shape[2])
    t = torch.tensor(float(step.t), device=device)  # float t, as the guide patch's ε
    rows = [j for j, y in enumerate(ys) if y + L > a * L and y < b * L]
    sums: dict[int, torch.Tensor] = {}
    latents: dict[int, torch.Tensor] = {}
    windows_done = 0

    def band(r: int) -> torch.Tensor:
        if r not in latents:
            latents[r] = src.band(r)
        return latents[r]

    def finish(r: int) -> None:
        x = band(r)
        eps = sums.pop(r) / (count_y[r * L : (r + 1) * L, None] * count_x[None, :])
        x0 = predict_x0(x, eps, step)
        new = strided_update(x0, eps, xi.rows(r * L, (r + 1) * L).to(device), step, vp)
        dst[:, r * L : (r + 1) * L, :] = new.float().cpu().numpy()  # the band's whole chunk, then its marker
        canvas.mark_done(s, r)

    emitted = a
    for n, j in enumerate(rows):
        y = ys[j]
        r_top, r_bottom = y // L, (y + L - 1) // L
        stack = torch.cat([band(r) for r in range(r_top, r_bottom + 1)], dim=1)
        xrow = stack[:, y - r_top * L : y - r_top * L + L]
        ctx = torch.from_numpy(np.asarray(contexts[j])).to(device)
        for i in range(0, len(xs), window_batch):
            batch = xs[i : i + window_batch]
            xw = torch.stack([xrow[:, :, x : x + L] for x in batch])
            e = guided_eps(unet, xw, t, ctx[i : i + len(batch)], s_guid)
            windows_done += len(batch)
            for x, ew in zip(batch, e, strict=True):  # fixed (row-major) summation order
                for r in range(max(r_top, a), min(r_bottom, b - 1) + 1):
                    lo, hi = max(y, r * L), min(y + L, (r + 1) * L)
                    if r not in sums:
                        sums[r] = torch.zeros(C, L, W, device=device)
                    sums[r][:, lo - r * L : hi - r * L, x : x + L] += ew[:, lo - y : hi - y].float()
        following = ys[rows[n + 1]] if n + 1 < len(rows) else None
        while emitted < b and (following is None or following >= (emitted + 1) * L):
            finish(emitted)
            emitted += 1
        low = following // L if following is not None else b
        for r in [r for r in latents if r < min(low, emitted)]:
            del latents[r]
    if emitted != b:
        raise ConfigError(f"coarse bands {a}..{b}: {b - emitted} were not finished")  # a bug, not an input
    return len(rows), windows_done
