"""Fuzzing ``surgeon inspect`` with mutated safetensors headers and index files.

Whatever the bytes, inspect either succeeds or prints one clean line and exits
2: never an internal error (exit 1), a traceback, a hang (hypothesis deadline)
or a large allocation (tracemalloc peak; inspect reads headers only, so every
byte it allocates is a Python object tracemalloc sees).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reshard import reshard

from surgeon.cli import main

SETTINGS = dict(deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True, database=None)
ALLOC_LIMIT = 32 << 20  # far above what a small header needs, far below what a claimed 2**60 tensor would


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny):
    """A tiny checkpoint in two shards, and its first shard's header split from its data."""
    root = tmp_path_factory.mktemp("fuzz")
    ck = reshard(tiny("llama"), root / "ckpt", 2)
    shard = ck / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return {"dir": ck, "shard": shard.name, "header": json.loads(data[8 : 8 + n]), "raw": data,
            "n": n, "index": json.loads((ck / "model.safetensors.index.json").read_text())}


def inspect_clean(ckpt: Path) -> str:
    """Run ``surgeon inspect``; assert success or one clean error line; returns stderr."""
    tracemalloc.start()
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["inspect", str(ckpt)])
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.exit_code in (0, 2), (res.exit_code, res.stderr, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 2:
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("surgeon: error: "), res.stderr
        assert len(lines[0]) < 1000, lines[0][:200]
    assert peak < ALLOC_LIMIT, f"inspect allocated {peak / 1e6:.1f} MB"
    assert elapsed < 5
    return res.stderr


def with_files(base, *, shard_bytes: bytes | None = None, index_text: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="surgeon-fuzz-") as tmp:
        ck = Path(tmp) / "ckpt"
        shutil.copytree(base["dir"], ck)
        if shard_bytes is not None:
            (ck / base["shard"]).write_bytes(shard_bytes)
        if index_text is not None:
            (ck / "model.safetensors.index.json").write_text(index_text)
        return inspect_clean(ck)


def encode(doc, data: bytes) -> bytes:
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# ------------------------------------------------------------------ strategies

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
                      st.sampled_from([2**60, 2**63 - 1, -1, 0]), st.floats(allow_nan=False), st.text(max_size=12))
json_any = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), c, max_size=4)),
                        max_leaves=12)
field_value = st.one_of(json_any, st.lists(st.sampled_from([0, 1, 7, 64, 2**30, 2**60]), max_size=6),
                        st.sampled_from(["BF16", "F32", "F16", "I64", "bf16", "F8_E4M3", ""]))


@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_mutated_header_fields_give_a_clean_error(base, data):
    doc = json.loads(json.dumps(base["header"]))
    names = sorted(k for k in doc if k != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["set", "delete", "add", "metadata", "rename"]))
        name = data.draw(st.sampled_from(names))
        if action == "set" and isinstance(doc.get(name), dict):
            doc[name][data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = data.draw(field_value)
        elif action == "delete":
            doc.pop(name, None)
        elif action == "add":
            doc[data.draw(st.text(max_size=30))] = data.draw(st.one_of(json_any, st.fixed_dictionaries(
                {"dtype": field_value, "shape": field_value, "data_offsets": field_value})))
        elif action == "metadata":
            doc["__metadata__"] = data.draw(json_any)
        elif action == "rename" and name in doc:
            doc[data.draw(st.text(max_size=30))] = doc.pop(name)
    with_files(base, shard_bytes=encode(doc, base["raw"][8 + base["n"]:]))


@settings(max_examples=120, **SETTINGS)
@given(data=st.data())
def test_mutated_header_bytes_give_a_clean_error(base, data):
    raw = bytearray(base["raw"][: 8 + base["n"] + 4096])  # header plus the start of the data
    kind = data.draw(st.sampled_from(["flip", "truncate", "length", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, 8 + base["n"] - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif kind == "length":
        raw[:8] = struct.pack("<Q", data.draw(st.one_of(st.integers(0, 2**64 - 1),
                                                        st.sampled_from([0, 1, 2**63, 100 << 20]))))
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(max_size=32))
    out = bytes(raw) + base["raw"][len(raw):] if kind != "truncate" else bytes(raw)
    with_files(base, shard_bytes=out)


@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_mutated_index_gives_a_clean_error(base, data):
    index = json.loads(json.dumps(base["index"]))
    wm = index["weight_map"]
    kind = data.draw(st.sampled_from(["path", "drop", "add", "metadata", "replace", "text"]))
    if kind == "path":
        name = data.draw(st.sampled_from(sorted(wm)))
        wm[name] = data.draw(st.one_of(st.text(max_size=40), st.sampled_from(
            ["../model-00001-of-00002.safetensors", "/etc/passwd", "", ".", "..", "./model-00001-of-00002.safetensors",
             "model-00001-of-00002.safetensors\n", "a/../../x", "C:\\x", "model-00002-of-00002.safetensors"])))
    elif kind == "drop":
        wm.pop(data.draw(st.sampled_from(sorted(wm))))
    elif kind == "add":
        wm[data.draw(st.text(max_size=20))] = data.draw(st.sampled_from(sorted(set(wm.values()))))
    elif kind == "metadata":
        index["metadata"] = data.draw(json_any)
    elif kind == "replace":
        index = data.draw(json_any)
    text = json.dumps(index)
    if kind == "text":
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(st.text(max_size=8)) + text[at + data.draw(st.integers(0, 8)):]
    with_files(base, index_text=text)


def test_header_claiming_a_2_pow_60_element_tensor_allocates_nothing(base):
    doc = json.loads(json.dumps(base["header"]))
    name = sorted(k for k in doc if k != "__metadata__")[0]
    b = doc[name]["data_offsets"][0]
    doc[name].update(shape=[2**30, 2**30], data_offsets=[b, b + 2**61])  # 2**60 bf16 values
    err = with_files(base, shard_bytes=encode(doc, base["raw"][8 + base["n"]:]))
    assert repr(name) in err and "data ends at byte" in err


def test_header_length_claiming_exabytes_is_refused_before_reading(base):
    err = with_files(base, shard_bytes=struct.pack("<Q", 2**62) + base["raw"][8:])
    assert "exceeds the" in err and base["shard"] in err
