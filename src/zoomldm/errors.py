"""User-facing errors.

Every error a user can cause (a bad flag, a missing file, a checkpoint of another model) is raised as a
:class:`ZoomLDMError` whose message says what was expected. The CLI prints such errors as one line and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def quoted(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (``'1111…' (5000 chars)``):
    a pasted 5000-character argument must not make the one-line message 5000 characters long."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} chars)" if isinstance(value, str) else ""
    return f"{text[: limit - 1]}…{size}"


class ZoomLDMError(Exception):
    """An error caused by the user's input, with a message that says what to do."""


class CheckpointError(ZoomLDMError):
    """A checkpoint whose keys or shapes do not match the architecture it is loaded into."""


class ConfigError(ZoomLDMError):
    """An invalid configuration value or file."""


class InputError(ZoomLDMError):
    """An input file or value that cannot be used: missing, empty, damaged, of the wrong kind, or holding
    non-finite or out-of-range numbers. The message names the file or option and says what to do."""


class OutputError(ZoomLDMError):
    """An output path that cannot be written (not writable, a directory where a file is expected, or an
    existing result that the command will not overwrite)."""


#: exit statuses of the ``zoomldm`` command (docs/ARCHITECTURE.md, "Exit codes and outputs")
EXIT_OK = 0
EXIT_BAD_INPUT = 2  #: a ZoomLDMError, a usage error, or an environment error on a named path
EXIT_SOME_FAILED = 3  #: finished, but some inputs failed (prepare, features: listed in the summary)
EXIT_INTERRUPTED = 130  #: Ctrl-C; finished work is kept, rerun the same command to resume
