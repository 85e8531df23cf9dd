"""Transplant a whole layer (or some roles of it) from a donor checkpoint of the same shapes.

    surgeon apply examples/transplant_layer.py --model CKPT --out OUT \
        --param donor=/path/to/other --param layer=3 [--param from_layer=5] [--param 'roles=["mlp.down"]']

Without a donor the model's own layer ``layer - 1`` is copied over ``layer`` (a duplicated layer, as in
layer-stacking merges), so the script runs on a single checkpoint. Shapes and dtypes are checked first;
a mismatch names the tensor and nothing is changed.
"""

from surgeon.edits.algebra import transplant


def edit(ck, donor=None, layer=3, from_layer=None, roles=None):
    if donor is None:
        donor, from_layer = ck.path, layer - 1 if from_layer is None else from_layer
    keys = None if roles is None else [f"layers.{layer}.{r}" for r in ([roles] if isinstance(roles, str) else roles)]
    taken = transplant(ck, donor, keys=keys, layers=layer, from_layer=from_layer)
    print(f"took {len(taken)} tensors of layer {layer if from_layer is None else from_layer} from {donor}")
