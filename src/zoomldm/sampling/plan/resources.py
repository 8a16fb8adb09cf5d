"""Host memory, GPU memory and disk of a run, term by term (:class:`Term`): :func:`_host_terms`,
:func:`_gpu_terms` and :func:`_disk_terms` compute every term of the out-of-core memory model, so a term that
turns out wrong in a measurement can be found and corrected in one place; :func:`format_bytes` writes
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import _ConfigPipe
from .probes import process_rss_bytes
from .profile import _dtype_bytes
from .stages import COARSE_WINDOW_BATCH

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
#: bytes of one float32 value
F32 = 4


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
    from ...io.tiff import TIFF_TILE

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
    if coarse is not None:  # one window row: its contexts, the bands it overlaps, a window batch
        cost = _coarse_cost(cfg, coarse, settings)
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
        phases[COARSE_PHASE] = coarse_bytes
    phase, peak_phase = max(phases.items(), key=lambda kv: kv[1])
    grid_note = "reference grid, or the inverted grid of every input patch"
    if coarse is not None:
        grid_note = "read by block from the reference file (.npy / .safetensors; a .pt grid is read whole)"
    from ..results import MAX_GUIDE_IN_MEMORY

    guide_px = max(s.canvas_rows * (s.tile_px // s.k) * s.canvas_cols * (s.tile_px // s.k) for s in stages)
    terms += [
        Term("SSL grid of the request", grid_bytes, grid_note),
        Term("low-resolution input image", input_bytes, "uint8, read whole")
        if sr
        else Term("guide patch", lat + pix)
        if coarse is None
        else Term(
            "guide image returned",
            guide_px * 3 if guide_px <= MAX_GUIDE_IN_MEMORY else 0,
            f"a fixed guide up to {MAX_GUIDE_IN_MEMORY:,} px is returned (and written as PNG); larger ones "
            "stay on disk",
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


#: the coarse stage's phase in the plan (its window row, the bands it overlaps and a window batch)
COARSE_PHASE = "coarse canvas: one window row + its bands"


def _coarse_cost(cfg, coarse, settings):
    from ..coarse import coarse_canvas_cost

    return coarse_canvas_cost(
        _ConfigPipe(cfg),
        coarse.rows,
        coarse.cols,
        settings.sampling,
        settings.decode,
        level=coarse.level,
        window_batch=COARSE_WINDOW_BATCH,
    )


def _grid_bytes(cfg, stages, sr, coarse=None) -> int:
    first = stages[0]
    if coarse is not None:  # the reference grid covers the whole request and stays on disk: one block read
        from ..coarse_bands import grid_read_bytes

        g, L = coarse.level.grid_size, cfg.latent_size
        step_tiles = max(max(L // 4, 1) * g // L, 1)
        coarse_box = grid_read_bytes(cfg.ssl_channels, g, step_tiles, COARSE_WINDOW_BATCH)
        tile_box = max(16 * s.target.grid_size**2 for s in stages) * cfg.ssl_channels * F32  # ≤ 16 tiles
        return max(coarse_box, tile_box)
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


def _disk_terms(cfg, stages, settings, output_bytes, is_tiff, final, sr, coarse=None) -> list[Term]:
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
    if coarse is not None:
        terms.append(
            Term(
                "coarse canvas",
                _coarse_cost(cfg, coarse, settings).disk_bytes,
                "latents (double buffer), window contexts, decoded pixels",
            )
        )
    if is_tiff:
        terms.append(Term("output TIFF", output_bytes, "estimated (io/tiff.py estimated_tiff_bytes)"))
        spool = sum(h * w * 3 for h, w in _level_shapes(final.height, final.width)[1:])
        terms.append(Term("TIFF reduced-level spool", spool, "uint8, removed when the TIFF is complete"))
    elif output_bytes:
        terms.append(Term("output PNG", output_bytes, "at most raw size"))
    return terms


def _level_shapes(h: int, w: int) -> list[tuple[int, int]]:
    from ...io.tiff import level_shapes

    return level_shapes(h, w)


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
