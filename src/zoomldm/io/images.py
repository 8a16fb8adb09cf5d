"""PNG output with provenance, and contact sheets of patches.

Every PNG the package writes carries its provenance as PNG text chunks (DESIGN "Outputs carry their
provenance"): one ``tEXt`` chunk per metadata key (strings as is, everything else as JSON), a
``zoomldm`` chunk with the whole record as JSON (settings, seed, package version), and ``Software``.
:func:`read_png_metadata` gives the record back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ZoomLDMError
from ..fsutil import atomic_path

PROVENANCE_KEY = "zoomldm"


def package_version() -> str:
    """The installed ``zoomldm`` version (``"unknown"`` when run from a source tree without metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zoomldm")
    except PackageNotFoundError:
        return "unknown"


def provenance(metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``metadata`` plus the package version under ``zoomldm_version`` (the record every output carries)."""
    record = dict(metadata or {})
    record.setdefault("zoomldm_version", package_version())
    return record


def as_uint8_hwc(image: Any, what: str = "image") -> np.ndarray:
    """Check that ``image`` is a ``uint8`` array of shape ``[H, W, 3]`` (or ``[H, W]``/``[H, W, 1|4]``)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ZoomLDMError(f"{what} must be uint8 (0..255), got dtype {array.dtype}")
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ZoomLDMError(f"{what} must be HxWxC with C in 1, 3, 4 (channels last), got shape {array.shape}")
    return array


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def save_png(
    path: str | os.PathLike[str], image: np.ndarray, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``image`` (``uint8`` HWC) as a PNG whose text chunks carry ``metadata`` and the package version.

    The file is written to a temporary name in the same folder and renamed into place, so an interrupted
    run never leaves a truncated PNG. Returns the path written.
    """
    from PIL import Image, PngImagePlugin

    array = as_uint8_hwc(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    record = provenance(metadata)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"zoomldm {record['zoomldm_version']}")
    for key, value in record.items():
        if not 1 <= len(str(key)) <= 79 or key in ("Software", PROVENANCE_KEY):
            raise ZoomLDMError(
                f"metadata key {key!r} must be 1-79 characters and not 'Software' or 'zoomldm'"
            )
        info.add_text(str(key), _text_value(value))
    info.add_text(PROVENANCE_KEY, json.dumps(record, sort_keys=True, default=str))

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance record :func:`save_png` wrote into ``path`` (empty when the PNG has none)."""
    from PIL import Image

    with Image.open(path) as image:
        text = dict(getattr(image, "text", {}))
    if PROVENANCE_KEY in text:
        return json.loads(text[PROVENANCE_KEY])
    return {}


#: suffixes read with tifffile when Pillow cannot decode the file (BigTIFF, ZSTD/LZW tiles, …)
_TIFF_SUFFIXES = {".tif", ".tiff", ".btf"}


def decode_error_reason(err: BaseException) -> str:
    """A human reason for an image library's decode error (Pillow, tifffile/imagecodecs, OpenSlide):
    ``unknown image format``, ``truncated file`` or ``damaged pixel data (<the library's first line>)``."""
    from PIL import Image, UnidentifiedImageError

    from ..tensorfiles import first_line

    text = first_line(err)
    if isinstance(err, UnidentifiedImageError):
        return "unknown image format (expected PNG, JPEG or TIFF)"
    if isinstance(err, Image.DecompressionBombError):
        return f"too many pixels for an ordinary image ({text}); crop it or store it as a tiled TIFF"
    lowered = text.lower()
    if "truncated" in lowered or isinstance(err, EOFError) or "premature end" in lowered:
        return "truncated file"
    if "empty input" in lowered:  # imagecodecs: a tile whose bytes lie past the end of the file
        return "truncated file (a tile's data is missing)"
    return f"damaged pixel data ({text})"


def image_error(path: str | os.PathLike[str], err: BaseException, what: str = "image") -> InputError:
    """The one-line :class:`InputError` for an image that cannot be decoded (chain it: ``from err``)."""
    return InputError(f"{path}: {decode_error_reason(err)}; re-export or re-copy the {what}")


def load_image(path: str | os.PathLike[str], what: str = "image") -> np.ndarray:
    """Decode a PNG / JPEG / TIFF (first page) into ``uint8`` RGB ``[H, W, 3]``, fully, so that damaged
    pixel data is found here: a missing, empty or unknown file, a directory or a decode error (truncated
    after its header, corrupt tiles) is an :class:`InputError` of one line naming ``path``.

    TIFFs that Pillow cannot decode (BigTIFF, ZSTD tiles, …) are read with tifffile.
    """
    from PIL import Image

    from ..tensorfiles import check_input_file

    path = check_input_file(path, what, InputError)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))  # convert() decodes every pixel
    except Exception as err:  # UnidentifiedImageError, OSError("image file is truncated"), SyntaxError, …
        if path.suffix.lower() not in _TIFF_SUFFIXES:
            raise image_error(path, err, what) from err
        pillow_error = err
    try:
        return _tifffile_rgb(path)
    except InputError:
        raise
    except Exception as err:  # tifffile / imagecodecs errors (Jpeg8Error, ValueError, OSError, …)
        raise image_error(path, err, what) from pillow_error


def load_lr_image(path: str | Path, resize: int | None = None) -> np.ndarray:
    """Read an RGB image as uint8 HWC, optionally resampled (Lanczos) to ``resize``² pixels.

    A missing, empty or unknown file and damaged pixel data (e.g. a JPEG truncated after its header) are
    one-line :class:`~zoomldm.errors.InputError` s naming the file (:func:`zoomldm.io.images.load_image`).
    """
    from PIL import Image

    if resize is not None and resize < 1:
        raise InputError(f"--resize (resize) must be a positive size in pixels; got {resize}")
    image = load_image(path, "low-resolution image")
    if resize is not None:
        image = np.asarray(Image.fromarray(image).resize((resize, resize), Image.LANCZOS))
    return image


def _name(value: Any) -> str:
    return Path(value).name if isinstance(value, str | Path) else "the image"


def read_image(value: Any, resize: int | None = None, what: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 ``[H, W, 3]`` array → uint8 ``[H, W, 3]`` (optionally Lanczos-resampled to
    ``resize``² pixels, as ``--resize``)."""
    from PIL import Image

    if isinstance(value, str | Path):
        return load_lr_image(value, resize)  # the one reader of image files (missing/damaged: InputError)
    if isinstance(value, Image.Image):
        image = value.convert("RGB")
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3 or 0 in value.shape:
            raise InputError(
                f"{what}: expected a uint8 RGB array [H, W, 3]; got {value.dtype} {list(value.shape)} "
                "(convert with np.asarray(PIL.Image.open(path).convert('RGB')))"
            )
        if resize is None:
            return value
        image = Image.fromarray(value)
    else:
        raise InputError(
            f"{what}: expected a file path, a PIL image or a uint8 [H, W, 3] array; got {type(value).__name__}"
        )
    if resize is not None:
        if resize < 1:
            raise InputError(f"resize must be a positive size in pixels; got {resize}")
        image = image.resize((resize, resize), Image.LANCZOS)
    return np.asarray(image).copy()


def _tifffile_rgb(path: Path) -> np.ndarray:
    import tifffile

    array = np.asarray(tifffile.imread(path, key=0))  # the full-resolution page of a pyramid
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (S, Y, X)
    if array.dtype != np.uint8:
        raise InputError(f"{path}: expected 8-bit pixels, found {array.dtype}; convert it to 8-bit RGB")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"{path}: expected an RGB or grayscale image, found shape {array.shape}")
    return np.ascontiguousarray(np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3])


def contact_sheet(
    images: Sequence[np.ndarray], ncols: int, padding: int = 0, background: int = 255
) -> np.ndarray:
    """Arrange ``images`` (each ``uint8`` HWC) row-major in a grid with ``ncols`` columns.

    Cells have the size of the largest image; smaller images sit at the cell's top-left corner. The last
    row is filled with ``background``. ``padding`` pixels of ``background`` separate the cells (none at the
    outer border). Grayscale images are repeated to RGB; RGBA images keep their alpha only when all are RGBA.
    """
    if ncols < 1:
        raise ZoomLDMError(f"ncols must be at least 1, got {ncols}")
    if padding < 0:
        raise ZoomLDMError(f"padding must be >= 0, got {padding}")
    if len(images) == 0:
        raise ZoomLDMError("contact_sheet needs at least one image")
    arrays = [as_uint8_hwc(image, f"image {i}") for i, image in enumerate(images)]
    arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]
    channels = 4 if all(a.shape[2] == 4 for a in arrays) else 3
    arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[:, :, :channels] for a in arrays]

    cell_h = max(a.shape[0] for a in arrays)
    cell_w = max(a.shape[1] for a in arrays)
    ncols = min(ncols, len(arrays))
    nrows = -(-len(arrays) // ncols)
    sheet = np.full(
        (nrows * cell_h + (nrows - 1) * padding, ncols * cell_w + (ncols - 1) * padding, channels),
        background,
        dtype=np.uint8,
    )
    for i, array in enumerate(arrays):
        row, col = divmod(i, ncols)
        y, x = row * (cell_h + padding), col * (cell_w + padding)
        sheet[y : y + array.shape[0], x : x + array.shape[1]] = array
    return sheet
