"""Edits, one module per kind, each with one public entry point.

tokens      add_tokens: new vocabulary rows (tokenizer + embed/lm_head)
request     RankOneRequest and what the fact edits share (corpus prefixes, the subject's token)
rome        rank_one: ROME closed-form rank-one update of mlp.down (covariance: key_covariance)
memit       edit_facts: many facts over a layer range, batched (MEMIT) or in null-space projected rounds (AlphaEdit)
steering    extract a direction; steer at run time
bake        a direction into the weights: bake_additive as a bias; ablate by orthogonalisation
apply       run an edit script (edit(ck, **params)): the engine behind `surgeon apply`
algebra     scale, add, interpolate, transplant, zero_heads
"""

from surgeon.edits.algebra import add, interpolate, scale, select, transplant, zero_heads
from surgeon.edits.bake import ablate, bake_additive
from surgeon.edits.covariance import key_covariance
from surgeon.edits.memit import FactsParams, FactsResult, FactsState, edit_facts
from surgeon.edits.request import RankOneRequest
from surgeon.edits.rome import RankOneParams, RankOneResult, rank_one
from surgeon.edits.steering import SteeringVector, extract, steer
from surgeon.edits.tokens import TokensAdded, add_tokens

__all__ = [
    "FactsParams", "FactsResult", "FactsState", "RankOneParams", "RankOneRequest", "RankOneResult",
    "SteeringVector", "TokensAdded",
    "ablate", "add", "add_tokens", "bake_additive", "edit_facts", "extract", "interpolate", "key_covariance",
    "rank_one", "scale", "select", "steer", "transplant", "zero_heads",
]
