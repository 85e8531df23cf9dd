"""Architectural roles: what every tensor of a checkpoint *is* (see :mod:`surgeon.roles.table`).

table          the role vocabulary, one JSON table per family (``architectures/``), views of fused tensors
summary        the layers × roles overview behind ``surgeon inspect``
"""

from surgeon.roles.table import (
    LAYER_ROLES,
    TOP_ROLES,
    Architecture,
    ArchitectureError,
    RoleRef,
    RoleTable,
    View,
    architectures,
    find_architecture,
    role_key,
    supported_model_types,
)

__all__ = [
    "LAYER_ROLES", "TOP_ROLES", "Architecture", "ArchitectureError", "RoleRef", "RoleTable", "View",
    "architectures", "find_architecture", "role_key", "supported_model_types",
]
