"""User-facing error types.

Every error a user can cause by passing bad input (a wrong path, a corrupt file, an image of the
wrong size) is raised as one of these, with a message that names the problem and the fix.
They subclass the builtin types, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ArvisionError(Exception):
    """Base class of every error arvision raises on purpose."""


class ModelFileError(ArvisionError, ValueError):
    """A model directory or weights file is missing, truncated, corrupt or of another type."""


class DataError(ArvisionError, ValueError):
    """A dataset path is missing, empty, or holds no readable images."""


class DeviceError(ArvisionError, ValueError):
    """A ``device`` that PyTorch does not know, or that this machine or PyTorch build does not have."""


class OutputError(ArvisionError, ValueError):
    """An output location cannot be used: not writable, a file where a folder is needed (or the
    reverse), an unknown image extension, or an existing model/run that would be replaced."""
