"""Editing one tensor of a ~6 GB, multi-shard bf16 checkpoint: surgeon vs the ways people do it today.

Builds once, into ``$SURGEON_CACHE/bench`` (default ``~/.cache/surgeon/bench``,
never the repository), a Llama-shaped checkpoint: a real ``LlamaConfig`` with
Llama-3.2-3B sizes (28 layers, hidden 3072, 128k vocabulary, tied embeddings,
3.2 B parameters = 6.4 GB in bf16), the tensor names transformers itself
lists, random values. The same tensors are written once in 4 shards and once
in 16, streaming tensor by tensor (``surgeon.io.shards.write_shard``), so building
never holds more than 64 MB of tensor data.

Then the edit ``layers.14.mlp.down *= 1.01`` is made, each way in its own child
process, side by side:

* ``cp``            copy of the touched shard: the physical floor for writing it
* ``surgeon``       ``surgeon apply`` (kernel copy of the touched shard around the
                    changed byte range, new bytes written in place, hard-link the rest);
                    ``surgeon save() alone`` times only the save inside such a run
* ``safetensors``   load the touched shard with safetensors, edit, ``save_file``,
                    hard-link the rest (what a careful user scripts by hand)
* ``transformers``  ``from_pretrained`` -> the edit -> ``save_pretrained``

and reports the median wall time and peak RSS (``ru_maxrss`` from ``os.wait4``,
through a small runner process so this one's memory is not counted) of each,
the ratios against the targets, and checks surgeon's output: only the
touched shard differs, only inside the edited tensor's bytes, it loads, and
the edited tensor equals ``(W.float() * 1.01).to(bf16)`` (and transformers'
result bit for bit).

Cache control: every way runs once unmeasured to warm the page cache with the
inputs, then the ways take turns (round-robin, so a change in load hits all of
them alike), ``sync`` runs before every measured run (so one run's dirty pages are
not flushed on the next run's time), outputs are deleted after each run, and
``--cold`` additionally evicts the input shards from the page cache before each
run with ``posix_fadvise(DONTNEED)`` (no root needed). Timings are wall clock on
a shared machine: look at the ratios, measured in the same minute, more than at
absolute numbers.

    python benches/bench_stream_edit.py                 # 4 and 16 shards, 5 reps (2 for transformers)
    python benches/bench_stream_edit.py --shards 4 --reps 1 --skip transformers
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
import zlib
from math import prod
from pathlib import Path

LAYER = 14
FACTOR = 1.01
TENSOR = f"model.layers.{LAYER}.mlp.down_proj.weight"
GB = 1e9

LLAMA_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
                rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)


def bench_root() -> Path:
    base = Path(os.environ.get("SURGEON_CACHE", Path.home() / ".cache" / "surgeon"))
    return base / "bench"


# ------------------------------------------------------------------------ building


def llama_layout() -> tuple[object, list[tuple[str, tuple[int, ...]]]]:
    """(config, [(tensor name, shape)]) exactly as transformers names a tied Llama's weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**LLAMA_3B, dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    names = [(n, tuple(t.shape)) for n, t in model.state_dict().items() if n not in tied]
    return cfg, names


def _random_chunks(name: str, shape: tuple[int, ...]):
    """Deterministic bf16 values for ``name``, generated 16 M elements at a time."""
    import torch

    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    n, step = prod(shape), 1 << 24
    norm = name.endswith("norm.weight")
    for i in range(0, n, step):
        x = torch.randn(min(step, n - i), generator=g) * 0.02
        yield (x + 1 if norm else x).to(torch.bfloat16)


def _copied_chunks(path: Path, start: int, end: int):
    """The bytes of one tensor of an already-built variant, 64 MB at a time."""
    with open(path, "rb") as f:
        f.seek(start)
        while start < end:
            piece = f.read(min(64 << 20, end - start))
            start += len(piece)
            yield piece


def _source_of_values(names):
    """name -> chunk generator: copies from a variant already built, else fresh random values."""
    from surgeon.io.shards import read_header

    for other in sorted(bench_root().glob("llama-3b-synthetic-*shards")):
        if (other / ".complete").exists():
            where = {}
            for shard in other.glob("*.safetensors"):
                for e in read_header(str(shard), shard.name).entries:
                    where[e.name] = (shard, e.start, e.end)
            return lambda name, shape: _copied_chunks(*where[name])
    return _random_chunks


def build(num_shards: int) -> Path:
    """The cached synthetic checkpoint in ``num_shards`` shards (built on first use)."""
    from surgeon.io.shards import write_shard

    out = bench_root() / f"llama-3b-synthetic-{num_shards}shards"
    if (out / ".complete").exists():
        return out
    cfg, names = llama_layout()
    sizes = [prod(s) * 2 for _, s in names]
    total, target = sum(sizes), sum(sizes) / num_shards
    groups: list[list[int]] = [[] for _ in range(num_shards)]
    cum = 0
    for i, nbytes in enumerate(sizes):
        groups[min(num_shards - 1, int((cum + nbytes / 2) // target))].append(i)
        cum += nbytes
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"building {out} ({total / GB:.2f} GB, {num_shards} shards) ...", flush=True)
    t0 = time.time()
    weight_map = {}
    values = _source_of_values(names)
    for k, idx in enumerate(groups):
        rel = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        items = [(names[i][0], "BF16", names[i][1], values(*names[i])) for i in idx]
        write_shard(tmp / rel, items, {"format": "pt"})
        weight_map.update({names[i][0]: rel for i in idx})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    cfg.save_pretrained(tmp)
    (tmp / ".complete").write_text("")
    os.sync()
    tmp.rename(out)
    print(f"  built in {time.time() - t0:.0f} s", flush=True)
    return out


# ------------------------------------------------------------------------ the ways

EDIT_SCRIPT = f'''
def edit(ck, layer={LAYER}, factor={FACTOR}):
    key = f"layers.{{layer}}.mlp.down"
    ck[key] = ck[key] * factor
'''

SAFETENSORS_WAY = '''
import os, shutil, sys, json, torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
src, out, shard, name, factor = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
os.makedirs(out)
with safe_open(os.path.join(src, shard), "pt") as f:
    meta = f.metadata()
tensors = load_file(os.path.join(src, shard))
tensors[name] = (tensors[name].float() * factor).to(tensors[name].dtype)
save_file(tensors, os.path.join(out, shard), metadata=meta)
for p in os.listdir(src):
    if p != shard and not p.startswith("."):
        (os.link if p.endswith(".safetensors") else shutil.copyfile)(os.path.join(src, p), os.path.join(out, p))
'''

SURGEON_SAVE_ONLY = '''
import json, sys, time
import surgeon
from surgeon.edits.apply import run_script
src, out, script, report = sys.argv[1:5]
ck = surgeon.open(src)
source = run_script(ck, script)
t0 = time.perf_counter()
ck.save(out, source=source)
json.dump({"inner": time.perf_counter() - t0}, open(report, "w"))
'''

TRANSFORMERS_WAY = '''
import sys, torch
torch.set_num_threads(int(sys.argv[4]))
from transformers import AutoModelForCausalLM
src, out, layer, factor = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[5])
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
with torch.no_grad():
    w = model.model.layers[layer].mlp.down_proj.weight
    w.copy_((w.float() * factor).to(w.dtype))
model.save_pretrained(out)
'''


# Children are started through this small runner: Linux carries a parent's peak RSS into a child
# across fork and exec (ru_maxrss), so measuring straight from this process would report its own peak.
RUNNER = r"""
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall": time.perf_counter() - t0, "maxrss_kb": ru.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one child process; raises if it fails."""
    report = bench_root() / "work" / "child.json"
    p = subprocess.run([sys.executable, "-c", RUNNER, str(report), *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=env)
    r = json.loads(report.read_text())
    if p.returncode != 0 or r["code"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({r['code']}):\n"
                           f"{p.stderr.decode(errors='replace')[-2000:]}")
    return r["wall"], r["maxrss_kb"] * 1024 / GB


def evict(paths) -> None:
    """Drop these files' clean pages from the page cache (unprivileged, per file)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_tree(root: Path) -> float:
    """Seconds to flush the files of ``root`` to disk (what the page-cache timing leaves out)."""
    t0 = time.perf_counter()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.perf_counter() - t0


def sha_range(path: Path, start: int, end: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left:
            chunk = f.read(min(left, 64 << 20))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def verify_surgeon(src: Path, out: Path, shard: str, reference: Path | None = None) -> list[str]:
    """Checks on surgeon's output; returns the lines to print (raises on failure)."""
    import torch
    from safetensors import safe_open

    from surgeon.io.shards import read_header

    lines = []
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    linked = [s for s in shards if s != shard and os.path.samefile(src / s, out / s)]
    assert linked == [s for s in shards if s != shard], "every untouched shard must be a hard link of the input"
    assert not os.path.samefile(src / shard, out / shard), "the touched shard must be a new file"
    h_in, h_out = read_header(str(src / shard), shard), read_header(str(out / shard), shard)
    assert h_in.header_len == h_out.header_len and h_in.entries == h_out.entries, "touched shard's layout changed"
    e = next(x for x in h_in.entries if x.name == TENSOR)
    size = h_in.file_size
    assert sha_range(src / shard, 0, e.start) == sha_range(out / shard, 0, e.start), "bytes before the tensor differ"
    assert sha_range(src / shard, e.end, size) == sha_range(out / shard, e.end, size), "bytes after the tensor differ"
    assert sha_range(src / shard, e.start, e.end) != sha_range(out / shard, e.start, e.end), "the tensor did not change"
    with safe_open(str(src / shard), "pt") as f:
        old = f.get_tensor(TENSOR)
    with safe_open(str(out / shard), "pt") as f:  # safetensors' own reader accepts the file
        new = f.get_tensor(TENSOR)
        n_loaded = len(list(f.keys()))
    want = (old.float() * FACTOR).to(torch.bfloat16)
    assert torch.equal(new, want), "edited tensor is not W*1.01 cast to bf16"
    manifest = json.loads((out / "surgeon.json").read_text())
    assert [t["name"] for t in manifest["tensors"]] == [TENSOR], manifest["tensors"]
    lines.append(f"  verified: {len(linked)} shards hard-linked, {shard} differs only in {TENSOR} "
                 f"bytes [{e.start}, {e.end}); loads ({n_loaded} tensors); value == (W*{FACTOR}).bf16")
    if reference is not None:
        ref_shard = json.loads((reference / "model.safetensors.index.json").read_text())["weight_map"][TENSOR] \
            if (reference / "model.safetensors.index.json").exists() else "model.safetensors"
        with safe_open(str(reference / ref_shard), "pt") as f:
            same = torch.equal(f.get_tensor(TENSOR), new)
        lines.append(f"  transformers round trip wrote the same {TENSOR}: {same}")
    return lines


# ------------------------------------------------------------------------ the bench


def measure(src: Path, ways: list[str], reps: int, slow_reps: int, cold: bool, threads: int) -> dict:
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = index["weight_map"][TENSOR]
    work = bench_root() / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = work / "scale_down.py"
    script.write_text(textwrap.dedent(EDIT_SCRIPT))
    out = work / "out"
    env = {**os.environ, "SURGEON_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    surgeon_bin = shutil.which("surgeon") or "surgeon"
    commands = {
        "cp": ["cp", str(src / shard), str(out)],
        "surgeon": [surgeon_bin, "apply", str(script), "--model", str(src), "--out", str(out)],
        "safetensors": [sys.executable, "-c", SAFETENSORS_WAY, str(src), str(out), shard, TENSOR, str(FACTOR)],
        "transformers": [sys.executable, "-c", TRANSFORMERS_WAY, str(src), str(out), str(LAYER), str(threads),
                         str(FACTOR)],
        "python+torch import": [sys.executable, "-c", "import surgeon.cli, torch"],
        "surgeon save() alone": [sys.executable, "-c", SURGEON_SAVE_ONLY, str(src), str(out), str(script),
                                 str(work / "inner.json")],
    }
    inputs = sorted(src.glob("*.safetensors"))
    runs: dict[str, list] = {w: [] for w in ways}
    count = {w: slow_reps if w == "transformers" else reps for w in ways}
    # round-robin: round 0 warms the cache (not counted), then every way once per round, so a
    # change in the machine's load hits all ways alike instead of whichever ran in that minute
    for rnd in range(max(count.values()) + 1):
        for way in ways:
            if rnd > count[way]:
                continue
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            if way == "cp":
                out.mkdir()
            os.sync()
            if cold and rnd > 0:
                evict(inputs)
            wall, rss = run_child(commands[way], env)
            if way == "surgeon save() alone":  # the child timed its own save(): no start-up, no edit
                wall = json.loads((work / "inner.json").read_text())["inner"]
            flush = fsync_tree(out) if out.exists() else 0.0
            if rnd > 0:
                runs[way].append((wall, rss, flush))
            if way in ("transformers", "surgeon") and rnd == count[way]:  # keep the last output to verify
                keep = work / f"{way}-out"
                shutil.rmtree(keep, ignore_errors=True)
                out.rename(keep)
        print(f"  round {rnd}{' (warm-up)' if rnd == 0 else ''}: "
              + ", ".join(f"{w} {runs[w][-1][0]:.2f} s" for w in ways if rnd and len(runs[w]) == rnd), flush=True)
    results: dict[str, dict] = {}
    for way in ways:
        results[way] = {
            "wall": statistics.median(r[0] for r in runs[way]),
            "walls": [round(r[0], 2) for r in runs[way]],
            "rss": max(r[1] for r in runs[way]),
            "flush": statistics.median(r[2] for r in runs[way]),
        }
    checks: list[str] = []
    if "surgeon" in ways:
        ref = work / "transformers-out"
        checks = verify_surgeon(src, work / "surgeon-out", shard, ref if ref.exists() else None)
    shard_bytes = (src / shard).stat().st_size
    tensor_bytes = next(e for e in _entries(src / shard) if e.name == TENSOR).nbytes
    shutil.rmtree(work, ignore_errors=True)
    return {"shard": shard, "shard_bytes": shard_bytes, "tensor_bytes": tensor_bytes, "results": results,
            "checks": checks, "total_bytes": index["metadata"]["total_size"]}


def _entries(path: Path):
    from surgeon.io.shards import read_header

    return read_header(str(path), path.name).entries


def report(n: int, m: dict) -> dict:
    r = m["results"]
    print(f"\n{n} shards: touched {m['shard']} ({m['shard_bytes'] / GB:.2f} GB of {m['total_bytes'] / GB:.2f} GB), "
          f"edited tensor {m['tensor_bytes'] / 1e6:.1f} MB")
    print(f"  {'way':<20} {'wall s':>8} {'peak RSS GB':>12} {'+fsync s':>9}   every run's wall s")
    for way, x in r.items():
        print(f"  {way:<20} {x['wall']:8.2f} {x['rss']:12.2f} {x['flush']:9.2f}   {x['walls']}")
    for line in m["checks"]:
        print(line)
    ratios = {}
    if "surgeon" in r and "cp" in r:
        ratios["surgeon/cp"] = r["surgeon"]["wall"] / r["cp"]["wall"]
        ok = ratios["surgeon/cp"] <= 1.2
        print(f"  surgeon / cp wall: {ratios['surgeon/cp']:.2f}  (target <= 1.2: {'met' if ok else 'NOT met'})")
        if "python+torch import" in r:
            startup = r["python+torch import"]["wall"]
            ratios["(surgeon-startup)/cp"] = (r["surgeon"]["wall"] - startup) / r["cp"]["wall"]
            print(f"  (surgeon - interpreter+torch import {startup:.2f} s) / cp: {ratios['(surgeon-startup)/cp']:.2f}")
        if "surgeon save() alone" in r:
            ratios["save()/cp"] = r["surgeon save() alone"]["wall"] / r["cp"]["wall"]
            ok = ratios["save()/cp"] <= 1.2
            print(f"  surgeon's save() alone / cp: {ratios['save()/cp']:.2f}  "
                  f"({'met' if ok else 'NOT met'} for the writer itself)")
    if "surgeon" in r:
        bound = 0.5 + 2 * m["tensor_bytes"] / GB
        ratios["surgeon_rss_gb"] = r["surgeon"]["rss"]
        ok = r["surgeon"]["rss"] <= bound
        print(f"  surgeon peak RSS {r['surgeon']['rss']:.2f} GB vs 0.5 GB + 2 x {m['tensor_bytes'] / GB:.3f} GB = "
              f"{bound:.2f} GB ({'met' if ok else 'NOT met'})")
    startup = r.get("python+torch import", {}).get("wall", 0.0)
    for other in ("safetensors", "transformers"):
        if other in r and "surgeon" in r:
            ratios[f"{other}/surgeon"] = r[other]["wall"] / r["surgeon"]["wall"]
            ratios[f"{other}/surgeon beyond start-up"] = ((r[other]["wall"] - startup)
                                                           / max(r["surgeon"]["wall"] - startup, 1e-3))
            print(f"  {other} / surgeon wall: {ratios[f'{other}/surgeon']:.2f}   "
                  f"(both minus the {startup:.2f} s start-up: {ratios[f'{other}/surgeon beyond start-up']:.2f})   "
                  f"RSS {r[other]['rss'] / r['surgeon']['rss']:.1f}x")
    return ratios


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--reps", type=int, default=5, help="measured repetitions per way (after one warm-up)")
    ap.add_argument("--slow-reps", type=int, default=2, help="the same for the transformers round trip")
    ap.add_argument("--skip", nargs="*", default=[], help="ways to leave out (e.g. transformers)")
    ap.add_argument("--cold", action="store_true", help="evict the input shards from the page cache before each run")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the children")
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args(argv)
    ways = [w for w in ("python+torch import", "cp", "surgeon", "surgeon save() alone", "safetensors", "transformers")
            if w not in a.skip]
    dirs = {n: build(n) for n in a.shards}
    if a.build_only:
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores; "
          f"cache: {'cold' if a.cold else 'warm'}")
    summary = {}
    for n, src in dirs.items():
        print(f"\n== {n} shards: {src}", flush=True)
        summary[n] = report(n, measure(src, ways, a.reps, a.slow_reps, a.cold, a.threads))
    for key in ("transformers/surgeon", "transformers/surgeon beyond start-up"):
        if len(summary) > 1 and all(key in s for s in summary.values()):
            seq = [(n, s[key]) for n, s in sorted(summary.items())]
            grows = all(b[1] > a_[1] for a_, b in zip(seq, seq[1:]))
            print(f"\n{key.replace('transformers', 'transformers round trip')}: "
                  + ", ".join(f"{n} shards {x:.1f}x" for n, x in seq)
                  + f"  (grows with the shard count: {'yes' if grows else 'NO'})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
