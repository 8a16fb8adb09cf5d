"""What to change when a run does not fit: the largest term of the short resource and the option that
shrinks it (:func:`shrink_advice`), so that a refusal names both (issue 24)."""

from __future__ import annotations

from typing import Any

from .resources import COARSE_PHASE, Term, format_bytes

#: host / GPU memory terms (or phases, by the start of their name) → what shrinks them
_MEMORY_ADVICE: tuple[tuple[str, str], ...] = (
    ("sampling: one block in flight", "lower --tile-batch (tiles per block, {tile_batch} now)"),
    (
        "sampling: one Newton batch",
        "lower --tile-batch (tiles per batch, {tile_batch} now) or use --dtype float16",
    ),
    (
        "post-processing",
        "lower --window-batch ({window_batch} now), or skip seam removal with --no-postprocess",
    ),
    (
        "decode",
        "lower --decode-batch ({decode_batch} now); the decode band itself is O(image width): request a "
        "narrower --region",
    ),
    (COARSE_PHASE, "request a smaller --size (the coarse canvas' window row is O(its width))"),
    ("loading", "convert the official checkpoint to a model folder once (its weights then load by part)"),
    ("model weights", "use --dtype bfloat16 or float16 (half the bytes)"),
    ("SSL grid of the request", "give --reference as a [C, h, w] .npy or .safetensors grid (read by block)"),
    ("image kept in memory", "write --out as a .tif (outputs above 8192² are written, not kept)"),
    ("low-resolution input image", "the input is read whole: crop it into regions (--region)"),
)
#: disk terms → what shrinks them
_DISK_ADVICE: tuple[tuple[str, str], ...] = (
    (
        "post-processing sums",
        "free space{where}, write --out to a larger disk, or skip seam removal (--no-postprocess)",
    ),
    ("output TIFF", "free space{where}, write --out to a larger disk, or use --compression jpeg"),
)


def _largest(terms: list[Term]) -> Term | None:
    return max(terms, key=lambda t: t.bytes) if terms else None


def shrink_advice(what: str, terms: list[Term], settings: Any, where: str) -> str:
    """``the largest term is 'NAME' (SIZE): OPTION`` for the short resource ``what`` (``disk``, ``host
    memory`` or ``GPU memory``); the phase of a "largest phase" term is named itself."""
    term = _largest(terms)
    if term is None:
        return (
            f"free space{where} or write --out to a larger disk" if what == "disk" else "close other programs"
        )
    name = term.name.removeprefix("largest phase: ")
    values = {
        "tile_batch": getattr(settings.sampling, "tile_batch", "?"),
        "window_batch": getattr(settings.postprocess, "window_batch", "?") if settings.postprocess else "-",
        "decode_batch": settings.decode.batch_size,
        "where": where,
    }
    table = _DISK_ADVICE if what == "disk" else _MEMORY_ADVICE
    default = (
        "free space{where} or write --out to a larger disk" if what == "disk" else "close other programs"
    )
    advice = next((a for prefix, a in table if name.startswith(prefix)), default)
    return f"the largest term is '{name}' ({format_bytes(term.bytes)}): {advice.format(**values)}"
