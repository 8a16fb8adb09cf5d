"""User-facing errors.

Every error a user can cause (a bad flag, a missing file, a checkpoint of another model) is raised as a
:class:`ZoomLDMError` whose message says what was expected. The CLI prints such errors as one line and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ZoomLDMError(Exception):
    """An error caused by the user's input, with a message that says what to do."""


class CheckpointError(ZoomLDMError):
    """A checkpoint whose keys or shapes do not match the architecture it is loaded into."""


class ConfigError(ZoomLDMError):
    """An invalid configuration value or file."""
