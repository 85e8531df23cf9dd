"""surgeon diff: per-tensor change, effective rank that survives bf16 rounding, rows added, CLI and plot."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import surgeon
from surgeon.cli import main
from surgeon.edits.algebra import scale
from surgeon.edits.tokens import add_tokens
from surgeon.io.diff import delta_stats, diff, effective_rank, rounding_floor
from surgeon.io.diff_render import format_table


def _low_rank(shape, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(shape[0], rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(shape[1], rank, generator=g))[0]
    return u, v


@pytest.mark.parametrize("relative", [1e-3, 1e-2, 1e-1, 1.0])
def test_rank_one_update_rounded_to_bf16_reads_rank_one(smollm2, relative):
    """The residue of rounding W + uvᵀ to bf16 is full rank; the rounding floor discounts it."""
    ck = surgeon.open(smollm2)
    w = ck["layers.6.mlp.down"]  # exact bf16 values as float32
    u, v = _low_rank(w.shape, 2)
    edited = (w + relative * w.norm() * torch.outer(u[:, 0], v[:, 0])).bfloat16()
    d = edited.float() - w
    s = torch.linalg.svdvals(d)
    assert int((s > 1e-6 * s[0]).sum()) > 100  # the rounding residue is full rank
    assert effective_rank(d, weights=edited) == 1
    # a real second component (20% of the first) is not swallowed by the floor
    two = (w + relative * w.norm() * (u[:, :2] * torch.tensor([1.0, 0.2])) @ v[:, :2].T).bfloat16()
    assert effective_rank(two.float() - w, weights=two) == (2 if relative >= 1e-2 else 1)
    # without the weights only the relative cut applies: fine for big edits, blind for small ones
    assert (effective_rank(d) == 1) == (relative >= 0.1)


def test_rounding_floor_scales_with_dtype():
    w = torch.randn(64, 32) * 0.05
    bf = rounding_floor(w, torch.bfloat16)
    assert rounding_floor(w, torch.float16) == pytest.approx(bf / 8, rel=1e-6)  # 3 more significand bits
    assert rounding_floor(w.bfloat16()) == pytest.approx(bf, rel=0.05)  # inferred from the values
    one = torch.outer(torch.randn(64), torch.randn(32)) * 0.01
    assert delta_stats(w, w + one)["rank"] == 1 and delta_stats(w, w * 2)["rank"] == 32
    assert delta_stats(w, w)["rank"] == 0


def test_diff_shows_rank_one_scale_and_rows_added(smollm2, tmp_path):
    ck = surgeon.open(smollm2)
    w = ck["layers.6.mlp.down"]
    u, v = _low_rank(w.shape, 1, seed=1)
    ck["layers.6.mlp.down"] = w + 0.02 * w.norm() * u @ v.T  # written through the API: stored as bf16
    scale(ck, "layers.12.attn.q", 1.5)
    report = add_tokens(ck, ["ѣ", "въѣздъ"], init="vocab_mean")
    ck.save(tmp_path / "out")

    records = diff(smollm2, tmp_path / "out")
    by_key = {r.key: r for r in records}
    changed = [r for r in records if r.changed]
    assert {r.key for r in changed} == {"layers.6.mlp.down", "layers.12.attn.q", "embed"}
    assert [r.key for r in changed if r.rank == 1] == ["layers.6.mlp.down"]  # exactly one rank-one tensor
    assert by_key["layers.6.mlp.down"].relative == pytest.approx(0.02, rel=0.02)
    q = by_key["layers.12.attn.q"]
    assert q.relative == pytest.approx(0.5, abs=2e-3) and q.rank > 100  # factor - 1; a dense change
    e = by_key["embed"]
    assert e.rows_added == len(report.added) == 2 and e.delta_norm == 0 and e.rank == 0
    assert e.shape_a == [49152, 576] and e.shape_b == [49154, 576]
    new_rows = surgeon.open(tmp_path / "out")["embed"][49152:]
    assert e.added_norm == pytest.approx(float(new_rows.norm()), rel=1e-5) and e.added_norm > 0
    assert f"+2 rows of norm {e.added_norm:.4g}" in format_table(records)
    assert len(records) == 272 and not any(r.only_in for r in records)
    assert [r.layer for r in records if r.layer is not None] == sorted(r.layer for r in records if r.layer is not None)
    assert records[0].key == "embed"


def test_diff_of_staged_checkpoint_and_one_sided_tensors(tiny):
    a = surgeon.open(tiny("gpt2"))
    b = surgeon.open(tiny("gpt2"))
    scale(b, "attn.q", 2.0, layers=[1])  # a part of the fused, transposed c_attn
    b.add("layers.0.attn.o.bias_extra", torch.full((64,), 0.5))
    records = diff(a, b)  # staged values count, nothing saved
    changed = {r.key or r.name: r for r in records if r.changed}
    assert set(changed) == {"layers.1.attn.qkv", "layers.0.attn.o.bias_extra"}
    qkv = changed["layers.1.attn.qkv"]
    assert qkv.shape_a == [192, 64]  # shown (out, in) although Conv1D stores (in, out)
    q = a["layers.1.attn.q"]
    assert qkv.relative == pytest.approx(float(q.norm() / a["layers.1.attn.qkv"].norm()), rel=1e-5)
    extra = changed["layers.0.attn.o.bias_extra"]
    assert extra.only_in == "b" and extra.norm == pytest.approx(4.0)  # 0.5 × √64: a new tensor's size is shown
    assert "only in B, ‖B‖ 4" in format_table(records)


def test_cli_diff_table_json_and_plot(smollm2, tmp_path):
    ck = surgeon.open(smollm2)
    scale(ck, "layers.3.mlp.up", 1.25)
    scale(ck, "final_norm", 0.5)
    ck.save(tmp_path / "out")
    runner = CliRunner()
    res = runner.invoke(main, ["diff", str(smollm2), str(tmp_path / "out"), "--plot", str(tmp_path / "map.png")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "2 of 272 tensors differ"
    assert lines[2].startswith("layers.3.mlp.up") and lines[3].startswith("final_norm")  # layer order, head last
    assert float(lines[2].split()[3]) == pytest.approx(0.25, abs=1e-3)  # factor - 1, up to bf16 rounding
    assert float(lines[3].split()[3]) == pytest.approx(0.5, abs=1e-3)
    png = (tmp_path / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    res = runner.invoke(main, ["diff", str(smollm2), str(tmp_path / "out"), "--json"])
    doc = json.loads(res.output)
    assert len(doc["tensors"]) == 272 and sum(t["changed"] for t in doc["tensors"]) == 2
    res = runner.invoke(main, ["diff", str(smollm2), str(tmp_path / "out"), "--all", "--no-rank"])
    assert len(res.output.splitlines()) == 2 + 272
    res = runner.invoke(main, ["diff", str(smollm2), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing" in res.output


def test_checkpoints_of_different_families_are_refused_unless_asked(tiny):
    from surgeon.io.diff import DiffError

    with pytest.raises(DiffError,
                       match=r"not a version of .*\(llama with 21 tensors vs gemma3_text with 28.*--unrelated"):
        diff(tiny("llama"), tiny("gemma3_text"))
    records = diff(tiny("llama"), tiny("gemma3_text"), unrelated=True, rank=False)
    assert any(r.only_in == "b" for r in records) and any(r.changed for r in records)
