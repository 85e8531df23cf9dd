"""Scale one layer's MLP output projection: the smallest possible edit.

    surgeon apply examples/scale_layer.py --model CKPT --out OUT --param layer=3 --param factor=1.01
"""


def edit(ck, layer=3, factor=1.01):
    key = f"layers.{layer}.mlp.down"
    ck[key] = ck[key] * factor
    ck.record("scale", key=key, factor=factor)
