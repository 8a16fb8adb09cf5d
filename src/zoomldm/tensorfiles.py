"""Reading tensor files (PyTorch pickles, safetensors, diffusers model folders) with one-line errors.

Every loader of the package (official checkpoints, CDM checkpoints, SSL grids, encoder weights, our
saved models) reads files through these functions, so a file that is missing, a directory, empty,
truncated, of another kind, or a pickle that carries code gets the same kind of message: one line that
names the file, says what is wrong and what to do. The library's own exception stays chained
(``raise ... from err``) for debugging.

``torch.load`` is always called with ``weights_only=True``; when it refuses a pickle because of a
global, the global is named (torch's own text is several lines of advice on how to load it unsafely,
which is not what a user of a model file should do).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ZoomLDMError

if TYPE_CHECKING:  # torch is imported where it is used: io.images reads files without it
    import torch

_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
#: module roots of the globals that ordinary torch checkpoints pickle (not code a user must be warned of)
_DATA_MODULES = {"torch", "collections", "_codecs", "numpy"}


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (or its type name), at most ``limit`` chars."""
    for line in str(err).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return type(err).__name__


def check_input_file(path: str | Path, what: str, error: type[ZoomLDMError] = CheckpointError) -> Path:
    """``path`` as a :class:`~pathlib.Path` when it is a readable, non-empty file; else ``error`` with one
    line: not found, a directory, empty, or unreadable."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, not a {what} file (pass the file itself)")
    if not path.exists():
        raise error(f"{what} not found: {path}")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as err:
        raise error(
            f"{path}: cannot be read ({err.strerror or first_line(err)}); check the path and its permissions"
        ) from err
    if size == 0:
        raise error(f"{path}: empty file (0 bytes); re-download or re-create the {what}")
    return path


def load_torch(
    path: str | Path,
    what: str = "PyTorch checkpoint",
    error: type[ZoomLDMError] = CheckpointError,
    safe_globals: Iterable[Any] = (),
) -> Any:
    """``torch.load(path, weights_only=True)`` (memory-mapped for zip-format files) with one-line errors.

    Raises ``error`` for a missing / empty / truncated file, a file of another kind, and a pickle that
    carries code (the offending global is named, e.g. ``posix.system``).
    """
    import torch

    path = check_input_file(path, what, error)
    with path.open("rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    try:
        # mmap only works for the zip format; legacy (pickle-stream) files are read normally
        with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before failing: the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ... here
        code = _code_global(path, err, is_zip)
        if code is not None:
            raise error(
                f"{path}: contains code ({code}); refusing to load it (weights-only) — "
                "convert it on a trusted machine, e.g. to .safetensors"
            ) from err
        raise error(f"{path}: truncated or not a {what} (re-download it or check the path)") from err


def _code_global(path: Path, err: BaseException, is_zip: bool) -> str | None:
    """The global that made ``torch.load(weights_only=True)`` refuse a pickle, if it refused one: a global
    outside torch / collections first (``posix.system`` rather than ``torch.storage._load_from_bytes``)."""
    import pickle

    import torch

    if not isinstance(err, pickle.UnpicklingError):
        return None
    if is_zip:
        try:
            found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # a damaged archive: fall back to the message
            found = []
    else:
        found = _pickle_globals(path)
    foreign = [name for name in found if name.split(".")[0] not in _DATA_MODULES]
    if foreign:
        return foreign[0]
    match = _GLOBAL_IN_MESSAGE.search(str(err))
    if match:
        return match.group(1)
    return found[0] if is_zip and found else None


def _pickle_globals(path: Path, max_pickles: int = 6) -> list[str]:
    """Globals named in the pickles at the start of a file (a legacy torch file is several in a row).

    ``torch.load`` stops at the first opcode its weights-only unpickler does not support (e.g. protocol
    4's FRAME) before it sees the global, so the stream is disassembled here with :mod:`pickletools`
    (which never executes anything) to say *what* code the file would run.
    """
    import pickletools

    found: list[str] = []
    with path.open("rb") as f:
        for _ in range(max_pickles):
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(f):
                    if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        found.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    if found and not _DOTTED_NAME.fullmatch(found[-1]):
                        found.pop()  # random bytes that happen to decode as an opcode
                    if isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # not (or no longer) a pickle stream: raw storage bytes or garbage
                break
    return found


def load_safetensors(
    path: str | Path, what: str = "safetensors checkpoint", error: type[ZoomLDMError] = CheckpointError
) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with one-line errors (missing, empty, truncated, not safetensors)."""
    from safetensors.torch import load_file

    path = check_safetensors(path, what, error)
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, OSError
        raise error(
            f"{path}: unreadable {what} ({first_line(err)}); re-download it or check the path"
        ) from err


def check_safetensors(
    path: str | Path, what: str = "safetensors file", error: type[ZoomLDMError] = CheckpointError
) -> Path:
    """Validate a safetensors file's header and size without reading the tensors (``safe_open``)."""
    from safetensors import safe_open

    path = check_input_file(path, what, error)
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # SafetensorError("incomplete metadata, file not fully covered"), OSError
        raise error(
            f"{path}: truncated or not a safetensors file ({first_line(err)}); re-download it or check the path"
        ) from err
    return path


def check_weights_file(path: str | Path, error: type[ZoomLDMError] = CheckpointError) -> Path:
    """Raise ``error`` when a weights file (``.safetensors`` or a torch pickle) is damaged; the file is
    only read as far as needed to tell (a safetensors header, or a full ``torch.load``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return check_safetensors(path, "safetensors weights file", error)
    load_torch(path, "PyTorch weights file", error)
    return path


def load_pretrained_component(cls: Any, folder: str | Path, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)`` of a diffusers ``ModelMixin`` with one-line errors.

    The folder's ``config.json`` must be a JSON object and its ``*.safetensors`` files must be whole;
    anything else diffusers refuses (missing weights, mismatched shapes) is reported by its first line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: the {what} folder is missing; re-save or re-download the model")
    config = folder / "config.json"
    read_json_object(config, f"{what} config")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not list(folder.glob("*.bin")):  # say it here: diffusers would also log an ERROR
        raise CheckpointError(
            f"{folder}: no weights file (diffusion_pytorch_model.safetensors) for the {what}; "
            "re-save or re-download the model"
        )
    for file in weights:
        check_safetensors(file, f"{what} weights")
    try:
        return cls.from_pretrained(folder, **kwargs)
    except ZoomLDMError:
        raise
    except Exception as err:  # OSError (missing files), ValueError (shapes), RuntimeError, ...
        raise CheckpointError(
            f"{folder}: cannot load the {what} ({first_line(err)}); re-save or re-download the model"
        ) from err


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a model description or config) as a dict, one-line errors."""
    path = check_input_file(path, what)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: not valid JSON ({first_line(err)}); re-save or re-download the model"
        ) from err
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return dict(value)


def count_nonfinite(tensor: torch.Tensor) -> int:
    """Number of NaN / ±inf entries of a floating-point tensor (0 for integer tensors)."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    return int((~torch.isfinite(tensor)).sum())
