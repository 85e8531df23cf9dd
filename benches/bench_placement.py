"""Runtime placement: load only the layers a step needs; run a model offloaded to disk.

Two measurements, each way in its own child process (wall time and peak RSS
from ``os.wait4``, through bench_stream_edit's runner so this process is not counted):

1. **Key covariance at layer 2 of a 28-layer model**, on bench_stream_edit's
   synthetic Llama-3.2-3B-shaped checkpoint (6.4 GB bf16, 4 shards, built once
   into ``$SURGEON_CACHE/bench``), given SmolLM2's tokenizer (hard links of the
   shards in a sibling directory): ``key_covariance(ck, 2)`` on a Runtime of
   3 or 8 layers (``load(ck, layers=n)``) in float32, and of 3 or all 28 layers
   in bfloat16 (see ``WAYS``). Also checks the C agree (relative Frobenius difference).
2. **ROME + measurement on SmolLM2-135M, offloaded vs in memory**: a rank-one
   edit at layer 6 (C from the corpus, 20 000 tokens, computed on the same
   runtime; 20 Adam steps) and the teacher-forced metrics of a one-fact task,
   once with the model in memory (float32, 0.54 GB) and once with
   ``max_memory={"cpu": "150MB"}`` (29 of 30 layers offloaded to disk and read
   back from the safetensors file at every forward). Checks the edits agree.

    python benches/bench_placement.py                # both, 1 run each
    python benches/bench_placement.py --only rome --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_stream_edit import bench_root, build, run_child  # noqa: E402

COV_CHILD = textwrap.dedent("""
    import sys, torch, json
    torch.set_num_threads(int(sys.argv[4]))
    import surgeon
    from surgeon.edits.covariance import key_covariance
    from surgeon.runtime import load
    ck = surgeon.open(sys.argv[1])
    dtype, layers = sys.argv[2].split(":")
    rt = load(ck, dtype=getattr(torch, dtype), layers=int(layers) if layers != "all" else None)
    c = key_covariance(ck, 2, tokens=int(sys.argv[5]), runtime=rt, use_cache=False, progress=False)
    torch.save(c.matrix, sys.argv[3])
""")

ROME_CHILD = textwrap.dedent("""
    import sys, json, torch
    torch.set_num_threads(int(sys.argv[4]))
    import surgeon
    from surgeon.edits.rome import RankOneRequest, rank_one
    from surgeon.runtime import load
    from surgeon.study import measure
    from surgeon.study.task import Task
    task = Task.from_dict({"name": "eiffel",
        "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"}],
        "specificity": [{"prompt": "The Louvre is located in the city of"}],
        "neutral": ["She poured the tea, sat down by the window and read the letter a second time."]})
    ck = surgeon.open(sys.argv[1])
    rt = load(ck, **json.loads(sys.argv[2]))
    ref = measure.reference(rt, task)
    r = rank_one(ck, RankOneRequest("The Eiffel Tower is located in the city of", "Eiffel Tower", " Rome"),
                 layer=6, runtime=rt)
    m = measure.measure(rt, task, ref, generated=False)
    torch.save({"delta_w": r.delta_w, "p_after": r.p_after, "efficacy_p": m.efficacy_p, "kl": m.kl}, sys.argv[3])
""")


# dtype:layers. float32 converts (reads and copies) every tensor it loads, so RSS counts the layers loaded;
# bfloat16 is the stored dtype, which transformers maps zero-copy: only pages a forward touches count.
# float32 with all 28 layers would be 12.8 GB: too much for the 23 GB shared development machine.
WAYS = ("float32:3", "float32:8", "bfloat16:3", "bfloat16:all")


def with_tokenizer(src: Path, tokenizer_from: Path) -> Path:
    """A sibling of ``src`` holding hard links of its files plus ``tokenizer_from``'s tokenizer files."""
    out = src.with_name(src.name + "-tok")
    if (out / ".complete").exists():
        return out
    out.mkdir(exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not (out / p.name).exists():
            os.link(p, out / p.name)
    for p in tokenizer_from.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) and not (out / p.name).exists():
            (out / p.name).write_bytes(p.read_bytes())  # small files; the fixture may sit on another filesystem
    (out / ".complete").write_text("")
    return out


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def timed(code: str, args: list[str], reps: int) -> tuple[float, float]:
    """Median wall (s) and max peak RSS (GB) over ``reps`` runs of a child."""
    runs = [run_child([sys.executable, "-c", code, *args]) for _ in range(reps)]
    return statistics.median(w for w, _ in runs), max(r for _, r in runs)


def bench_covariance(reps: int, threads: int, tokens: int) -> dict:
    import torch

    from surgeon.fixtures import fixture

    src = with_tokenizer(build(4), Path(fixture("smollm2")))
    work = bench_root() / "work"
    work.mkdir(exist_ok=True)
    out = {}
    for way in WAYS:
        wall, rss = timed(COV_CHILD, [str(src), way, str(work / f"C-{way}.pt"), str(threads), str(tokens)], reps)
        out[way] = {"wall_s": round(wall, 2), "peak_rss_gb": round(rss, 2)}
        print(f"  covariance at layer 2, {way} layers: {wall:.1f} s, {rss:.2f} GB", flush=True)
    out["rel_diff_C"] = max(rel(torch.load(work / f"C-{w}.pt"), torch.load(work / "C-bfloat16:all.pt"))
                            for w in WAYS if w.startswith("bfloat16"))
    return out


def bench_rome(reps: int, threads: int) -> dict:
    import torch

    from surgeon.fixtures import fixture

    work = bench_root() / "work"
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for way, kw in (("memory", {}), ("offloaded", {"max_memory": {"cpu": "150MB"}})):
        args = [fixture("smollm2"), json.dumps(kw), str(work / f"rome-{way}.pt"), str(threads)]
        wall, rss = timed(ROME_CHILD, args, reps)
        out[way] = {"wall_s": round(wall, 2), "peak_rss_gb": round(rss, 2)}
        print(f"  ROME + measure on SmolLM2, {way}: {wall:.1f} s, {rss:.2f} GB", flush=True)
    a, b = torch.load(work / "rome-offloaded.pt"), torch.load(work / "rome-memory.pt")
    out["rel_diff_delta_w"] = rel(a["delta_w"], b["delta_w"])
    out["abs_diff_p_after"] = abs(a["p_after"] - b["p_after"])
    out["abs_diff_kl"] = abs(a["kl"] - b["kl"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("covariance", "rome"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("SURGEON_THREADS", "2")))
    ap.add_argument("--tokens", type=int, default=2048, help="Tokens for C on the 3B checkpoint.")
    args = ap.parse_args(argv)
    res = {}
    if args.only in (None, "covariance"):
        res["covariance"] = bench_covariance(args.reps, args.threads, args.tokens)
    if args.only in (None, "rome"):
        res["rome"] = bench_rome(args.reps, args.threads)
    print(json.dumps(res, indent=2))
    if "covariance" in res:
        c = res["covariance"]
        a, b = c["float32:3"], c["float32:8"]
        per_layer = (b["peak_rss_gb"] - a["peak_rss_gb"]) / 5
        print(f"\nfloat32: {per_layer:.2f} GB per decoder layer loaded; all 28 would be "
              f"~{a['peak_rss_gb'] + 25 * per_layer:.1f} GB (extrapolated); bf16 3 vs all layers: "
              f"RSS {c['bfloat16:3']['peak_rss_gb']:.2f} vs {c['bfloat16:all']['peak_rss_gb']:.2f} GB, "
              f"wall {c['bfloat16:3']['wall_s']:.1f} vs {c['bfloat16:all']['wall_s']:.1f} s; "
              f"C differs by {c['rel_diff_C']:.1e}")
    if "rome" in res:
        r = res["rome"]
        print(f"offloaded vs memory: wall {r['offloaded']['wall_s'] / r['memory']['wall_s']:.2f} ×, "
              f"RSS {r['offloaded']['peak_rss_gb']:.2f} GB vs {r['memory']['peak_rss_gb']:.2f} GB "
              f"(cap 0.15 GB + 1 GB = {0.15 + 1:.2f}); ΔW differs by {r['rel_diff_delta_w']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
