"""Edits, one module per kind, each with one public entry point.

tokens      add_tokens: new vocabulary rows (tokenizer + embed/lm_head)
rome        rank_one: ROME closed-form rank-one update of mlp.down (covariance: key_covariance)
steering    extract a direction; steer at run time; bake_additive as a bias; ablate by orthogonalisation
algebra     scale, add, interpolate, transplant, zero_heads
"""

from surgeon.edits.algebra import add, interpolate, scale, select, transplant, zero_heads
from surgeon.edits.covariance import key_covariance
from surgeon.edits.rome import RankOneParams, RankOneRequest, RankOneResult, rank_one
from surgeon.edits.steering import SteeringVector, ablate, bake_additive, extract, steer
from surgeon.edits.tokens import TokensAdded, add_tokens

__all__ = [
    "RankOneParams", "RankOneRequest", "RankOneResult", "SteeringVector", "TokensAdded",
    "ablate", "add", "add_tokens", "bake_additive", "extract", "interpolate", "key_covariance",
    "rank_one", "scale", "select", "steer", "transplant", "zero_heads",
]
