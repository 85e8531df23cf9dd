"""What ``surgeon apply`` prints: tensors in layer order, all-zero additions summed up, long lists cut.

The edit scales every projection of a 12-layer tiny Llama (84 tensors) and adds
the 36 zero MLP biases that ``mlp_bias`` needs, as ``steer_bake`` does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import surgeon

ROLES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
SCRIPT = f"""import torch


def edit(ck):
    for i in range(ck.num_layers):
        for role in {ROLES!r}:
            ck[f"layers.{{i}}.{{role}}"] = ck[f"layers.{{i}}.{{role}}"] * 1.01
    ck.config["mlp_bias"] = True
    for i in range(ck.num_layers):
        for role in ("mlp.gate", "mlp.up", "mlp.down"):
            ck.add(f"layers.{{i}}.{{role}}.bias", torch.zeros(ck.shape(f"layers.{{i}}.{{role}}")[0]))
"""


@pytest.fixture(scope="module")
def twelve(tiny):
    return tiny("llama", num_hidden_layers=12)


def run_apply(model, tmp_path, *args) -> list[str]:
    script = tmp_path / "many.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "SURGEON_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "surgeon.cli", "apply", str(script), "--model", str(model), *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    print(res.stdout)
    return res.stdout.splitlines()


def check_listing(lines: list[str]) -> None:
    tensor_lines = [ln for ln in lines if re.match(r"\s+layers\.\d+\.", ln)]
    layers = [int(re.match(r"\s+layers\.(\d+)\.", ln).group(1)) for ln in tensor_lines]
    assert len(tensor_lines) == 24 and layers == sorted(layers) == [0] * 7 + [1] * 7 + [2] * 7 + [3] * 3
    assert "  … 60 more (--json for all)" in lines
    for role in ("mlp.gate.bias", "mlp.up.bias", "mlp.down.bias"):
        assert f"  12 × {role}: all zero in layers 0-11 (no numerical change)" in lines, lines
    assert len(lines) < 40


def test_apply_lists_tensors_by_layer_number_sums_up_zero_biases_and_cuts_the_rest(twelve, tmp_path):
    lines = run_apply(twelve, tmp_path, "--out", str(tmp_path / "out"))
    assert lines[0].startswith(f"wrote {tmp_path / 'out'}: 120 tensor(s) changed")
    check_listing(lines)


def test_apply_dry_run_lists_the_same_way(twelve, tmp_path):
    lines = run_apply(twelve, tmp_path, "--dry-run")
    assert lines[0] == "dry run: 120 tensor(s) would change; nothing written"
    check_listing(lines)


def test_save_returns_a_manifest_with_a_one_line_repr(tiny, tmp_path):
    ck = surgeon.open(tiny("llama"))
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 1.01
    ck.add("layers.1.attn.o.bias", torch.zeros(ck.shape("layers.1.attn.o")[0]))
    m = ck.save(tmp_path / "out")
    assert len(m["tensors"]) == 2 and m["files"]["rewritten"]  # still the whole manifest as a dict
    text = repr(m)
    assert text == f"<surgeon save -> {tmp_path / 'out'}: 2 tensors changed; 1 rewritten>", text
    assert "\n" not in text and len(text) < 200
