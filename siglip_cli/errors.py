"""Errors a user can act on.

Library code raises these; the CLI's single error boundary turns them into one line on stderr
(`Error: ...`) and the exit code below. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

# Exit codes, documented in `siglip --help` and the README.
EXIT_FAILED = 1  # some input could not be embedded, or an output could not be written
EXIT_USAGE = 2  # bad options, unknown model, unusable checkpoint: nothing was attempted


class SiglipError(Exception):
    """An error with a message for the user: it names the thing and the next step."""

    exit_code = EXIT_USAGE


class UsageError(SiglipError):
    """A bad option value or combination."""


class ModelNotFoundError(SiglipError):
    """A model that is neither a local checkpoint directory nor in the Hugging Face cache."""


class CheckpointError(SiglipError):
    """A checkpoint that exists but cannot be loaded: bad config, missing/unexpected keys, shapes."""


class HubError(SiglipError):
    """The hub refused, could not be reached, or a download could not be stored."""


class HubUnreachableError(HubError):
    """No network path to the hub (or offline mode) and nothing usable in the cache."""


class ChecksumError(SiglipError):
    """A downloaded file whose bytes do not hash to the hub's record."""


class ImageError(SiglipError):
    """An input image that cannot be read or decoded."""

    exit_code = EXIT_FAILED

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputError(SiglipError):
    """An output that cannot be written; errno says why, when the OS said (ENOSPC: the disk is full)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class OutputGoneError(OutputError):
    """The output folder disappeared during the run: nothing more can be written, so the run stops."""


class SiglipWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. non-finite weights).

    Library code calls warnings.warn(message, SiglipWarning); the CLI prints it as one `Warning: ...` line.
    """
