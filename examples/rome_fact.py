"""Rewrite one fact with ROME (Meng et al. 2022): a rank-one update of one layer's mlp.down.

    surgeon apply examples/rome_fact.py --model SMOLLM2 --out OUT \\
        --param "subject=The Eiffel Tower" \\
        --param "prompt=The Eiffel Tower is located in the city of" \\
        --param "target= Rome" --param layer=6

``target`` is the continuation, leading space included. ``covariance``:
"corpus" (default; C from the shipped neutral text, computed once per model and
layer and cached) or "identity". The manifest records the probabilities of the
target before and after.
"""

from surgeon.edits.rome import RankOneParams, RankOneRequest, rank_one


def edit(ck, subject="The Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target=" Rome",
         layer=6, covariance="corpus", steps=20):
    result = rank_one(ck, RankOneRequest(prompt=prompt, subject=subject, target=target), layer=int(layer),
                      covariance=covariance, params=RankOneParams(steps=int(steps)))
    print(f"{result.key}: P({target!r} | {prompt!r}) {result.p_before:.4f} -> {result.p_after:.4f}; "
          f"||dW||/||W|| {result.relative:.4f}; {result.seconds:.1f} s")
