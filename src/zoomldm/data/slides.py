"""The input list of ``zoomldm prepare``: a folder scan or a CSV, with stable slide ids."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from ..errors import InputError, ZoomLDMError
from ..tensorfiles import check_input_file, first_line
from .extract import SlideSource
from .readers import SUPPORTED_EXTENSIONS


def slide_id(path: str | Path) -> str:
    """The store id of a file: its name without extension(s), restricted to ``[A-Za-z0-9._-]``."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"s{name}" if name.startswith("__") or not name else name


def find_slides(
    slides_dir: str | Path, csv_path: str | Path | None = None, mpp: float | None = None
) -> list[SlideSource]:
    """The slides to prepare, sorted by id: every supported file under ``slides_dir`` (recursively), or
    the rows of a CSV with a ``path`` (or ``slide``) column, optional ``id`` and ``mpp`` columns; relative
    paths are taken from ``slides_dir``."""
    root = Path(slides_dir)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InputError(f"--mpp {mpp} must be a positive number (µm/px or m/px)")
    if csv_path is not None:
        sources = _read_csv(Path(csv_path), root, mpp)
    else:
        if not root.is_dir():
            raise ZoomLDMError(f"slides folder not found: {root}")
        files = [p for p in root.rglob("*") if p.is_file() and _supported(p)]
        sources = [SlideSource(slide_id(p), str(p), mpp) for p in files]
    seen: dict[str, str] = {}
    for s in sources:
        if s.id in seen:
            raise ZoomLDMError(
                f"two slides have the id {s.id!r} ({seen[s.id]}, {s.path}); give ids in a CSV 'id' column"
            )
        seen[s.id] = s.path
    if not sources:
        raise ZoomLDMError(
            f"no slides found in {root} (looked for {', '.join(sorted(SUPPORTED_EXTENSIONS))})"
        )
    return sorted(sources, key=lambda s: s.id)


def _supported(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_EXTENSIONS and not path.name.startswith(".")


def _read_csv(path: Path, root: Path, mpp: float | None) -> list[SlideSource]:
    if not path.exists():
        raise InputError(f"slide list not found: {path}")
    check_input_file(path, "slide list (CSV)", InputError)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:  # a binary file or a damaged CSV
        raise InputError(
            f"{path}: not a UTF-8 CSV file ({first_line(err)}); save the slide list as CSV"
        ) from err
    if not rows or not ({"path", "slide"} & set(rows[0])):
        raise ZoomLDMError(
            f"{path.name}: expected a header with a 'path' (or 'slide') column, optional 'id' and 'mpp'"
        )
    sources = []
    for i, row in enumerate(rows, start=2):
        name = (row.get("path") or row.get("slide") or "").strip()
        if not name:
            raise InputError(f"{path.name} line {i}: the 'path' column is empty; give the slide file")
        file = Path(name)
        file = file if file.is_absolute() else root / file
        value = (row.get("mpp") or "").strip()
        try:
            row_mpp = float(value) if value else mpp
        except ValueError:
            raise InputError(f"{path.name} line {i}: mpp {value!r} is not a number") from None
        if row_mpp is not None and not (math.isfinite(row_mpp) and row_mpp > 0):
            raise InputError(f"{path.name} line {i}: mpp {value!r} must be a positive number (µm/px or m/px)")
        sources.append(SlideSource((row.get("id") or "").strip() or slide_id(file), str(file), row_mpp))
    return sources
