"""`surgeon inspect` on the real models: every tensor classified, the JSON contract holds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from surgeon.cli import main


@pytest.mark.parametrize("model,layers,hidden,vocab", [("smollm2", 30, 576, 49152), ("gemma3", 18, 640, 262144)])
def test_inspect_json_classifies_every_tensor_of_the_real_models(model, layers, hidden, vocab, request):
    path = request.getfixturevalue(model)
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    got = (doc["num_layers"], doc["hidden_size"], doc["vocab_size"], doc["tied_embeddings"])
    assert got == (layers, hidden, vocab, True)
    assert doc["unclassified"] == []
    for t in doc["tensors"]:
        assert t["role"] is not None, t["name"]
        assert set(t) >= {"name", "role", "layer", "expert", "param", "shape", "dtype", "file"}
    per_layer = {}
    for t in doc["tensors"]:
        if t["layer"] is not None:
            per_layer.setdefault(t["role"], set()).add(t["layer"])
    assert all(v == set(range(layers)) for v in per_layer.values()), per_layer
    expected = {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down",
                "norm.pre_attn", "norm.pre_mlp"}
    if model == "gemma3":
        expected |= {"attn.q_norm", "attn.k_norm", "norm.post_attn", "norm.post_mlp"}
    assert set(per_layer) == expected


def test_inspect_text_shows_the_layer_table(smollm2):
    res = CliRunner().invoke(main, ["inspect", str(smollm2)])
    assert res.exit_code == 0
    assert "tied embeddings yes" in res.output
    row = next(line for line in res.output.splitlines() if line.strip().startswith("0-29"))
    assert "576×1536" in row and "192×576" in row


def test_output_piped_into_a_reader_that_leaves_early_is_not_an_error(tiny):
    """`surgeon inspect --json CKPT | head -c 100`: no 'internal error' when the pipe closes."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "surgeon.cli", "inspect", "--json", str(tiny("llama"))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first write: every write hits EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert err == "", err
