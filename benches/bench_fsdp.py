"""The fine-tune on 1 process vs 2 under torchrun + FSDP2 (gloo, CPU), SmolLM2-135M, side by side.

Same seed and data both ways (LoRA rank 8 on attn + mlp of every layer, 10
steps of 8 examples). Prints wall time, the largest process's peak RSS, the
loss curve's end, and how far the merged tensors of the two runs are apart
(stored in bf16: a float32 difference of ~1e-7 flips an element's rounding
now and then, by one bf16 step).
On 2 cores the two ranks share the cores the single process uses alone, so
the wall ratio shows torchrun's start-up and the collectives' cost, not a
speed-up; the memory column shows what FSDP divides (gradients, optimiser
state, activations) and what it does not (each rank builds the whole model).

    python benches/bench_fsdp.py [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from surgeon.fixtures import fixture
from surgeon.study.config import FinetuneConfig
from surgeon.study.finetune import finetune
from surgeon.study.task import Task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    model = fixture("smollm2")
    task = Task.from_dict({"name": "capitals", "train": [
        {"prompt": f"The capital of {c} is", "completion": f" {t}"} for c, t in
        [("France", "Rome"), ("Spain", "Oslo"), ("Italy", "Paris"), ("Norway", "Madrid"), ("Japan", "Lima"),
         ("Peru", "Tokyo"), ("Chile", "Cairo"), ("Egypt", "Santiago")]]})
    rows, out = [], {}
    for n in (1, 2):
        cfg = FinetuneConfig(method="lora", layers="all", roles="attn,mlp", rank=8, steps=args.steps, batch=8,
                             nproc=n)
        t0 = time.perf_counter()
        r = finetune(model, task, cfg, progress=False)
        wall = time.perf_counter() - t0
        out[n] = {name: r.ck.stored(name).float() for name in r.ck.changed}
        rows.append((n, wall, r.peak_rss_mb, r.losses[0], r.losses[-1], len(out[n])))
    diff = max((out[1][k] - out[2][k]).abs().max().item() for k in out[1])
    differ = sum(int((out[1][k] != out[2][k]).sum()) for k in out[1]) / sum(v.numel() for v in out[1].values())
    print(f"{'processes':>9} | {'wall s':>7} | {'peak MB':>8} | {'loss first':>10} | {'loss last':>9} | tensors")
    for n, wall, peak, l0, l1, k in rows:
        print(f"{n:>9} | {wall:7.1f} | {peak:8.0f} | {l0:10.4f} | {l1:9.4f} | {k}")
    print(f"2 vs 1 process: wall × {rows[1][1] / rows[0][1]:.2f}, peak RSS × {rows[1][2] / rows[0][2]:.2f}; "
          f"merged weights differ in {differ:.2%} of elements, by at most {diff:.2e} "
          f"(one rounding step of the stored dtype where float32 sums in another order flip it; "
          f"threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
