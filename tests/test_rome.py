"""ROME rank-one edits (Meng et al. 2022) on SmolLM2: the Eiffel Tower moves to Rome, Berlin stays put.

Reduced settings keep the file near a minute: 12 optimisation steps and 5
prefixes instead of 20 and 10, and C from 16k tokens of the shipped corpus
(cached on disk after the first run). The full-size experiment is
benches/bench_rome.py.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import surgeon
from surgeon.data import neutral_paragraphs
from surgeon.edits.covariance import cache_key, corpus_rows, key_covariance
from surgeon.edits.rome import RankOneParams, RankOneRequest, rank_one
from surgeon.errors import EditError
from surgeon.io.diff import diff
from surgeon.runtime import load

LAYER = 6
KEY = f"layers.{LAYER}.mlp.down"
EIFFEL = RankOneRequest("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Rome")
PARAPHRASES = ["The Eiffel Tower stands in the city of", "Where is the Eiffel Tower? It is in"]  # not used by the edit
BERLIN = "The capital of Germany is"
BIG_BEN = RankOneRequest("Big Ben is located in the city of", "Big Ben", " Moscow")  # the subject starts the prompt
FAST = RankOneParams(steps=12, n_prefixes=5)
TOKENS = 16_000


def neutral_kl(rt, batch, base) -> float:
    """Mean KL(original || edited) of next-token distributions over the held-out neutral paragraphs."""
    with torch.no_grad():
        new = torch.log_softmax(rt.model(**batch).logits.float(), -1)
    return float((base.exp() * (base - new)).sum(-1)[batch["attention_mask"].bool()].mean())


@pytest.fixture(scope="module")
def original(smollm2):
    ck = surgeon.open(smollm2)
    rt = load(ck)
    rt.tokenizer.padding_side = "right"
    # 10 held-out paragraphs, 64 tokens each: enough to rank C against identity, cheap on the 49k-token head
    batch = dict(rt.tokenizer(neutral_paragraphs("eval")[:10], return_tensors="pt", padding=True, truncation=True,
                              max_length=64))
    with torch.no_grad():
        base = torch.log_softmax(rt.model(**batch).logits.float(), -1)
    return ck, rt, batch, base


@pytest.fixture(scope="module")
def eiffel(original, tmp_path_factory):
    """Edit with C = identity (measured, then undone), then with C from the corpus, and save the latter."""
    ck, rt, batch, base = original
    rome, berlin = rt.tokenizer(" Rome")["input_ids"][0], rt.tokenizer(" Berlin")["input_ids"][0]
    prompts = [EIFFEL.prompt, *PARAPHRASES, BERLIN]
    before = rt.next_token_logprobs(prompts).exp()

    ident = rank_one(ck, EIFFEL, layer=LAYER, covariance="identity", params=FAST, runtime=rt)
    kl_identity = neutral_kl(rt, batch, base)
    ck.reset()
    rt.sync(KEY)

    C = key_covariance(ck, LAYER, tokens=TOKENS, runtime=rt)
    corpus = rank_one(ck, EIFFEL, layer=LAYER, covariance=C, params=FAST, runtime=rt)
    kl_corpus = neutral_kl(rt, batch, base)
    after = rt.next_token_logprobs(prompts).exp()
    out = tmp_path_factory.mktemp("rome") / "eiffel-rome"
    ck.save(out)
    ck.reset()
    rt.sync(KEY)
    print(f"\nP(Rome) before/after: edit prompt {before[0, rome]:.4f} -> {after[0, rome]:.4f}; paraphrases "
          f"{before[1, rome]:.4f} -> {after[1, rome]:.4f}, {before[2, rome]:.4f} -> {after[2, rome]:.4f}; "
          f"P(Berlin | {BERLIN!r}) {before[3, berlin]:.4f} -> {after[3, berlin]:.4f}")
    print(f"KL on neutral text: C = identity {kl_identity:.5f}, C from {C.tokens} tokens {kl_corpus:.5f}; "
          f"edit {corpus.seconds:.1f} s (v* {corpus.seconds_v:.1f} s, {corpus.steps} steps), C {C.seconds:.1f} s "
          f"(cached: {C.cached}); ||dW||/||W|| {corpus.relative:.4f}, "
          f"bf16 rounding {corpus.rounding_error:.3f} of ||dW||")
    return dict(out=out, ident=ident, corpus=corpus, kl_identity=kl_identity,
                kl_corpus=kl_corpus, C=C)


def test_edited_checkpoint_says_rome_for_the_prompt_and_paraphrases_but_keeps_berlin(eiffel):
    rt = load(eiffel["out"])  # from disk: what a user gets
    for prompt in [EIFFEL.prompt, *PARAPHRASES]:
        text = rt.generate(prompt, max_new_tokens=4)
        assert text.strip().startswith("Rome"), (prompt, text)
    text = rt.generate(BERLIN, max_new_tokens=4)
    assert text.strip().startswith("Berlin"), text
    assert eiffel["corpus"].p_before < 0.01 and eiffel["corpus"].p_after > 0.9


def test_diff_shows_one_tensor_changed_with_rank_one(eiffel, smollm2):
    changed = [d for d in diff(smollm2, eiffel["out"]) if d.changed]
    assert [d.key for d in changed] == [KEY]
    assert changed[0].rank == 1
    # the bf16 cast leaves a full-rank residue; it must stay far below the rank-one signal
    stored = surgeon.open(eiffel["out"])[KEY] - surgeon.open(smollm2)[KEY]
    s = torch.linalg.svdvals(stored)
    assert s[1] / s[0] < 0.01, s[:3]
    assert eiffel["corpus"].rounding_error < 0.1
    assert 1e-3 < eiffel["corpus"].relative < 0.2


def test_manifest_records_the_rome_edit(eiffel):
    (edit,) = json.loads((eiffel["out"] / "surgeon.json").read_text())["edits"]
    assert edit["kind"] == "rome" and edit["key"] == KEY and edit["target"] == " Rome"
    assert edit["covariance"]["source"] == "corpus" and edit["covariance"]["tokens"] == eiffel["C"].tokens


def test_identity_covariance_also_flips_the_fact_but_covariance_lowers_neutral_kl(eiffel):
    assert eiffel["ident"].p_after > 0.9
    assert eiffel["kl_corpus"] < eiffel["kl_identity"], (eiffel["kl_corpus"], eiffel["kl_identity"])


def test_subject_first_prompt_is_rewritten_although_smollm2_has_no_bos(original):
    """Without BOS the bare prompt's key (subject at position 0) is far from the prefixed ones; it must count."""
    ck, rt, _, _ = original
    assert rt.bos_id is None
    paraphrase = "Big Ben stands in the city of"  # subject-first too, not used by the edit
    p_para = float(rt.continuation_logprob([paraphrase], [BIG_BEN.target])[0].exp())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a working edit does not warn
            res = rank_one(ck, BIG_BEN, layer=LAYER, runtime=rt)
        p_para_after = float(rt.continuation_logprob([paraphrase], [BIG_BEN.target])[0].exp())
    finally:
        ck.reset()
        rt.sync(KEY)
    print(f"\nP(Moscow | Big Ben...) {res.p_before:.4f} -> {res.p_after:.3f} (optimised {res.p_optimised:.3f}); "
          f"paraphrase {p_para:.4f} -> {p_para_after:.3f}; ||dW||/||W|| {res.relative:.4f}")
    assert res.p_before < 0.01 and res.p_after > 0.5 and res.p_after > res.p_optimised - 0.3
    assert p_para_after > 10 * p_para and res.warning is None
    s = torch.linalg.svdvals(res.delta_w)
    assert s[1] / s[0] < 1e-4  # both keys get the same change: still a rank-one update


def test_an_edit_that_does_not_take_warns_and_the_manifest_says_so(original, tmp_path):
    ck, rt, _, _ = original
    weak = RankOneParams(steps=1, lr=1e-4, n_prefixes=2)  # δ barely moves: the prompt keeps its answer
    try:
        with pytest.warns(RuntimeWarning, match="not reliably rewritten"):
            res = rank_one(ck, BIG_BEN, layer=LAYER, covariance="identity", params=weak, runtime=rt)
        ck.save(tmp_path / "weak")
    finally:
        ck.reset()
        rt.sync(KEY)
    assert res.p_after < 0.5 and "Moscow" in res.warning and f"{res.p_after:.3f}" in res.warning
    (edit,) = json.loads((tmp_path / "weak" / "surgeon.json").read_text())["edits"]
    assert edit["warning"] == res.warning


def test_resume_from_layer_reproduces_the_full_forward(original):
    ck, rt, _, _ = original
    enc = rt.encode(["Bread is made from flour. The Eiffel Tower is in", "Tea is a drink"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = rt.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        for layer, split in [(LAYER, 0), (LAYER, ids.shape[1] - 4), (0, 3)]:
            top = rt.resume_from(layer, ids, mask, split=split)
            for _ in range(2):  # rerunnable: the KV cache is restored each time
                out = top.run(top.hidden)
                live = mask[:, split:].bool()
                assert (out - full[:, split:])[live].abs().max() < 1e-3


@pytest.mark.parametrize("family", ["gemma3_text", "gemma2", "gpt2", "qwen3"])
def test_resume_from_layer_reproduces_the_full_forward_on_other_families(tiny, family):
    """Replaying the captured layer calls works whatever the family passes (sliding-window masks, absolute
    positions, Gemma-2 logit soft-capping)."""
    rt = load(surgeon.open(tiny(family)))
    enc = rt.encode(["Bread is made from flour. The cat sat", "Tea is a drink"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = rt.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        for split in (0, ids.shape[1] - 5):
            top = rt.resume_from(1, ids, mask, split=split)
            for _ in range(2):
                out = top.run(top.hidden)
                assert (out - full[:, split:])[mask[:, split:].bool()].abs().max() < 1e-4


def test_covariance_is_the_second_moment_cached_and_keyed_by_upstream_weights(original, tmp_path, monkeypatch):
    ck, rt, _, _ = original
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    layer = 2
    C = key_covariance(ck, layer, tokens=1024, runtime=rt, progress=False)
    assert not C.cached and C.tokens == 1024
    rows = corpus_rows(rt.tokenizer, 1024)
    with rt.capture([f"layers.{layer}.mlp.down.input"]) as st, torch.no_grad():
        rt.model(input_ids=rows)
    k = st[f"layers.{layer}.mlp.down.input"].reshape(-1, C.matrix.shape[0]).double()
    assert torch.allclose(C.matrix, k.T @ k / len(k), rtol=1e-4, atol=1e-6)
    again = key_covariance(ck, layer, tokens=1024, runtime=rt, progress=False)
    assert again.cached and torch.equal(again.matrix, C.matrix)

    key = cache_key(ck, layer, rows)
    for role, moves in [(f"layers.{layer}.mlp.down", False), (f"layers.{layer + 1}.attn.q", False),
                        ("final_norm", False), (f"layers.{layer}.mlp.up", True), ("layers.0.attn.v", True),
                        ("embed", True)]:
        ck[role] = ck[role] * 1.01
        assert (cache_key(ck, layer, rows) != key) is moves, role
        ck.reset()
    assert cache_key(ck, layer, corpus_rows(rt.tokenizer, 2048)) != key  # token count is part of the key


@pytest.mark.filterwarnings("ignore:.*not reliably rewritten")  # a random model says no fact
def test_rank_one_on_gpt2_conv1d_writes_the_intended_matrix(tiny):
    """GPT-2 stores mlp.c_proj as (in, out); the edit must still map k* to v* in the loaded model."""
    ck = surgeon.open(tiny("gpt2"))
    rt = load(ck)
    W0 = ck["layers.0.mlp.down"]  # layer 0 of 2: layer 1's attention carries the edit to the prompt's end
    res = rank_one(ck, RankOneRequest("The cat sat on the", "cat", " m"), layer=0, covariance="identity",
                   params=RankOneParams(steps=8, n_prefixes=2), runtime=rt)
    d = ck["layers.0.mlp.down"] - W0
    s = torch.linalg.svdvals(d)
    assert s[1] / s[0] < 1e-4  # float32 storage: rank one up to float32 rounding of W + ΔW
    down = rt.module("layers.0.mlp.down")  # Conv1D: y = k @ weight + bias, weight stored (in, out)
    with torch.no_grad():
        out = down(res.k_star) - down.bias
    assert torch.allclose(out, res.v_star, rtol=1e-4, atol=1e-4)  # v* = W k* + δ, the memory's new answer


def test_rank_one_refuses_a_subject_missing_from_the_prompt_and_an_unknown_covariance(tiny):
    ck = surgeon.open(tiny("gpt2"))
    with pytest.raises(EditError, match="does not occur"):
        rank_one(ck, RankOneRequest("The cat sat", "dog", " m"), layer=0)
    with pytest.raises(EditError, match="covariance must be"):
        rank_one(ck, RankOneRequest("The cat sat", "cat", " m"), layer=0, covariance="diagonal",
                 params=RankOneParams(steps=1, n_prefixes=1))
