"""Bake a saved steering vector into the weights as a bias (see examples/steering_extract.py).

    surgeon apply examples/steer_bake.py --model CKPT --out OUT --param vector=happy.safetensors --param alpha=2

``site="residual"`` (default) puts α·v on layers.L.mlp.down.bias, which equals adding it to the
residual after layer L for pre-norm families; ``site="attn.o"`` / ``"mlp.down"`` name the
projection directly (for Gemma-2/3 and OLMo-2, whose block outputs are normalised before the
residual add, these are the only choices and mean "before that norm"). The config flag transformers
needs (Llama: mlp_bias) is set, and every other module it gives a bias gets a zero one.
"""

from surgeon.edits.bake import bake_additive
from surgeon.edits.steering import SteeringVector


def edit(ck, vector="happy.safetensors", alpha=2.0, site="residual", layer=None):
    sv = SteeringVector.load(vector)
    sv.check(ck)
    info = bake_additive(ck, sv, layer, float(alpha), site=site)
    print(f"baked {info['key']} (‖α·v‖ = {info['norm']:.1f}); config flag: {info['flag']}; "
          f"{info['zero_biases']} zero biases added")
