"""Many facts: the N = 1, 10, 100, 1,000 curve for repeated ROME, MEMIT, AlphaEdit and LoRA.

Anchors (ANCHORS.md, published, other models): MEMIT on GPT-J, 10,000 batched
CounterFact edits: efficacy 98.9, paraphrase 88.6, neighbourhood 73.7
(unedited 83.5), fluency 619.9 (unedited 622.4). AlphaEdit on LLaMA3-8B, 2,000
sequential edits in rounds of 100: 98.90 / 94.22 / specificity 67.88
(unedited 89.48) / fluency 622.49; MEMIT under that protocol 65.65 / 64.65 /
51.56 / 437.43. "The Mirage of Model Editing": 96.8% teacher-forced vs 38.5%
generated. Reference ROME on this CPU: ~31 s per fact.

Here, on the *test* split of the shipped fact set (layers and hyper-parameters
were chosen on the validation split), the first N requests, for each method:

* ``none``       the unedited model (the neighbourhood and fluency baselines);
* ``rome``       surgeon's ROME (layer num_layers // 5), one fact after another, never undone;
* ``memit``      :func:`surgeon.edits.memit.edit_facts`, mode="batched": all N in one update;
* ``alphaedit``  the same entry, mode="sequential", rounds of 100 (N ≤ 100 is one round);
* ``lora``       LoRA r=8 on attn+mlp of layers 0–6 trained on the N edit prompts (the FT-W anchor).

Per (method, N), in a subprocess of its own (so peak RSS is that run's):
efficacy and paraphrase success teacher-forced (the target beats the true
answer in mean log-probability per token, CounterFact's scores) and
*generated* (greedy 8 tokens contain the target and not the true answer, the
"Mirage" protocol); neighbourhood (neighbour prompts, same template, other
subjects: the neighbour's answer still beats the edit's target); fluency
(ROME's weighted bi/tri-gram entropy of greedy 48-token continuations of 16
held-out neutral openings, ×100 as in the papers); KL(original ‖ edited) on
held-out neutral text; wall time of the edit (covariance excluded, reported
apart: it is computed once per model and cached); peak RSS.

Usage::

    python benches/bench_many_facts.py [--model smollm2|gemma3|PATH] [--n 1,10,100,1000]
        [--methods none,rome,memit,alphaedit,lora] [--split test] [--param l2=30 ...] [--out DIR] [--plot FILE]

Writes DIR/results.json (one record per run, appended as runs finish, so an
interrupted bench keeps what it measured) and a plot of each metric against N.
Threads: SURGEON_THREADS (default 2); run it alone for the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import surgeon
from surgeon.edits.memit import FactsParams, edit_facts
from surgeon.edits.rome import rank_one
from surgeon.runtime import load
from surgeon.study import fact_scores as S
from surgeon.study import facts as F
from surgeon.study.task import Task

METRICS = ["efficacy", "efficacy_generated", "paraphrase", "paraphrase_generated", "neighbourhood", "fluency", "kl"]
ROUND = 100


def model_path(name: str) -> str:
    if name in ("smollm2", "gemma3"):
        from surgeon.fixtures import fixture

        return str(fixture(name))
    return name


def fact_file(model: str) -> Path:
    return F.shipped(model if model in ("smollm2", "gemma3") else "smollm2")


# ------------------------------------------------------------------ one run


def neutral_reference(rt, texts: int = 8, max_length: int = 128):
    from surgeon.edits.covariance import neutral_paragraphs

    ids = [rt.tokenizer(t, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
           for t in neutral_paragraphs("eval")[:texts]]
    with torch.no_grad():
        base = [torch.log_softmax(rt.model(input_ids=i).logits[0].float(), -1) for i in ids]
    return ids, base


@torch.no_grad()
def neutral_kl(rt, ref) -> float:
    ids, base = ref
    tot, n = 0.0, 0
    for i, b in zip(ids, base):
        lp = torch.log_softmax(rt.model(input_ids=i).logits[0].float(), -1)
        tot += float((b.exp() * (b - lp)).sum())
        n += b.shape[0]
    return tot / n


def evaluate(rt, fs: list[F.Fact], ref) -> dict:
    eff = S.prefers(rt, [(f.prompt, f.target, f.true) for f in fs])
    para_rows = [(p.prompt, p.target, p.original) for f in fs for p in f.paraphrases]
    para = S.prefers(rt, para_rows)
    neigh_rows = sorted({(n.prompt, n.original, n.target) for f in fs for n in f.neighbours})
    neigh = S.prefers(rt, neigh_rows)
    gen_eff = S.generated_success(rt, [(f.prompt, f.target, f.true) for f in fs])
    gen_para = S.generated_success(rt, para_rows)
    flu, _ = S.fluency(rt, S.fluency_prompts(16))
    mean = lambda x: sum(x) / len(x)  # noqa: E731
    return {"efficacy": mean(eff), "efficacy_generated": mean(gen_eff), "paraphrase": mean(para),
            "paraphrase_generated": mean(gen_para), "neighbourhood": mean(neigh), "fluency": 100 * flu,
            "kl": neutral_kl(rt, ref)}


def run_one(model: str, method: str, n: int, split: str, layers: str | None, weight: float | None = None,
            params: dict | None = None) -> dict:
    torch.set_num_threads(int(os.environ.get("SURGEON_THREADS", "2")))
    task = Task.load(fact_file(model))
    fs = F.facts(task, split)[:n]
    ck = surgeon.open(model_path(model))
    rt = load(ck)
    ref = neutral_reference(rt)
    reqs = [f.request for f in fs]
    t0, c0 = time.perf_counter(), time.process_time()
    extra = {}
    if method == "rome":
        from surgeon.edits.covariance import key_covariance

        layer = ck.num_layers // 5
        C = key_covariance(ck, layer, runtime=rt)
        t0, c0 = time.perf_counter(), time.process_time()
        for r in reqs:
            rank_one(ck, r, layer=layer, covariance=C, runtime=rt)
        extra["layers"] = [layer]
    elif method in ("memit", "alphaedit"):
        res = edit_facts(ck, reqs, layers=layers, mode="batched" if method == "memit" else "sequential",
                         params=FactsParams(**{"round_size": ROUND, **({"covariance_weight": weight} if weight else {}),
                                               **(params or {})}),
                         runtime=rt)
        extra = {"layers": res.layers, "seconds_covariance": res.seconds_covariance,
                 "covariance_tokens": res.covariance_tokens, "seconds_values": res.seconds_values,
                 "relative": res.relative, "rounding": res.rounding, "null_dims": res.null_dims,
                 "p_optimised": res.p_optimised}
        t0 = time.perf_counter() - res.seconds
    elif method == "lora":
        from surgeon.study.finetune import FinetuneConfig, finetune

        sub = F.to_task(fs, "lora")
        steps = max(40, -(-3 * n // 8))  # three epochs at batch 8, at least the README's 40 steps
        out = finetune(ck, sub, FinetuneConfig(method="lora", layers="0-6", roles="attn,mlp", rank=8, steps=steps),
                       progress=False)
        rt = load(out.ck)
        extra = {"steps": steps, "layers": "0-6"}
    elif method != "none":
        raise SystemExit(f"unknown method {method!r}")
    wall = time.perf_counter() - t0 if method != "none" else 0.0
    cpu = time.process_time() - c0 if method != "none" else 0.0  # on a shared machine: what an idle one would take
    if method in ("memit", "alphaedit"):
        cpu -= extra["seconds_covariance"]  # zero once C is cached
    metrics = evaluate(rt, fs, ref)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "method": named(method, params), "n": len(fs), "split": split, "wall_s": wall, "cpu_s": cpu,
            "s_per_fact": wall / max(len(fs), 1), "peak_rss_mb": rss, **metrics, **extra}


# ------------------------------------------------------------------- driver


def named(method: str, params: dict | None) -> str:
    """A record's method name: ``alphaedit``, or ``alphaedit[l2=300.0]`` when ``--param`` set FactsParams fields."""
    return method + (f"[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else "")


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = ["efficacy", "efficacy_generated", "paraphrase", "neighbourhood", "fluency", "s_per_fact"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    methods = [m for m in ("rome", "memit", "alphaedit", "lora") if any(r["method"] == m for r in records)]
    for ax, metric in zip(axes.flat, show):
        for m in methods:
            rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["n"])
            ax.plot([r["n"] for r in rs], [r[metric] for r in rs], marker="o", label=m)
        base = [r for r in records if r["method"] == "none"]
        if base and metric in ("neighbourhood", "fluency"):
            ax.axhline(max(base, key=lambda r: r["n"])[metric], color="grey", ls="--", label="unedited")
        ax.set_xscale("log")
        ax.set_xlabel("facts edited (N)")
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"{records[0]['model']}: many facts, {records[0]['split']} split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(records: list[dict]) -> str:
    head = "| method | N | " + " | ".join(METRICS) + " | wall s | CPU s | s/fact | peak MB |"
    lines = [head, "|" + "---|" * (len(METRICS) + 6)]
    order = ["none", "rome", "memit", "alphaedit", "lora"]  # then any renamed run (e.g. alphaedit_null1pct)
    for r in sorted(records, key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order),
                                            r["method"], r["n"])):
        vals = " | ".join(f"{r[m]:.4f}" if m == "kl" else f"{r[m]:.2f}" if m == "fluency" else f"{r[m]:.3f}"
                          for m in METRICS)
        lines.append(f"| {r['method']} | {r['n']} | {vals} | {r['wall_s']:.1f} | {r.get('cpu_s', float('nan')):.1f} | "
                     f"{r['s_per_fact']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", default="1,10,100,1000")
    ap.add_argument("--methods", default="none,rome,memit,alphaedit,lora")
    ap.add_argument("--split", default="test")
    ap.add_argument("--layers", default=None, help="MEMIT/AlphaEdit layer range, e.g. 2-6 (default: the entry's)")
    ap.add_argument("--weight", type=float, default=None, help="MEMIT/AlphaEdit λ (FactsParams.covariance_weight)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a FactsParams field for MEMIT/AlphaEdit (repeatable), e.g. l2=30 round_size=25; "
                         "the record's method is then named alphaedit[l2=30,round_size=25]")
    ap.add_argument("--rome-max", type=int, default=100, help="skip repeated ROME above this N (4-5 s per fact)")
    ap.add_argument("--out", default="bench-many-facts")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    params = {k: type(getattr(FactsParams(), k))(v) for k, _, v in (x.partition("=") for x in a.param)}
    if a.one:
        print(json.dumps(run_one(a.model, a.one[0], int(a.one[1]), a.split, a.layers, a.weight, params)))
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    records = json.loads(results.read_text()) if results.exists() else []
    done = {(r["model"], r["method"], r["n"]) for r in records}
    for n in [int(x) for x in a.n.split(",")]:
        for m in a.methods.split(","):
            name = named(m, params)
            if (a.model, name, n) in done or (m == "rome" and n > a.rome_max):
                continue
            cmd = [sys.executable, __file__, "--model", a.model, "--split", a.split, "--one", m, str(n)]
            if a.layers:
                cmd += ["--layers", a.layers]
            if a.weight:
                cmd += ["--weight", str(a.weight)]
            cmd += [f"--param={x}" for x in a.param]
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{m} N={n}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
                continue
            rec = json.loads(p.stdout.strip().splitlines()[-1])
            records.append(rec)
            results.write_text(json.dumps(records, indent=1))
            print(f"{name:>9} N={n:<5} " + " ".join(f"{k} {rec[k]:.3f}" for k in METRICS)
                  + f" wall {rec['wall_s']:.1f}s ({rec['s_per_fact']:.2f} s/fact) rss {rec['peak_rss_mb']:.0f} MB"
                  f" [{time.perf_counter() - t:.0f} s with measuring]", flush=True)
    print(table([r for r in records if r["model"] == a.model]))
    plot([r for r in records if r["model"] == a.model], Path(a.plot) if a.plot else out / "many_facts.png")


if __name__ == "__main__":
    main()
