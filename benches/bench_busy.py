"""A busy machine: SmolLM2 forward passes beside two other 2-thread torch jobs, OpenMP's default waits vs passive.

OpenMP's idle threads spin by default (GNU OpenMP: ~300k polls before they
sleep). With three 2-thread torch jobs on 2 cores, spinning threads hold the
cores the working ones need; a fair share of 2 cores among 3 jobs costs 3×.
surgeon sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (:mod:`surgeon._threads`).

For each policy (``default``: the variable removed; ``passive``): the timed
job (a fixed number of SmolLM2 forward passes, batch 4 × 64 tokens, timed
after the model is loaded and warmed up) runs alone, then again while two
competitors (the same forward pass in a loop, same policy and thread count)
run; printed: both wall times and the slowdown, target ≤ 3.5× (fair share 3×).

Usage: ``python benches/bench_busy.py [--passes 12] [--threads 2] [--others 2] [--policies default,passive]``.
Run it on an otherwise quiet machine (``uptime``): other load adds to both
policies' slowdowns.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD = r"""
import sys, time
import torch
from surgeon.fixtures import fixture
from surgeon.runtime import load

mode, passes, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
rt = load(fixture("smollm2"))
ids = torch.randint(100, 10000, (4, 64))
with torch.no_grad():
    rt.model(input_ids=ids)  # warm-up
    print("ready", flush=True)
    if mode == "loop":
        while True:
            rt.model(input_ids=ids)
    t = time.perf_counter()
    for _ in range(passes):
        rt.model(input_ids=ids)
    print(f"{time.perf_counter() - t:.3f}", flush=True)
"""


def env_for(policy: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")}
    env.update(OMP_NUM_THREADS=str(threads), SURGEON_THREADS=str(threads))
    if policy == "passive":
        env.update(OMP_WAIT_POLICY="PASSIVE", KMP_BLOCKTIME="0")
    return env


def timed(policy: str, passes: int, threads: int) -> float:
    res = subprocess.run([sys.executable, "-c", CHILD, "timed", str(passes), str(threads)],
                         env=env_for(policy, threads), capture_output=True, text=True, check=True)
    return float(res.stdout.split()[-1])


def beside_others(policy: str, passes: int, threads: int, others: int) -> float:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "loop", "0", str(threads)], env=env_for(policy, threads),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(others)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        return timed(policy, passes, threads)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--others", type=int, default=2)
    ap.add_argument("--policies", default="default,passive", help="Comma-separated: default, passive.")
    a = ap.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f}; {a.passes} forward passes, {a.threads} threads, "
          f"{a.others} competing jobs")
    print(f"{'policy':<8} {'alone s':>8} {'busy s':>8} {'slowdown':>9}")
    rows = {}
    for policy in a.policies.split(","):
        t0 = time.perf_counter()
        alone = timed(policy, a.passes, a.threads)
        busy = beside_others(policy, a.passes, a.threads, a.others)
        rows[policy] = busy / alone
        print(f"{policy:<8} {alone:8.2f} {busy:8.2f} {busy / alone:8.1f}×   ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    fair = (a.others + 1) * a.threads / (os.cpu_count() or 1)
    verdict = f"passive {'met' if rows['passive'] <= 3.5 else 'missed'}" if "passive" in rows else "passive not run"
    print(f"fair share {max(fair, 1):.1f}×; target ≤ 3.5×: {verdict}; load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
