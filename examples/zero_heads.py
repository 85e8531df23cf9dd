"""Remove attention heads by zeroing the columns of attn.o that read them.

    surgeon apply examples/zero_heads.py --model CKPT --out OUT --param layer=0 --param 'heads=[0, 1]'

attn.o is the only way a head's output reaches the residual stream, so this removes exactly those
heads' contribution (works for fused and Conv1D checkpoints through the role views).
"""

from surgeon.edits.algebra import zero_heads


def edit(ck, layer=0, heads=(0,)):
    key = zero_heads(ck, layer, list(heads) if not isinstance(heads, int) else [heads])
    print(f"zeroed heads {list(heads) if not isinstance(heads, int) else [heads]} of {key}")
