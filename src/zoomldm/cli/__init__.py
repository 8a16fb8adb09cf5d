"""The ``zoomldm`` command line: a thin typer layer over the Python API.

Each command group lives in its own module of this package and exposes ``register(app)``; heavy
imports (torch, diffusers) happen inside the command functions so that ``zoomldm --help`` is fast.
User errors (:class:`zoomldm.errors.ZoomLDMError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

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
from . import cdm, core, evaluate, features, large, mil, prepare, train, view  # noqa: E402

for _module in (core, prepare, train, cdm, large, evaluate, features, mil, view):
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
