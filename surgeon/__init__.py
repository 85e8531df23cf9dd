"""surgeon: direct weight surgery on transformer checkpoints, measured.

The pipeline reads top to bottom in the module list:
open (checkpoint, shards) -> roles -> edits -> save -> measure.
"""

__version__ = "0.1.0"

from .checkpoint import Checkpoint, open_checkpoint as open  # noqa: E402,A001
from .errors import (  # noqa: E402
    CheckpointError,
    EditError,
    HeaderError,
    OutputError,
    RoleError,
    SurgeonError,
    UnknownArchitecture,
)

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
