"""Architectural roles: what every tensor of a checkpoint *is* (see :mod:`surgeon.roles.table`).

table          the role vocabulary, one JSON table per family (``architectures/``), views of fused tensors
refs           a role key bound to its stored tensor (RoleRef) and the view that reads and writes it
infer          role tables inferred from transformers' model definition (trace, blocks, experts, fused, shrink)
layers         what kind each layer is (full / sliding / chunked / linear attention, dense / MoE MLP)
summary        the layers × roles overview behind ``surgeon inspect``
"""

from surgeon.roles.infer import find_architecture, infer_architecture
from surgeon.roles.table import (
    LAYER_ROLES,
    TOP_ROLES,
    Architecture,
    ArchitectureError,
    RoleRef,
    RoleTable,
    View,
    architectures,
    find_table,
    role_key,
    supported_model_types,
)

__all__ = [
    "LAYER_ROLES", "TOP_ROLES", "Architecture", "ArchitectureError", "RoleRef", "RoleTable", "View",
    "architectures", "find_architecture", "find_table", "infer_architecture", "role_key",
    "supported_model_types",
]
