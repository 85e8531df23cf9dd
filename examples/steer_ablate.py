r"""Ablate a saved direction from the weights: W ← W − r rᵀ W (Arditi et al. 2024).

    surgeon apply examples/steer_ablate.py --model CKPT --out OUT --param vector=happy.safetensors --param embed=true
    surgeon apply examples/steer_ablate.py --model CKPT --out OUT --param vector=happy.safetensors \
        --param 'layers=[8,9,10]'

Every attn.o and mlp.down of the chosen layers (all by default), and with ``embed=true`` the
embedding, stops writing along r; with all layers and the embedding, the residual stream has no
component along r anywhere. With tied embeddings the head then ignores r as well.
"""

from surgeon.edits.bake import ablate
from surgeon.edits.steering import SteeringVector


def edit(ck, vector="happy.safetensors", layers=None, embed=False):
    sv = SteeringVector.load(vector)
    sv.check(ck)
    info = ablate(ck, sv, layers, embed=bool(embed))
    print(f"ablated {len(info['tensors'])} tensors in layers {info['layers'][0]}..{info['layers'][-1]}"
          + (" and the embedding (tied head too)" if info["tied_head"] else " and the embedding" if embed else ""))
