"""The fine-tune on 1 process vs 2 under torchrun + FSDP2 (gloo, CPU), SmolLM2-135M, side by side.

Same seed and data both ways (LoRA rank 8 on attn + mlp of every layer, 10
steps of 8 examples). Prints wall time, the largest process's peak RSS, the
loss curve's end, and how far the merged tensors of the two runs are apart
(stored in bf16: a float32 difference of ~1e-7 flips an element's rounding
now and then, by one bf16 step).
On 2 cores the two ranks share the cores the single process uses alone, so
the wall ratio shows torchrun's start-up and the collectives' cost, not a
speed-up. The memory column is the largest process's peak (every rank reads
its own rows from the files; none holds the whole model); docs/scale.md has
the per-rank figures and why the ranks trim the heap every few layers (glibc
keeps the freed all-gather buffers).

``--merge``: the calling process of a 2-process run (which never builds the
model) in a fresh child, its peak RSS through merge + save with the trained
tensors staged deferred (as ``finetune`` does) vs all made and held (the
staging before deferred values), against the bytes of those tensors.

    python benches/bench_fsdp.py [--steps 10] [--merge]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

from surgeon.fixtures import fixture
from surgeon.study.config import FinetuneConfig
from surgeon.study.cost import peak_rss_mb
from surgeon.study.finetune import finetune
from surgeon.study.task import Task

TASK = Task.from_dict({"name": "capitals", "train": [
    {"prompt": f"The capital of {c} is", "completion": f" {t}"} for c, t in
    [("France", "Rome"), ("Spain", "Oslo"), ("Italy", "Paris"), ("Norway", "Madrid"), ("Japan", "Lima"),
     ("Peru", "Tokyo"), ("Chile", "Cairo"), ("Egypt", "Santiago")]]})


def merge_child(how: str, steps: int) -> None:
    """One 2-process fine-tune + save from this process; prints its peak RSS as JSON."""
    base = peak_rss_mb()
    cfg = FinetuneConfig(method="lora", layers="all", roles="attn,mlp", rank=8, steps=steps, batch=8, nproc=2)
    ck = finetune(fixture("smollm2"), TASK, cfg, progress=False).ck
    if how == "held":  # every trained tensor made and staged as a tensor until the save
        for name in ck.changed:
            ck.staged[name] = ck.stored(name)
    with tempfile.TemporaryDirectory() as tmp:
        ck.save(f"{tmp}/out")
    held = sum(ck.staged[n].nbytes for n in ck.changed)
    largest = max(ck.staged[n].nbytes for n in ck.changed)
    print(json.dumps({"how": how, "base_mb": base, "peak_mb": peak_rss_mb(), "tensors": len(ck.changed),
                      "bytes_mb": held / 2**20, "largest_mb": largest / 2**20}))


def merge(steps: int) -> None:
    for how in ("deferred", "held"):
        out = subprocess.run([sys.executable, __file__, "--merge-child", how, "--steps", str(steps)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{r['how']:>8}: peak RSS {r['peak_mb']:.0f} MB, {r['peak_mb'] - r['base_mb']:+.0f} MB over the "
              f"interpreter with torch ({r['base_mb']:.0f} MB); {r['tensors']} trained tensors, "
              f"{r['bytes_mb']:.0f} MB stored, the largest {r['largest_mb']:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--merge-child")
    args = ap.parse_args()
    if args.merge_child:
        return merge_child(args.merge_child, args.steps)
    if args.merge:
        return merge(args.steps)
    model, task = fixture("smollm2"), TASK
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
