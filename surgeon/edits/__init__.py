"""Edits, one module per kind, each with one public entry point.

tokens     add_tokens: new vocabulary rows (tokenizer + embed/lm_head)
rome       rank_one: ROME closed-form rank-one update of mlp.down
steering   directions from contrastive prompts; steer at run time; bake as bias or ablation
algebra    scale, add, interpolate, transplant, zero heads
"""
