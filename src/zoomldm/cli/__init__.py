"""The ``zoomldm`` command line: a thin typer layer over the Python API.

Each command group lives in its own module of this package and exposes ``register(app)``; heavy
imports (torch, diffusers) happen inside the command functions so that ``zoomldm --help`` is fast.
User errors (:class:`zoomldm.errors.ZoomLDMError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="zoomldm",
    help="ZoomLDM: multi-scale latent diffusion for gigapixel pathology and satellite images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command group (data flow order).
_COMMAND_MODULES = ["core", "prepare", "train", "large", "cdm", "evaluate", "features", "mil", "view"]

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _err:  # a command group not written yet
        if _err.name == f"{__name__}.{_name}":
            continue
        raise
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``zoomldm`` script."""
    from ..errors import ZoomLDMError

    try:
        app(args=argv, standalone_mode=True)
    except ZoomLDMError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except FileNotFoundError as err:
        typer.secho(f"error: file not found: {err.filename or err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is kept, rerun the same command to resume", err=True)
        sys.exit(130)
