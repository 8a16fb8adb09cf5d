"""The ``zoomldm`` command line: a thin typer layer over the Python API.

Each command group lives in its own module of this package and exposes ``register(app)``; heavy
imports (torch, diffusers) happen inside the command functions so that ``zoomldm --help`` is fast.
User errors (:class:`zoomldm.errors.ZoomLDMError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import errno
import sys

import typer

app = typer.Typer(
    name="zoomldm",
    help="ZoomLDM: multi-scale latent diffusion for gigapixel pathology and satellite images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command group, in data-flow order; each adds its commands with ``register(app)``.
from . import cdm, core, evaluate, features, large, mil, prepare, train, vae, view  # noqa: E402

for _module in (core, prepare, vae, train, cdm, large, evaluate, features, mil, view):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``zoomldm`` script.

    Exit status (:mod:`zoomldm.errors`): 0 done, 2 bad input (a :class:`ZoomLDMError`, a usage error, or an
    environment error on a named path), 3 finished but some inputs failed (``prepare``, ``features``),
    130 interrupted. Any other exception is a bug and keeps its traceback.
    """
    from ..errors import EXIT_INTERRUPTED, ZoomLDMError

    try:
        app(args=argv, standalone_mode=True)
    except ZoomLDMError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is kept, rerun the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except OSError as err:
        # The safety net for the environment (a path that cannot be written, a full disk): what the loaders
        # and writers did not turn into a ZoomLDMError themselves still gets one line, not a traceback. An
        # OSError that names no path and is no environment condition (errno) is a bug and propagates.
        message = environment_error_message(err)
        if message is None:
            raise
        _fail(message)


def _fail(message: str) -> None:
    from ..errors import EXIT_BAD_INPUT

    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(EXIT_BAD_INPUT)


#: what to do about an environment error, by errno
_ERRNO_ADVICE = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EISDIR: "a folder is in the way; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "remove it or choose another path",
    errno.ENOSPC: "free some disk space or write elsewhere, then rerun",
    errno.EDQUOT: "free some of your disk quota or write elsewhere, then rerun",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or use fewer --workers",
}
#: errnos that describe the machine, not the program: reported even when the error names no file
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE}


def environment_error_message(err: OSError) -> str | None:
    """The one-line message for an environment :class:`OSError` (``"<path>: <strerror> (what to do)"``),
    or None when ``err`` names no path and is no environment condition (then it is a bug)."""
    if type(err).__module__.startswith("PIL") and type(err).__name__ == "UnidentifiedImageError":
        # Pillow's "cannot identify image file '<path>'" names the file but sets no filename
        return _one_line(f"{err} (not an image Pillow can read; give a PNG, JPEG or TIFF)")
    paths = [str(p) for p in (err.filename, err.filename2) if p not in (None, "")]
    if not paths and err.errno not in _ENVIRONMENT_ERRNOS:
        return None
    reason = (
        "file not found" if err.errno == errno.ENOENT else (err.strerror or str(err) or type(err).__name__)
    )
    advice = _ERRNO_ADVICE.get(err.errno, "check the path and rerun")
    where = " -> ".join(paths)
    return _one_line(f"{where + ': ' if where else ''}{reason} ({advice})")


#: what str.splitlines() breaks on: a path or an OS message holding one must not make the error two lines
_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)
