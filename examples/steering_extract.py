"""Find a steering direction from contrastive prompt pairs, watch it steer generations, save it.

    python examples/steering_extract.py --pairs happy --layer 9 --out happy.safetensors
    python examples/steering_extract.py --pairs french --layer 12 --alphas -1,0,1,2

Then bake it (``surgeon apply examples/steer_bake.py --param vector=happy.safetensors ...``) or
ablate it (``examples/steer_ablate.py``). ``--model`` defaults to the SmolLM2 fixture.
Difference of means at the last token is CAA (Rimsky et al. 2023); ``--method pca`` is the
RepE / repeng variant (Zou et al. 2023).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

PAIRS = {
    "happy": (
        ["I am so happy and joyful today", "What a wonderful, delightful surprise",
         "We laughed and celebrated all night", "I love this beautiful sunny morning",
         "Everything is going great, I feel fantastic", "She smiled with pure joy",
         "This is the best day of my life", "I'm thrilled and grateful"],
        ["I am so sad and miserable today", "What a terrible, depressing surprise", "We cried and mourned all night",
         "I hate this gloomy rainy morning", "Everything is going wrong, I feel awful", "She wept with deep sorrow",
         "This is the worst day of my life", "I'm heartbroken and hopeless"],
        ["Today I went to the park and", "When I opened the letter, I", "My week at work has been"],
    ),
    "french": (
        ["Le chat dort sur le canapé.", "Nous allons au marché demain matin.", "Il fait très beau aujourd'hui.",
         "J'aime lire des livres le soir.", "La gare est près de la place.", "Elle a acheté du pain frais.",
         "Les enfants jouent dans le jardin.", "Je voudrais un café, s'il vous plaît."],
        ["The cat is sleeping on the sofa.", "We are going to the market tomorrow morning.",
         "The weather is very nice today.", "I like reading books in the evening.", "The station is near the square.",
         "She bought some fresh bread.",
         "The children are playing in the garden.", "I would like a coffee, please."],
        ["My favourite place in the city is", "Yesterday we decided to", "The best way to cook rice is"],
    ),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory (default: the SmolLM2 fixture)")
    ap.add_argument("--pairs", choices=sorted(PAIRS), default="happy")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--method", choices=["mean_diff", "pca"], default="mean_diff")
    ap.add_argument("--position", choices=["last", "mean"], default="last")
    ap.add_argument("--alphas", default="-2,0,1,2", help="multiples of the mean paired difference")
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--out", help="save the vector here (.safetensors)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("SURGEON_THREADS", "2")))

    import surgeon
    from surgeon.edits.steering import extract, steer
    from surgeon.fixtures import fixture
    from surgeon.runtime import load

    rt = load(surgeon.open(args.model or fixture("smollm2")))
    pos, neg, prompts = PAIRS[args.pairs]
    t = time.perf_counter()
    sv = extract(rt, pos, neg, args.layer, method=args.method, position=args.position)
    print(f"{args.pairs}: layer {sv.layer}, {sv.method}/{sv.position}, {sv.n_pairs} pairs in "
          f"{time.perf_counter() - t:.2f} s; "
          f"‖mean diff‖ {sv.scale:.1f} vs mean ‖h‖ {sv.residual_norm:.1f}; separation {sv.separation:.2f}; "
          f"energy along it {sv.explained:.2f}")
    for prompt in prompts:
        print(f"\n{prompt!r}")
        for a in [float(x) for x in args.alphas.split(",")]:
            with steer(rt, sv, alpha=a):
                print(f"  α={a:+.1f}: {rt.generate(prompt, args.tokens)!r}")
    if args.out:
        print(f"\nsaved {sv.save(args.out)}")


if __name__ == "__main__":
    main()
