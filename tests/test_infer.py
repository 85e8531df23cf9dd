"""Role inference from transformers' model definition (surgeon.roles.infer), checked against the hand-written tables.

Every table family's tiny checkpoint (and its tie-flipped variant) gets, tensor
for tensor, the same role keys and the same fused-part rows from inference as
from its table; a table written out by ``surgeon inspect --write-table`` reads
back to the same roles; layer kinds come from the config (Gemma-3-270M: layers
5, 11, 17 full attention, the rest sliding 512).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny import FAMILIES

import surgeon
from surgeon.cli import main
from surgeon.roles import Architecture, RoleTable, architectures, find_table, infer_architecture
from surgeon.roles.infer import table_json


def _roles(arch: Architecture, cfg: dict, names) -> dict:
    table = RoleTable(arch, cfg, names)
    return {
        name: sorted((r.key, r.view.transposed, tuple(r.view.rows) if r.view.rows is not None else None) for r in refs)
        for name, refs in table.by_tensor.items()
    } | {"<tied>": table.by_key.get("lm_head") and table.by_key["lm_head"].tied}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_inference_reproduces_the_table_tensor_for_tensor(tiny, family):
    for path in (tiny(family), tiny(family, tie_word_embeddings=not find_table({"model_type": family}).tie_default)):
        cfg = json.loads((path / "config.json").read_text())
        names = list(surgeon.open(path).entries)
        table, inferred = find_table(cfg), infer_architecture(cfg)
        assert inferred.source == "inferred" and table.source == "table"
        assert _roles(inferred, cfg, names) == _roles(table, cfg, names)
        assert RoleTable(inferred, cfg, names).unclassified == RoleTable(table, cfg, names).unclassified
        assert inferred.norm_offset == table.norm_offset and inferred.tied(cfg) == table.tied(cfg)
        assert inferred.base_prefix == table.base_prefix and inferred.architectures == table.architectures


def test_written_table_reads_back_to_the_same_roles(tiny, tmp_path):
    path = tiny("gpt_neox")
    cfg = json.loads((path / "config.json").read_text())
    arch = infer_architecture(cfg)
    doc = table_json(arch)
    names = list(surgeon.open(path).entries)
    assert _roles(Architecture.from_json("gpt_neox", doc), cfg, names) == _roles(arch, cfg, names)
    # the CLI writes the bundled table of a table family
    out = tmp_path / "t.json"
    res = CliRunner().invoke(main, ["inspect", str(path), "--write-table", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["roles"] == architectures()["gpt_neox"].roles


def test_a_family_without_a_table_is_inferred_and_says_so(tiny, tmp_path):
    """Starcoder2 has no table: inspect names every tensor, says the roles were inferred, and writes the table."""
    path = tmp_path / "ck"
    from tiny import build_any

    build_any("starcoder2", path)
    out = tmp_path / "starcoder2.json"
    res = CliRunner().invoke(main, ["inspect", str(path), "--json", "--write-table", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["roles_from"] == "inferred" and doc["family"] == "starcoder2" and doc["warning"] is None
    assert doc["unclassified"] == []
    assert {t["role"] for t in doc["tensors"] if t["layer"] == 0} >= {
        "attn.q",
        "attn.o",
        "mlp.up",
        "mlp.down",
        "norm.pre_attn",
        "norm.pre_mlp",
    }
    table = json.loads(out.read_text())
    assert table["roles"]["mlp.up"] == "mlp.c_fc" and table["roles"]["norm.pre_mlp"] == "post_attention_layernorm"


def test_gemma3_layer_kinds_follow_the_config(gemma3):
    res = CliRunner().invoke(main, ["inspect", str(gemma3), "--json"])
    doc = json.loads(res.stdout)
    kinds = doc["layers"]
    assert len(kinds) == 18
    assert [i for i, k in enumerate(kinds) if k["attention"] == "full"] == [5, 11, 17]
    assert all(k["attention"] == "sliding" and k["window"] == 512 for i, k in enumerate(kinds) if i not in (5, 11, 17))
    assert {k["rope_theta"] for k in kinds if k["attention"] == "full"} != {
        k["rope_theta"] for k in kinds if k["attention"] == "sliding"
    }
    text = CliRunner().invoke(main, ["inspect", str(gemma3)]).stdout
    rows = [
        line.split()[0]
        for line in text.splitlines()
        if line.endswith(("· dense · rope 10000", "· dense · rope 1e+06")) and "layer kinds" not in line
    ]
    assert rows == ["0-4", "5", "6-10", "11", "12-16", "17"]


def test_mixed_moe_layers_are_marked_by_their_experts(tiny):
    doc = json.loads(CliRunner().invoke(main, ["inspect", str(tiny("qwen3_moe")), "--json"]).stdout)
    assert [k["mlp"] for k in doc["layers"]] == ["moe", "dense"]
