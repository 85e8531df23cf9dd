"""surgeon: direct weight surgery on transformer checkpoints, measured.

The pipeline reads top to bottom in the module list:
open (checkpoint, shards) -> roles -> edits -> save -> measure.
"""

from surgeon._version import __version__
from surgeon.errors import (  # noqa: E402
    CheckpointError,
    EditError,
    HeaderError,
    OutputError,
    RoleError,
    SurgeonError,
    UnknownArchitecture,
)
from surgeon.io.checkpoint import Checkpoint  # noqa: E402,A001
from surgeon.io.checkpoint import open_checkpoint as open

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "EditError",
    "HeaderError",
    "OutputError",
    "RoleError",
    "SurgeonError",
    "UnknownArchitecture",
    "__version__",
    "open",
]
