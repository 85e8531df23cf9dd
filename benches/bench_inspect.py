"""``surgeon inspect`` and ``surgeon.open`` read headers only: a 6.4 GB checkpoint costs what a 270 MB one does.

Compares the synthetic Llama-3.2-3B-shaped checkpoint of bench_stream_edit.py
(6.4 GB bf16, in 4 and in 16 shards; built on first use) with SmolLM2-135M
(270 MB, one file):

* the CLI, ``surgeon inspect DIR`` in a child process (median wall of --reps runs
  after one warm-up; this includes the Python and torch start-up every
  command pays);
* from Python, ``surgeon.open(DIR)`` and ``summarize`` (the fastest of 30 calls
  in this process, so only surgeon's own work is timed; on a shared machine
  noise only ever adds time, so the minimum is the stable statistic).

Target: 6.4 GB / SmolLM2 time ratio <= 2 for both.

    python benches/bench_inspect.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_stream_edit import build  # noqa: E402


def cli_time(path: Path, reps: int) -> float:
    cmd = [sys.executable, "-m", "surgeon.cli", "inspect", str(path)]
    walls = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        if i:
            walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def open_time(path: Path, n: int = 30) -> tuple[float, float]:
    import surgeon
    from surgeon.roles.summary import summarize

    opens, sums = [], []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        ck = surgeon.open(path)
        t1 = time.perf_counter()
        summarize(ck)
        t2 = time.perf_counter()
        opens.append(t1 - t0)
        sums.append(t2 - t1)
    return min(opens[1:]), min(sums[1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    from surgeon.fixtures import fixture

    cases = {"SmolLM2-135M (1 shard)": Path(fixture("smollm2")),
             "Llama-3B synthetic (4 shards)": build(4), "Llama-3B synthetic (16 shards)": build(16)}
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rows = {}
    for name, path in cases.items():
        size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        cli = cli_time(path, a.reps)
        op, summ = open_time(path)
        rows[name] = (size, cli, op, summ)
    print(f"\n{'checkpoint':<32} {'GB':>6} {'inspect CLI s':>14} {'open() ms':>10} {'summarize ms':>13}")
    for name, (size, cli, op, summ) in rows.items():
        print(f"{name:<32} {size / 1e9:6.2f} {cli:14.3f} {op * 1e3:10.2f} {summ * 1e3:13.2f}")
    base = rows["SmolLM2-135M (1 shard)"]
    for name, row in rows.items():
        if name.startswith("SmolLM2"):
            continue
        r_cli, r_open = row[1] / base[1], row[2] / base[2]
        print(f"{name} / SmolLM2: inspect CLI {r_cli:.2f}x ({'met' if r_cli <= 2 else 'NOT met'}), "
              f"open() {r_open:.2f}x ({'met' if r_open <= 2 else 'NOT met'}), "
              f"open()+summarize {(row[2] + row[3]) / (base[2] + base[3]):.2f}x  (target <= 2)")


if __name__ == "__main__":
    main()
