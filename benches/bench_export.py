"""GGUF export: llama.cpp's converter alone vs surgeon's whole export (converter + verification), side by side.

Issue 14's targets: the whole export ≤ 2× the converter alone, and surgeon's own
part (everything but the converter, which runs as a child process) ≤ 0.5 GB peak
RSS. Each measurement runs in a fresh child process so its VmHWM is its own:

* ``convert``  ``surgeon.export.gguf.convert`` only; the converter's peak is the
  child's ``RUSAGE_CHILDREN`` high-water mark;
* ``export``   ``export_gguf`` as ``surgeon export gguf`` runs it: the converter,
  then transformers' greedy reference and llama.cpp's check. Its peak is
  surgeon's own part (the bare interpreter with torch and transformers is printed
  too, as the floor).

    python benches/bench_export.py [--model smollm2|gemma3|PATH] [--type f16|q8_0] [--repeat 2]

Threads: SURGEON_THREADS (default 2); run it alone for the timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(what: str, model: str, outtype: str, out: str) -> dict:
    import resource

    import torch  # noqa: F401 - the floor: what every step imports
    import transformers.models.auto.modeling_auto  # noqa: F401

    from surgeon.fixtures import fixture
    from surgeon.study.cost import peak_rss_mb

    path = model if Path(model).exists() else fixture(model)
    t = time.perf_counter()
    if what == "floor":
        return {"peak_mb": peak_rss_mb()}
    if what == "convert":
        from surgeon.export.gguf import convert

        convert(path, out, outtype=outtype)
        return {"seconds": time.perf_counter() - t, "peak_mb": peak_rss_mb(),
                "converter_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    from surgeon.export.gguf import export_gguf

    exp = export_gguf(path, out, outtype=outtype)
    return {"seconds": time.perf_counter() - t, "convert_s": exp.convert_seconds,
            "verify_s": exp.verification.seconds, "ok": exp.verification.ok, "peak_mb": peak_rss_mb(),
            "converter_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_child(what: str, args, folder: Path) -> dict:
    out = folder / f"{what}-{time.monotonic_ns()}.gguf"
    cmd = [sys.executable, __file__, "--one", what, "--model", args.model, "--type", args.type, "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out.unlink(missing_ok=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--type", default="f16")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(child(args.one, args.model, args.type, args.out)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        floor = run_child("floor", args, Path(tmp))
        rows = {"convert": [], "export": []}
        for _ in range(args.repeat):  # interleaved, so a busy spell hits both
            for what in rows:
                rows[what].append(run_child(what, args, Path(tmp)))
    conv = min(r["seconds"] for r in rows["convert"])
    exp = min(rows["export"], key=lambda r: r["seconds"])
    print(f"{args.model} {args.type}, best of {args.repeat}:")
    print(f"  converter alone        {conv:7.1f} s   converter peak {rows['convert'][0]['converter_peak_mb']:7.0f} MB")
    print(f"  surgeon export gguf    {exp['seconds']:7.1f} s   (converter {exp['convert_s']:.1f} s, "
          f"verification {exp['verify_s']:.1f} s, verified: {exp['ok']})")
    print(f"  ratio export / converter: {exp['seconds'] / conv:.2f}x   (target <= 2x)")
    print(f"  surgeon's own peak RSS: {max(r['peak_mb'] for r in rows['export']):.0f} MB   (target <= 500 MB; "
          f"interpreter + torch + transformers imported: {floor['peak_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
