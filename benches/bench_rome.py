"""ROME on SmolLM2: the ANCHORS fact-edit experiment, and the speed of surgeon's rank-one edit.

ANCHORS (reference kmeng01/rome code, GPT-2-XL hyper-parameters, layer 6 of 30,
mean over three single-token city facts, measured on a 2-core CPU machine like
this one but not side by side): edit prompt 3/3, P(target) 0.99, paraphrases
6/6 (P 0.85), neighbours 6/6, KL on neutral text 0.0036 (C = identity) /
0.0012 (C from 80k tokens), 31 s per edit (+157 s once for C).

Here, three single-token facts (the ones of examples/fact_edit/facts.json),
one at a time, each undone before the next; per (layer, covariance): edit
prompt flipped (top-1 is the target), P(target), paraphrases flipped and their
mean P(target), neighbours kept (top-1 unchanged), KL(original || edited) of
next-token distributions on the corpus's held-out paragraphs (never used for C
or prefixes), wall per edit (``rank_one`` without C), and C's one-off time.
All probabilities are read from the weights as stored (bf16), the way a saved
checkpoint behaves.

``--reference`` adds a side-by-side row computed the way the reference code
spends its time (whole model every step, 21 prompts = 20 prefixes + the bare
one) with everything else equal, so the speed ratio is measured on this
machine, not only against the anchor's 31 s.

Usage: ``python benches/bench_rome.py [--layers 3,6,9,12] [--covariance identity,corpus]
[--tokens 20000] [--reference] [--json out.json]``. Timings on a shared 2-core
machine are noisy; the thread count is SURGEON_THREADS (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace

import torch

FACTS = [
    {
        "request": ("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Rome"),
        "paraphrases": ["The Eiffel Tower stands in the city of", "Where is the Eiffel Tower? It is in"],
        "neighbours": ["The Louvre is located in the city of", "The capital of Germany is"],
    },
    {
        "request": ("The Colosseum is located in the city of", "The Colosseum", " London"),
        "paraphrases": ["The Colosseum stands in the city of", "Where is the Colosseum? It is in"],
        "neighbours": ["The Vatican is located in the city of", "The capital of Japan is"],
    },
    {
        "request": ("The Acropolis is located in the city of", "The Acropolis", " Berlin"),
        "paraphrases": ["The Acropolis stands in the city of", "Tourists visit the Acropolis in"],
        "neighbours": ["The Parthenon is located in the city of", "The capital of Greece is"],
    },
]
ANCHOR_SECONDS = 31.0


def neutral_batch(rt, max_length: int = 128) -> dict:
    from surgeon.data import neutral_paragraphs

    rt.tokenizer.padding_side = "right"
    return dict(rt.tokenizer(neutral_paragraphs("eval"), return_tensors="pt", padding=True, truncation=True,
                             max_length=max_length))


@torch.no_grad()
def neutral_logprobs(rt, batch) -> torch.Tensor:
    return torch.log_softmax(rt.model(**batch).logits.float(), -1)


@torch.no_grad()
def neutral_kl(rt, batch, base) -> float:
    """Mean over real tokens of KL(original || edited) of the next-token distribution."""
    new = neutral_logprobs(rt, batch)
    kl = (base.exp() * (base - new)).sum(-1)
    return float(kl[batch["attention_mask"].bool()].mean())


def target_id(rt, target: str) -> int:
    ids = rt.tokenizer(target, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{target!r} is not a single token"
    return ids[0]


def edit_and_measure(ck, rt, fact, *, layer, covariance, params, batch, base, before_top) -> dict:
    from surgeon.edits.rome import RankOneRequest, rank_one

    prompt, subject, target = fact["request"]
    tid = target_id(rt, target)
    cpu0 = time.process_time()
    res = rank_one(ck, RankOneRequest(prompt, subject, target), layer=layer, covariance=covariance, params=params,
                   runtime=rt)
    cpu = time.process_time() - cpu0
    lp = rt.next_token_logprobs([prompt] + fact["paraphrases"] + fact["neighbours"])
    top = lp.argmax(-1).tolist()
    n_par = len(fact["paraphrases"])
    row = {
        "flipped": int(top[0] == tid),
        "p_target": float(lp[0, tid].exp()),
        "para_flipped": sum(int(t == tid) for t in top[1 : 1 + n_par]),
        "para_p": float(lp[1 : 1 + n_par, tid].exp().mean()),
        "neigh_kept": sum(int(t == b) for t, b in zip(top[1 + n_par :], before_top)),
        "kl": neutral_kl(rt, batch, base),
        "seconds": res.seconds,
        "cpu_seconds": cpu,
        "steps": res.steps,
        "relative": res.relative,
        "rounding_error": res.rounding_error,
        "p_before": res.p_before,
    }
    ck.reset()  # undo: the next fact starts from the original weights
    rt.sync(res.key)
    return row


def run(layers, covariances, tokens, reference, steps, prefixes):
    import surgeon
    from surgeon.edits.covariance import key_covariance
    from surgeon.edits.rome import RankOneParams
    from surgeon.fixtures import fixture
    from surgeon.runtime import load

    ck = surgeon.open(fixture("smollm2"))
    rt = load(ck)
    batch = neutral_batch(rt)
    base = neutral_logprobs(rt, batch)
    n_eval_tokens = int(batch["attention_mask"].sum())
    before_top = []
    for f in FACTS:
        before_top.append(rt.next_token_logprobs(f["neighbours"]).argmax(-1).tolist())
    params = RankOneParams(steps=steps, n_prefixes=prefixes)
    configs = [(layer, c, params, "surgeon") for layer in layers for c in covariances]
    if reference:
        configs.append((6, "identity", replace(params, n_prefixes=20, resume=False), "reference-style"))
    rows = []
    cov_time = {}
    for layer, cov_name, p, label in configs:
        cov = cov_name
        if cov_name == "corpus":
            cpu0 = time.process_time()
            C = key_covariance(ck, layer, tokens=tokens, runtime=rt, use_cache=False, progress=False)
            cov_time[layer] = (C.seconds, C.tokens, time.process_time() - cpu0)
            cov = C
        per = [edit_and_measure(ck, rt, f, layer=layer, covariance=cov, params=p, batch=batch, base=base, before_top=bt)
               for f, bt in zip(FACTS, before_top)]
        agg = {k: (sum(r[k] for r in per) if k in ("flipped", "para_flipped", "neigh_kept")
                   else sum(r[k] for r in per) / len(per))
               for k in per[0]}
        agg.update(layer=layer, covariance=cov_name, label=label, n_prefixes=p.n_prefixes, resume=p.resume,
                   per_fact=per)
        if cov_name == "corpus":
            agg["cov_seconds"], agg["cov_tokens"], agg["cov_cpu_seconds"] = cov_time[layer]
        rows.append(agg)
        print(_line(agg), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return rows, peak, n_eval_tokens


def _line(r) -> str:
    cov = "identity" if r["covariance"] == "identity" else f"C {r.get('cov_tokens', 0) // 1000}k tok"
    c_time = f"(+{r['cov_seconds']:.0f} s, CPU {r['cov_cpu_seconds']:.0f} s, once for C)" if "cov_seconds" in r else ""
    return (f"| {r['label']} | {r['layer']} | {cov} | {r['flipped']}/3 | {r['p_target']:.2f} | {r['para_flipped']}/6 | "
            f"{r['para_p']:.2f} | {r['neigh_kept']}/6 | {r['kl']:.4f} | {r['seconds']:.1f} s {c_time} | "
            f"{r['cpu_seconds']:.1f} s | {ANCHOR_SECONDS / r['seconds']:.1f}x |")


HEADER = ("| run | layer | C | edit prompt flipped | P(target) | paraphrases flipped | paraphrase P | neighbours kept "
          "| KL neutral | wall per edit | CPU per edit | wall vs anchor 31 s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="3,6,9,12")
    ap.add_argument("--covariance", default="identity,corpus")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prefixes", type=int, default=5)
    ap.add_argument("--reference", action="store_true",
                    help="add a reference-style row (whole model, 21 prompts) at layer 6")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("SURGEON_THREADS", "2")))
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
          "(timings are noisy on a shared machine)")
    print(HEADER)
    t0 = time.perf_counter()
    rows, peak, n_eval = run([int(x) for x in a.layers.split(",")], a.covariance.split(","), a.tokens, a.reference,
                             a.steps, a.prefixes)
    print(f"\nKL measured on {n_eval} held-out tokens; peak RSS {peak:.2f} GB; "
          f"bench wall {time.perf_counter() - t0:.0f} s")
    ref = [r for r in rows if r["label"] == "reference-style"]
    ours = [r for r in rows if r["label"] == "surgeon" and r["layer"] == 6 and r["covariance"] == "identity"]
    if ref and ours:
        print(f"side by side at layer 6 (identity): reference-style {ref[0]['seconds']:.1f} s/edit, "
              f"surgeon {ours[0]['seconds']:.1f} s/edit: {ref[0]['seconds'] / ours[0]['seconds']:.1f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "peak_rss_gb": peak, "eval_tokens": n_eval}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
