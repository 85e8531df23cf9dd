"""Malformed, hostile or mistaken inputs: surgeon refuses each with one line and writes nothing.

Every case runs the real CLI in a child process (``python -m surgeon.cli apply``)
on a copy of a tiny checkpoint, and asserts the same contract:

* a non-zero exit code;
* exactly one line on stderr, naming the file or tensor and what is wrong,
  and no traceback (``--debug`` shows one);
* no output directory, no temporary directory beside it, nothing left in ``$TMPDIR``;
* every input file (links followed) has the sha256 it had before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reshard import reshard
from safetensors.torch import load_file, save_file

from surgeon.io.shards import read_header

SCALE = "def edit(ck):\n    ck['layers.0.mlp.down'] = ck['layers.0.mlp.down'] * 1.01\n"


def sha_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks followed), plus where each link points."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p) + " ->"] = os.readlink(p)
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Case:
    """A copied tiny checkpoint, an empty output parent, an empty $TMPDIR and the edit scripts."""

    def __init__(self, tmp_path: Path, src: Path):
        self.root = tmp_path
        self.model = tmp_path / "in" / "ckpt"
        shutil.copytree(src, self.model)
        self.outside = tmp_path / "in"  # files that must never be read or written live here too
        self.out_parent = tmp_path / "out"
        self.out_parent.mkdir()
        self.out = self.out_parent / "edited"
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.scripts = tmp_path / "scripts"
        self.scripts.mkdir()
        self.script("scale.py", SCALE)

    def script(self, name: str, text: str) -> Path:
        p = self.scripts / name
        p.write_text(text)
        return p

    def freeze(self):
        """Remember every input file's hash (call after corrupting, before running)."""
        self.before = sha_tree(self.root / "in")

    def run(self, *args: str, script: str = "scale.py", debug: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "SURGEON_THREADS": "1"}
        env.pop("SURGEON_DEBUG", None)
        cmd = [sys.executable, "-m", "surgeon.cli"] + (["--debug"] if debug else [])
        cmd += ["apply", str(self.scripts / script), "--model", str(self.model), "--out", str(self.out), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    def refused(self, res: subprocess.CompletedProcess, *names: str) -> str:
        """Assert the whole contract; returns the one line the user saw."""
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0, res.stdout + res.stderr
        assert len(lines) == 1, res.stderr
        assert "Traceback" not in res.stderr
        line = lines[0]
        assert line.startswith("surgeon: error: "), line
        for n in names:
            assert n in line, (n, line)
        assert not self.out.exists()
        assert list(self.out_parent.iterdir()) == [], list(self.out_parent.iterdir())
        assert list(self.tmpdir.iterdir()) == [], list(self.tmpdir.iterdir())
        assert sha_tree(self.root / "in") == self.before
        print(f"\nMESSAGE {line}")
        return line


@pytest.fixture
def case(tmp_path, tiny):
    return Case(tmp_path, tiny("llama"))


@pytest.fixture
def sharded(tmp_path, tiny):
    """The tiny checkpoint in 2 shards with an index."""
    src = reshard(tiny("llama"), tmp_path / "resharded", 2)
    return Case(tmp_path, src)


def rewrite_header(path: Path, change) -> None:
    """Apply ``change(doc)`` to a shard's header JSON, keeping the data bytes as they are."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    doc = json.loads(data[8 : 8 + n])
    change(doc)
    raw = json.dumps(doc).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def edit_index(case: Case, change) -> None:
    p = case.model / "model.safetensors.index.json"
    index = json.loads(p.read_text())
    change(index["weight_map"])
    p.write_text(json.dumps(index))


# ---------------------------------------------------------------- the files


def test_truncated_shard_is_refused_naming_the_shard_and_tensor(case):
    shard = case.model / "model.safetensors"
    size = shard.stat().st_size
    os.truncate(shard, size - 1000)
    case.freeze()
    line = case.refused(case.run(), str(shard), "truncated", "data ends at byte")
    assert f"the file has {size - 1000} bytes" in line


def test_header_with_overlapping_offsets_is_refused(case):
    shard = case.model / "model.safetensors"
    # two tensors of the same size: point the second at the first one's bytes
    a, b = "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight"

    def overlap(doc):
        assert doc[a]["shape"][0] * doc[a]["shape"][1] == doc[b]["shape"][0] * doc[b]["shape"][1]
        doc[b]["data_offsets"] = list(doc[a]["data_offsets"])

    rewrite_header(shard, overlap)
    case.freeze()
    case.refused(case.run(), str(shard), f"tensor {b!r} overlaps tensor {a!r}")


def test_header_with_offsets_past_the_end_of_file_is_refused(case):
    shard = case.model / "model.safetensors"
    last = max(read_header(str(shard), "x").entries, key=lambda e: e.end).name

    def past_end(doc):
        b, e = doc[last]["data_offsets"]
        doc[last]["data_offsets"] = [b + 64, e + 64]

    rewrite_header(shard, past_end)
    case.freeze()
    case.refused(case.run(), str(shard), repr(last), "data ends at byte")


def test_index_naming_a_missing_shard_is_refused(sharded):
    (sharded.model / "model-00002-of-00002.safetensors").unlink()
    sharded.freeze()
    sharded.refused(sharded.run(), "model-00002-of-00002.safetensors", "missing")


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_index_entry_leaving_the_directory_is_refused(sharded, kind):
    # a real safetensors file waits outside, so an unchecked path would load
    moved = sharded.outside / "model-00002-of-00002.safetensors"
    shutil.move(sharded.model / moved.name, moved)
    target = f"../{moved.name}" if kind == "dotdot" else str(moved)
    edit_index(sharded, lambda wm: wm.update({k: target for k, v in wm.items() if v == moved.name}))
    sharded.freeze()
    sharded.refused(sharded.run(), repr(target), "leaves the checkpoint directory")


def test_shard_symlink_leading_outside_is_refused(sharded):
    moved = sharded.outside / "elsewhere.safetensors"
    link = sharded.model / "model-00002-of-00002.safetensors"
    shutil.move(link, moved)
    link.symlink_to(moved)
    sharded.freeze()
    sharded.refused(sharded.run(), str(link), "outside the checkpoint", "--allow-external-links")


def test_same_tensor_in_two_shards_is_refused(sharded):
    one, two = (sharded.model / f"model-0000{k}-of-00002.safetensors" for k in (1, 2))
    dup = read_header(str(one), one.name).entries[-1].name
    tensors = load_file(two)
    tensors[dup] = load_file(one)[dup]
    save_file(tensors, two, metadata={"format": "pt"})
    sharded.freeze()
    sharded.refused(sharded.run(), repr(dup), one.name, two.name)


class _Trap:
    """Unpickling this object creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_only_checkpoint_is_refused_without_unpickling(case):
    marker = case.root / "UNPICKLED"
    sd = load_file(case.model / "model.safetensors")
    sd["trap"] = _Trap(str(marker))
    torch.save(sd, case.model / "pytorch_model.bin")
    (case.model / "model.safetensors").unlink()
    case.freeze()
    case.refused(case.run(), "pytorch_model.bin", "never unpickles")
    assert not marker.exists()
    # the trap is real: loading the file the way torch.load(weights_only=False) does springs it
    torch.load(case.model / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_unknown_architecture_is_refused_naming_the_model_type(case):
    cfg = json.loads((case.model / "config.json").read_text())
    cfg.update(model_type="brandnew", architectures=["BrandNewForCausalLM"])
    (case.model / "config.json").write_text(json.dumps(cfg))
    case.freeze()
    case.refused(case.run(), "brandnew", "layers.0.mlp.down")


# ---------------------------------------------------------------- the edits


def test_edit_with_the_wrong_shape_is_refused(case):
    case.script("shape.py", "import torch\ndef edit(ck):\n    ck['layers.0.mlp.down'] = torch.zeros(3, 3)\n")
    case.freeze()
    case.refused(case.run(script="shape.py"), "layers.0.mlp.down", "model.layers.0.mlp.down_proj.weight",
                 "(3, 3) does not match (64, 128)")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_edit_producing_nan_or_inf_is_refused(case, bad):
    case.script("bad.py", f"def edit(ck):\n    w = ck['layers.1.attn.q']\n    w[3, 5] = float('{bad}')\n"
                          "    ck['layers.1.attn.q'] = w\n")
    case.freeze()
    case.refused(case.run(script="bad.py"), "layers.1.attn.q", "model.layers.1.self_attn.q_proj.weight",
                 "NaN" if bad == "nan" else "Inf", "in 1 of 4096 values")


def test_value_overflowing_fp16_on_cast_is_refused(tmp_path, tiny):
    fp16 = tmp_path / "fp16"
    shutil.copytree(tiny("llama"), fp16)
    save_file({k: v.half() for k, v in load_file(fp16 / "model.safetensors").items()}, fp16 / "model.safetensors",
              metadata={"format": "pt"})
    cfg = json.loads((fp16 / "config.json").read_text())
    cfg["dtype"] = "float16"
    (fp16 / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "case").mkdir()
    case = Case(tmp_path / "case", fp16)
    case.script("big.py", "def edit(ck):\n    w = ck['layers.0.mlp.up']\n    w[0, 0] = 1e5\n"
                          "    ck['layers.0.mlp.up'] = w\n")
    case.freeze()
    case.refused(case.run(script="big.py"), "layers.0.mlp.up", "model.layers.0.mlp.up_proj.weight",
                 "overflows F16")


def test_edit_script_that_raises_is_reported_with_its_line(case):
    case.script("boom.py", "def edit(ck):\n    w = ck['embed']\n    raise ValueError('no such fact')\n")
    case.freeze()
    case.refused(case.run(script="boom.py"), "boom.py:3", "ValueError: no such fact")


@pytest.mark.parametrize("value", ["[0,", "{layer: 3}", '"Rome'])
def test_param_that_starts_like_json_but_does_not_parse_is_refused_naming_it(case, value):
    case.freeze()
    line = case.refused(case.run("--param", f"heads={value}"), f"--param heads={value}", "does not parse", "column")
    assert "Traceback" not in line


def test_edit_script_that_raises_names_its_params_and_their_types(case):
    case.script("index.py", "def edit(ck, factor, heads):\n    ck['embed'][int(factor)]\n")
    case.freeze()
    line = case.refused(case.run("--param", "factor=abc", "--param", "heads=[0, 1]", script="index.py"),
                        "index.py:2", "ValueError", "factor='abc' (str)", "heads=[0, 1] (list)")
    assert line.count("(params:") == 1


def test_edit_script_that_exits_early_is_not_a_success(case):
    case.script("quit.py", "import sys\ndef edit(ck):\n    sys.exit(0)\n")
    case.freeze()
    case.refused(case.run(script="quit.py"), "quit.py:3", "called exit(0)", "nothing was written")


def test_edit_script_that_raises_shows_the_traceback_with_debug(case):
    case.script("boom.py", "def edit(ck):\n    raise ValueError('no such fact')\n")
    case.freeze()
    res = case.run(script="boom.py", debug=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "no such fact" in res.stderr
    assert not case.out.exists() and list(case.out_parent.iterdir()) == []
    assert sha_tree(case.root / "in") == case.before


def test_tokenizer_larger_than_the_embedding_is_refused(case):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i}": i for i in range(300)}  # the embedding has 256 rows
    Tokenizer(WordLevel(vocab, unk_token="w0")).save(str(case.model / "tokenizer.json"))
    case.freeze()
    case.refused(case.run(), "tokenizer.json", "300 tokens", "256 rows")


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_output_equal_to_or_inside_the_input_is_refused(case, where):
    out = case.model if where == "equal" else case.model / "edited"
    case.out = out
    case.out_parent = case.root / "out"  # stays empty
    case.freeze()
    res = case.run()
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in res.stderr
    assert str(out) in lines[0] and "must not be the input checkpoint or inside it" in lines[0]
    assert not (case.model / "edited").exists()
    assert sorted(p.name for p in case.model.parent.iterdir()) == ["ckpt"]  # no temp dir beside the input
    assert list(case.tmpdir.iterdir()) == []
    assert sha_tree(case.root / "in") == case.before
    print(f"\nMESSAGE {lines[0]}")


def test_changing_a_returned_tensor_in_place_cannot_bypass_the_checks(tmp_path, tiny):
    """ck[key] hands out a copy: NaN written into it in place never reaches the staged value."""
    import surgeon

    ck = surgeon.open(tiny("llama"))  # float32 on disk: no cast, so aliasing would be possible
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 2
    w = ck["layers.0.mlp.down"]
    w[0, 0] = float("nan")
    v = torch.ones(ck.shape("layers.0.attn.q"))
    ck["layers.0.attn.q"] = v
    v[0, 0] = float("inf")
    assert torch.isfinite(ck.staged["model.layers.0.mlp.down_proj.weight"]).all()
    assert torch.isfinite(ck.staged["model.layers.0.self_attn.q_proj.weight"]).all()
