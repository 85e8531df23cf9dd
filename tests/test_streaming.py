"""Streamed surgery: editing one tensor costs that tensor's memory, not the shard's, and builds no model.

A Llama-shaped bf16 checkpoint of 272 MB in two 136 MB shards (8 layers,
hidden 1024, ``mlp.down`` 8 MB) is edited by ``surgeon apply`` in a child
process that measures its own peak RSS (``VmHWM``) before and after. The
child blocks ``import transformers`` (``sys.modules["transformers"] = None``),
so a code path that built a model would fail the run. The controls show the
bounds bite: loading the touched shard with safetensors blows the memory
bound, and a script that asks for the runtime cannot import transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from alive import Alive

import surgeon
from surgeon.io.shards import read_header, sha256_range, write_shard

MB = 1 << 20
CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=8, head_dim=128, vocab_size=8192, tie_word_embeddings=True)
DOWN = "model.layers.5.mlp.down_proj.weight"

# Peak RSS from VmHWM, this program's own high-water mark: ru_maxrss would also count the
# parent's (pytest's) memory, which Linux carries into a child through fork and exec.
HARNESS = r"""
import json, sys
def hwm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
if sys.argv[1] == "block":
    sys.modules["transformers"] = None  # any import of transformers now raises ImportError
from surgeon.cli import main
import surgeon.edits.apply, surgeon.io.save, surgeon.io.diff  # imported before the baseline is taken
import torch
w = torch.randn(256, 256).to(torch.bfloat16)  # touch the kernels' code pages (file-backed RSS) first
assert torch.isfinite((w.float() * 1.01).to(torch.bfloat16)).all()
del w
base = hwm_kb()
code = 0
try:
    main(sys.argv[2:], prog_name="surgeon")
except SystemExit as e:
    code = e.code
peak = hwm_kb()
print(json.dumps({"growth_mb": (peak - base) / 1024, "base_mb": base / 1024, "code": code,
                  "transformers_imported": sys.modules.get("transformers") is not None}))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """The 272 MB, two-shard checkpoint (random bf16 values, tensor names from transformers' Llama)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("stream") / "llama-272mb"
    root.mkdir()
    cfg = LlamaConfig(**CONFIG, dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        names = [(n, tuple(t.shape)) for n, t in LlamaForCausalLM(cfg).state_dict().items() if n != "lm_head.weight"]
    pool = (torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)

    def values(i, shape):  # a different window of the pool for each tensor, one 8 MB piece at a time
        n = torch.Size(shape).numel()
        off = (i * 7919) % pool.numel()
        for start in range(0, n, pool.numel()):
            k = min(pool.numel(), n - start)
            yield torch.cat([pool[off:], pool[:off]])[:k] if k else pool[:0]

    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        rel = f"model-0000{k + 1}-of-00002.safetensors"
        write_shard(root / rel, [(n, "BF16", s, values(i + k * half, s)) for i, (n, s) in enumerate(part)],
                    {"format": "pt"})
        weight_map.update({n: rel for n, _ in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg.save_pretrained(root)
    return root


def run(ckpt: Path, script: Path, out: Path, *, block: bool = True) -> dict:
    # a fixed mmap threshold makes glibc return freed buffers at once, so RSS tracks live memory
    env = {**os.environ, "SURGEON_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    res = subprocess.run([sys.executable, "-c", HARNESS, "block" if block else "allow", "apply", str(script),
                          "--model", str(ckpt), "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=300)
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    doc["stderr"] = res.stderr
    return doc


def sizes(ckpt: Path) -> tuple[int, int]:
    shard = ckpt / json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][DOWN]
    e = next(e for e in read_header(str(shard), shard.name).entries if e.name == DOWN)
    return shard.stat().st_size, e.nbytes


def test_editing_one_tensor_holds_that_tensor_not_the_shard_and_builds_no_model(big, tmp_path):
    script = tmp_path / "scale.py"
    script.write_text("def edit(ck):\n    ck['layers.5.mlp.down'] = ck['layers.5.mlp.down'] * 1.01\n")
    r = run(big, script, tmp_path / "out")
    shard_bytes, tensor_bytes = sizes(big)
    f32 = 2 * tensor_bytes  # the edit works in float32: bf16 tensor -> 2x its bytes
    # the script's own two float32 copies (read, product) + at most one more tensor for surgeon (the
    # bf16 cast and a boolean mask: 1.5 bytes a value) + slack for the interpreter
    bound = 3 * f32 + 12 * MB
    print(f"\nshard {shard_bytes / MB:.0f} MB, tensor {tensor_bytes / MB:.0f} MB (bf16): peak RSS grew "
          f"{r['growth_mb']:.1f} MB over {r['base_mb']:.0f} MB; bound {bound / MB:.0f} MB")
    assert r["code"] == 0, r["stderr"]
    assert not r["transformers_imported"]
    assert shard_bytes > bound + 64 * MB  # loading the shard could not hide under the bound
    assert r["growth_mb"] * MB <= bound

    out = tmp_path / "out"
    shard = json.loads((big / "model.safetensors.index.json").read_text())["weight_map"][DOWN]
    for p in big.glob("*.safetensors"):
        assert os.path.samefile(p, out / p.name) == (p.name != shard)
    e = next(e for e in read_header(str(big / shard), shard).entries if e.name == DOWN)
    size = (big / shard).stat().st_size
    assert sha256_range(str(big / shard), 0, e.start) == sha256_range(str(out / shard), 0, e.start)
    assert sha256_range(str(big / shard), e.end, size) == sha256_range(str(out / shard), e.end, size)
    old, new = surgeon.open(big).get(DOWN, dtype=None), surgeon.open(out).get(DOWN, dtype=None)
    assert torch.equal(new, (old.float() * 1.01).to(torch.bfloat16)) and not torch.equal(new, old)


def test_loading_the_whole_shard_breaks_the_memory_bound(big, tmp_path):
    """Control: the harness sees a shard held in memory, so the bound above can fail."""
    shard = json.loads((big / "model.safetensors.index.json").read_text())["weight_map"][DOWN]
    script = tmp_path / "greedy.py"
    script.write_text(f"def edit(ck):\n    whole = (ck.path / {shard!r}).read_bytes()\n"
                      "    ck['layers.5.mlp.down'] = ck['layers.5.mlp.down'] * 1.01\n")
    r = run(big, script, tmp_path / "out")
    shard_bytes, tensor_bytes = sizes(big)
    print(f"\nholding the {shard_bytes / MB:.0f} MB shard: peak RSS grew {r['growth_mb']:.1f} MB")
    assert r["code"] == 0, r["stderr"]
    assert r["growth_mb"] * MB > 3 * 2 * tensor_bytes + 12 * MB
    assert r["growth_mb"] * MB > 0.9 * shard_bytes


def test_adding_a_tensor_rewrites_the_shard_streaming(big, tmp_path):
    """A layout change (new bias) streams the old tensors with copy_file_range: memory stays flat."""
    script = tmp_path / "bias.py"
    script.write_text("import torch\ndef edit(ck):\n    ck.add('layers.5.mlp.down.bias', torch.full((1024,), 0.5))\n")
    r = run(big, script, tmp_path / "out")
    assert r["code"] == 0, r["stderr"]
    print(f"\nrewrite of a {sizes(big)[0] / MB:.0f} MB shard: peak RSS grew {r['growth_mb']:.1f} MB")
    assert r["growth_mb"] * MB <= 16 * MB
    manifest = json.loads((tmp_path / "out" / "surgeon.json").read_text())
    assert len(manifest["files"]["rewritten"]) == 1 and len(manifest["files"]["linked"]) == 1
    ck, out = surgeon.open(big), surgeon.open(tmp_path / "out")
    assert torch.equal(out.get("layers.5.mlp.down.bias"), torch.full((1024,), 0.5))
    for name in ck.entries:  # every old tensor came through byte for byte
        a, b = ck.entries[name], out.entries[name]
        assert (sha256_range(str(ck.path / a.file), a.start, a.end)
                == sha256_range(str(out.path / b.file), b.start, b.end))


def test_a_script_that_builds_a_model_is_what_the_block_catches(big, tmp_path):
    """Control: with transformers blocked, asking for the runtime fails, so the first test can fail."""
    script = tmp_path / "runtime.py"
    script.write_text("from surgeon.runtime import load\ndef edit(ck):\n    load(ck)\n")
    r = run(big, script, tmp_path / "out")
    assert r["code"] != 0 and "transformers" in r["stderr"]
    assert not (tmp_path / "out").exists()


def test_a_staged_value_equal_to_the_input_leaves_the_shard_shared(tiny, tmp_path):
    ck = surgeon.open(tiny("llama"))
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"].clone()  # staged, but the same bytes
    doc = ck.save(tmp_path / "out")
    assert doc["tensors"] == [] and doc["files"]["linked"] == ["model.safetensors"]
    assert os.path.samefile(ck.path / "model.safetensors", tmp_path / "out" / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------- deferred values: the save makes one at a time


DEFERRED = [f"layers.{i}.{r}" for i in (0, 1) for r in ("attn.q", "attn.k", "attn.o", "mlp.up", "mlp.down")]


@pytest.mark.parametrize("how", ["patched", "rewritten"])
def test_a_save_of_deferred_values_holds_one_per_thread_however_many_are_staged(tiny, tmp_path, how):
    """Ten tensors staged with defer(): none is made until read, and the save (manifest hash in one thread,
    writer in the other) never holds more than two; the bytes are those of the same values staged eagerly."""
    alive = Alive()
    lazy, eager = surgeon.open(tiny("llama")), surgeon.open(tiny("llama"))  # float32: no cast copies the value
    for n, key in enumerate(DEFERRED):
        lazy.defer(key, lambda w, n=n: alive.track(w * (1.5 + n)))
        eager[key] = eager[key] * (1.5 + n)
    if how == "rewritten":  # a new tensor changes the shard's layout: it is streamed tensor by tensor
        for ck in (lazy, eager):
            ck.add("layers.0.attn.o.bias", torch.zeros(ck.shape("layers.0.attn.o")[0]))
    assert alive.made == 0 and lazy.changed == eager.changed
    torch.testing.assert_close(lazy["layers.1.mlp.up"], eager["layers.1.mlp.up"], rtol=0, atol=0)
    assert alive.made == 1 and alive.now == 0  # a read makes the value and drops it
    doc = lazy.save(tmp_path / "lazy")
    assert doc["files"][how] == ["model.safetensors"]
    assert alive.made >= 2 * len(DEFERRED) + 1 and alive.now == 0  # hashed and written: each made twice
    assert alive.peak <= 2, f"{alive.peak} deferred values alive at once"
    plain = eager.save(tmp_path / "eager")
    shard = "model.safetensors"
    assert (tmp_path / "lazy" / shard).read_bytes() == (tmp_path / "eager" / shard).read_bytes()
    assert [t["new_sha256"] for t in doc["tensors"]] == [t["new_sha256"] for t in plain["tensors"]]


def test_defer_builds_on_what_is_staged_and_checks_the_value_when_made(tiny, tmp_path):
    ck = surgeon.open(tiny("llama"))
    before = ck["layers.0.mlp.down"]
    ck["layers.0.mlp.down"] = before * 2
    ck.defer("layers.0.mlp.down", lambda w: w + 1)  # on top of the eager edit
    ck.defer("layers.0.mlp.down", lambda w: w * 3)  # and on top of the deferred one
    torch.testing.assert_close(ck["layers.0.mlp.down"], (before * 2 + 1) * 3, rtol=0, atol=1e-6)
    ck.defer("layers.0.mlp.up", lambda w: w * float("inf"))
    with pytest.raises(surgeon.errors.EditError, match="layers.0.mlp.up .*Inf"):
        ck["layers.0.mlp.up"]
    ck = surgeon.open(tiny("llama"))
    ck.defer("layers.0.mlp.gate", lambda w: w[:, :3])
    with pytest.raises(surgeon.errors.EditError, match="layers.0.mlp.gate .*does not match"):
        ck.save(tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------- prefetch: the copy overlaps the edit


READS = '''
def edit(ck, read=(), change=()):
    for key in read:
        ck[key]
    for key in change:
        ck[key] = ck[key] * 1.5
'''


@pytest.fixture
def three_shards(tmp_path, tiny):
    from reshard import reshard

    return reshard(tiny("llama"), tmp_path / "in", 3)


def _prefetch_run(tmp_path, src, monkeypatch, name, **params):
    from surgeon.edits.apply import apply
    from surgeon.io import prefetch as save_mod

    copied = []
    real = save_mod._copy_whole
    monkeypatch.setattr(save_mod, "_copy_whole", lambda a, b: (copied.append(Path(a).name), real(a, b))[1])
    script = tmp_path / "reads.py"
    script.write_text(READS)
    out = tmp_path / name
    doc = apply(script, src, out, params=params)
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no scratch left
    return out, doc, copied


def test_apply_patches_the_shard_it_copied_while_the_script_ran(tmp_path, three_shards, monkeypatch):
    ck = surgeon.open(three_shards)
    shard_of = {k: ck.entries[ck.resolve(k).tensor].file for k in ("layers.0.mlp.down", "layers.1.mlp.down", "embed")}
    out, doc, copied = _prefetch_run(tmp_path, three_shards, monkeypatch, "a", change=["layers.0.mlp.down"])
    assert copied == [shard_of["layers.0.mlp.down"]] and doc["files"]["patched"] == copied
    # the same edit saved without a prefetch writes the same bytes
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 1.5
    ck.save(tmp_path / "plain")
    for rel in ck.shards:
        assert (out / rel).read_bytes() == (tmp_path / "plain" / rel).read_bytes(), rel
        shared = (out / rel).stat().st_ino == (three_shards / rel).stat().st_ino
        assert shared == (rel not in copied), rel  # only the patched shard is a new file


def test_a_shard_read_but_not_changed_is_still_linked_and_the_copies_are_capped(tmp_path, three_shards, monkeypatch):
    ck = surgeon.open(three_shards)
    files = {ck.entries[ck.resolve(k).tensor].file: k
             for k in ("embed", "layers.0.mlp.down", "layers.1.mlp.down", "final_norm")}
    assert len(files) == 3
    keys = list(files.values())
    out, doc, copied = _prefetch_run(tmp_path, three_shards, monkeypatch, "b", read=keys, change=[keys[0]])
    assert len(copied) == 2  # at most two shards are copied ahead
    assert doc["files"]["patched"] == [ck.entries[ck.resolve(keys[0]).tensor].file]
    for rel in ck.shards:
        if rel not in doc["files"]["patched"]:
            assert (out / rel).stat().st_ino == (three_shards / rel).stat().st_ino  # hard link, copy discarded
