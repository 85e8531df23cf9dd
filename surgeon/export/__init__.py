"""Carrying an edit to where models run.

adapter    an edit as a PEFT LoRA adapter (exact for rank-one updates up to storage rounding)
"""
