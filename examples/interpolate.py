"""Interpolate two checkpoints of the same shapes: W <- (1 - t) W + t W_other.

    surgeon apply examples/interpolate.py --model BASE --out OUT --param other=/path/to/finetuned \
        --param t=0.5 [--param 'layers=[10, 11, 12]'] [--param 'keys=["mlp.down"]']

t=0 and t=1 reproduce the endpoints byte for byte. Without ``other`` the second endpoint is the model
itself with every selected tensor scaled by ``demo_factor`` (staged in memory, never written), so the
script runs on a single checkpoint.
"""

import surgeon
from surgeon.edits.algebra import interpolate, scale


def edit(ck, other=None, t=0.5, keys=None, layers=None, demo_factor=1.1):
    if other is None:
        other = surgeon.open(ck.path)
        scale(other, keys, demo_factor, layers=layers)
    sel = interpolate(ck, other, t, keys=keys, layers=layers)
    print(f"interpolated {len(sel)} tensors at t={t}")
