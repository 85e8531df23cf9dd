"""Specific errors, each a single line that names the file or tensor at fault.

The CLI prints ``str(err)`` and exits non-zero; nothing else is needed to tell
the user what went wrong (``--debug`` adds the traceback).
"""


class SurgeonError(Exception):
    """Base class: every error surgeon raises on purpose."""

    exit_code = 2


class CheckpointError(SurgeonError):
    """The checkpoint directory or one of its files is malformed or unsafe."""


class HeaderError(CheckpointError):
    """A safetensors header is malformed: bad JSON, offsets, dtype or size."""


class UnknownArchitecture(SurgeonError):
    """config.json names a model family surgeon has no role table for."""


class RoleError(SurgeonError, KeyError):
    """A role key or tensor name that this checkpoint does not have."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EditError(SurgeonError):
    """A staged change is invalid: wrong shape, NaN/Inf, overflow on cast."""


class OutputError(SurgeonError):
    """The output location is unsafe (inside the input, already present)."""
