"""Fine-tuning throughput: ``surgeon.study.finetune`` vs a plain peft + torch loop, side by side.

The ANCHORS figures (2 cores, fp32, batch 8 × 64 tokens, LoRA r=8 on q,v of
layers 0–6) are 221 tokens/s and 2.1 GB for SmolLM2, 91 tokens/s and 3.7 GB for
Gemma-3-270M, 180 tokens/s for Gemma-3 when the loss is on the last 8
positions only. Gemma-3's 262k-vocabulary head makes the logits tensor
(8 × 64 × 262144 floats = 537 MB, plus its softmax and gradient) most of a
step; surgeon computes logits only where the loss needs them
(``logits_to_keep`` with a mask), so a prompt → completion task pays for the
head on the completion tokens alone.

Each variant runs in its own child process (peak RSS is its own), same data,
same seed, same thread count:

* ``peft``         plain loop: ``get_peft_model`` with ``target_modules=[q_proj, v_proj]``,
                   ``layers_to_transform=0..6``; ``model(..., labels=...)`` (logits everywhere)
* ``surgeon``      ``surgeon.study.finetune.finetune`` with the same adapter (roles attn.q+attn.v)
* ``peft-raw``, ``surgeon-raw``   the same with the loss on every token (raw texts), where
                   no position can be skipped: the two should be level

Data: windows of 64 tokens of ``surgeon/data/neutral_en.txt``; the completion
is the last 8 tokens of each window. Tokens/s counts every input token of every
step, first step included.

On a shared machine the load of other processes moves every figure; the
variants are run interleaved, ``--repeats`` times, and the best run of each
is reported beside all runs.

Usage: ``python benches/bench_finetune.py [--models smollm2,gemma3] [--steps 6] [--repeats 2] [--json out.json]``
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

WINDOW, COMPLETION, BATCH, RANK, LAYERS = 64, 8, 8, 8, list(range(7))


def make_task(model_dir, raw: bool):
    from transformers import AutoTokenizer

    from surgeon.study.task import Task, neutral_texts

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [i for t in neutral_texts("neutral_en", 200) for i in tok(t, add_special_tokens=False)["input_ids"]]
    train = []
    for k in range(2 * BATCH):
        w = ids[k * WINDOW: (k + 1) * WINDOW - 1]  # the tokenizer's BOS (if any) makes 64
        if raw:
            train.append({"text": tok.decode(w)})
        else:
            train.append({"prompt": tok.decode(w[:-COMPLETION]), "completion": tok.decode(w[-COMPLETION:])})
    return Task.from_dict({"name": "bench", "train": train})


def run_surgeon(model_dir, steps, raw):
    from surgeon.study.config import FinetuneConfig
    from surgeon.study.finetune import finetune

    task = make_task(model_dir, raw)
    r = finetune(model_dir, task, FinetuneConfig(method="lora", layers=LAYERS, roles="attn.q,attn.v", rank=RANK,
                                                  steps=steps, batch=BATCH, max_length=WINDOW, lr=1e-4),
                 progress=False)
    return {"tokens": r.tokens, "train_s": r.train_s, "loss_last": r.losses[-1]}


def run_peft(model_dir, steps, raw):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = make_task(model_dir, raw)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"], layers_to_transform=LAYERS))
    rows = []
    for e in task.train:
        p = tok(e.prompt)["input_ids"] if e.prompt else []
        c = tok(e.completion, add_special_tokens=not e.prompt)["input_ids"]
        ids = (p + c)[:WINDOW]
        rows.append((ids, [-100] * len(p) + c if e.prompt else list(ids)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    model.train()
    tokens, t0, loss = 0, time.perf_counter(), None
    for s in range(steps):
        batch = [rows[(s * BATCH + j) % len(rows)] for j in range(BATCH)]
        L = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [tok.pad_token_id or 0] * (L - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (L - len(y)) for _, y in batch])
        attn = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x, _ in batch])
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += int(attn.sum())
    return {"tokens": tokens, "train_s": time.perf_counter() - t0, "loss_last": loss.item()}


def child(variant, model, steps):
    import torch

    from surgeon.fixtures import fixture

    torch.set_num_threads(int(os.environ.get("SURGEON_THREADS", "2")))
    raw = variant.endswith("-raw")
    fn = run_surgeon if variant.startswith("surgeon") else run_peft
    r = fn(fixture(model), steps, raw)
    r["tokens_per_s"] = r["tokens"] / r["train_s"]
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--variants", default="peft,surgeon,peft-raw,surgeon-raw")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "MODEL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.steps)
    threads = os.environ.get("SURGEON_THREADS", "2")
    print(f"LoRA r={RANK} on q,v of layers 0-6, batch {BATCH} x {WINDOW} tokens, {a.steps} steps, {threads} threads, "
          f"best of {a.repeats} interleaved runs")
    runs: dict[tuple[str, str], list[dict]] = {}
    for model in a.models.split(","):
        for _ in range(a.repeats):  # interleaved, so a burst of load on a shared machine hits every variant
            for v in a.variants.split(","):
                p = subprocess.run([sys.executable, __file__, "--child", v, model, "--steps", str(a.steps)],
                                   capture_output=True, text=True, env={**os.environ, "SURGEON_THREADS": threads},
                                   check=False)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(f"{model} {v}: failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
                    continue
                runs.setdefault((model, v), []).append(json.loads(line[len("RESULT "):]))
    print("| model | variant | loss on | tokens/s (best) | tokens/s (all runs) | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    results = []
    for (model, v), rs in runs.items():
        best = max(rs, key=lambda r: r["tokens_per_s"])
        results.append({"model": model, "variant": v, "best": best, "runs": rs})
        on = "all tokens" if v.endswith("-raw") else f"last {COMPLETION}"
        every = ", ".join(f"{r['tokens_per_s']:.0f}" for r in rs)
        print(f"| {model} | {v} | {on} | {best['tokens_per_s']:.0f} | {every} | "
              f"{max(r['peak_rss_mb'] for r in rs):.0f} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
