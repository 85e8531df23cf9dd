"""add_tokens: one id per new token after reload, old logits untouched, KL ≈ 0 on text without them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import surgeon
from surgeon.edits.tokens import add_tokens
from surgeon.errors import EditError
from surgeon.runtime import load

NEW = ["ѣ", "въѣздъ", "colour", "ѳита"]
NEUTRAL = [
    "The river runs past the old mill and into the valley, where the farmers bring their grain in autumn.",
    "In 1850 the town had two schools, a church and a market that opened every Thursday morning.",
]
# Max over positions, measured: SmolLM2 (3 new tokens) subtoken_mean 2.1e-6, copy of "hello" 8.7e-5,
# vocab_mean 7.0e-7 nats (Hewitt's bound for vocab_mean: log(1 + 3/49152) = 6.1e-5); Gemma-3 (2 new
# tokens) subtoken_mean 2.0e-9. Old-vocabulary logits are bit-identical in all of them.
KL_BOUND = 1e-3


PROBES = NEW + ["the colour of the sky", "hello"]


def _next_token_dists(path, texts):
    """The reloaded checkpoint's [(logits, input_ids)] at every position of each text (fp32),
    and how it encodes PROBES."""
    rt = load(path)
    out = []
    with torch.no_grad():
        for t in texts:
            enc = rt.tokenizer(t, return_tensors="pt")
            out.append((rt.model(**enc).logits[0].float(), enc["input_ids"][0]))
    probes = {t: rt.tokenizer.encode(t, add_special_tokens=False) for t in PROBES}
    probes["decode"] = {i: rt.tokenizer.decode([i]) for i in range(len(rt.tokenizer) - 4, len(rt.tokenizer))}
    return out, probes


def _kl_old_vs_new(old_logits, new_logits):
    """KL(original ‖ edited) per position over the full softmax (new tokens have p=0 in the original)."""
    p = torch.log_softmax(old_logits.double(), -1)
    q = torch.log_softmax(new_logits.double(), -1)[:, : old_logits.shape[1]]
    return (p.exp() * (p - q)).sum(-1)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2):
    return _next_token_dists(smollm2, NEUTRAL)


def _check_edited(out, report, reference, init):
    reference, old = reference
    edited, new = _next_token_dists(out, NEUTRAL)  # plain from_pretrained: no ignore_mismatched_sizes
    for t, i in report.added.items():
        assert new[t] == [i], t
        assert new["decode"][i] == t
    for t in [*report.skipped, "the colour of the sky", "hello"]:
        assert new[t] == old[t]  # text without the new tokens splits as before (input_ids compared below too)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == report.rows[1] == surgeon.open(out).shape("embed")[0]
    worst_kl, worst_logit = 0.0, 0.0
    for (lo, ids), (ln, ids2) in zip(reference, edited):
        assert torch.equal(ids, ids2)
        assert ln.shape[1] == report.rows[1]
        worst_logit = max(worst_logit, float((ln[:, : lo.shape[1]] - lo).abs().max()))
        worst_kl = max(worst_kl, float(_kl_old_vs_new(lo, ln).max()))
    print(f"\n{init}: max |Δlogit| on the old vocabulary {worst_logit:.2e}, max KL {worst_kl:.2e} nats")
    assert worst_logit <= 1e-4  # same weights for every old row; only the matmul's blocking may differ
    assert worst_kl < KL_BOUND
    return worst_kl


@pytest.mark.parametrize("init", ["subtoken_mean", ("copy", "hello"), "vocab_mean"])
def test_smollm2_new_tokens_encode_to_one_id_and_keep_old_logits(smollm2, smollm2_reference, tmp_path, init):
    ck = surgeon.open(smollm2)
    old_embed = ck.get("embed")
    report = add_tokens(ck, NEW, init=init)
    assert report.skipped == {"colour": 31991}  # already one token in SmolLM2: registering it would re-split text
    assert list(report.added) == ["ѣ", "въѣздъ", "ѳита"] and report.rows == (49152, 49155)
    new_embed = ck.get("embed")
    assert torch.equal(new_embed[:49152], old_embed)  # old rows untouched
    for t, i in report.added.items():
        if init == "subtoken_mean":
            want = old_embed[report.pieces[t]].mean(0)
        elif init == "vocab_mean":
            want = old_embed.mean(0)
        else:
            (hello,) = smollm2_reference[1]["hello"]
            want = old_embed[hello]
        torch.testing.assert_close(new_embed[i], want.bfloat16().float(), rtol=0, atol=0)
    ck.save(tmp_path / "out")
    kl = _check_edited(tmp_path / "out", report, smollm2_reference, str(init))
    if init == "vocab_mean":
        assert kl <= torch.log1p(torch.tensor(3 / 49152)).item()  # Hewitt/Jensen bound, k=3 new of V=49152


def test_gemma3_new_tokens_subtoken_mean(gemma3, tmp_path):
    ref = _next_token_dists(gemma3, NEUTRAL)
    ck = surgeon.open(gemma3)
    report = add_tokens(ck, NEW)
    assert set(report.skipped) == {"ѣ", "colour"}  # single pieces in Gemma's 262k vocabulary
    assert set(report.added) == {"въѣздъ", "ѳита"} and report.rows == (262144, 262146)
    embed = ck.stored(ck.resolve("embed").tensor)
    for t, i in report.added.items():
        want = embed[report.pieces[t]].float().mean(0)
        torch.testing.assert_close(embed[i].float(), want, rtol=2**-8, atol=1e-6)  # one bf16 rounding
    ck.save(tmp_path / "out")
    del ck, embed
    _check_edited(tmp_path / "out", report, ref, "gemma3 subtoken_mean")


def test_padding_rows_are_vocab_mean_and_counted_in_config(smollm2):
    ck = surgeon.open(smollm2)
    old = ck.get("embed")
    report = add_tokens(ck, ["ѣ"], init="vocab_mean", pad_to_multiple_of=128)
    assert report.rows == (49152, 49280) and report.padding == 127
    assert ck.config["vocab_size"] == 49280
    new = ck.get("embed")
    mean = old.mean(0).bfloat16().float()
    assert torch.equal(new[49153:], mean.expand(127, -1))
    assert ck.edits[-1]["kind"] == "add_tokens" and ck.edits[-1]["padding"] == 127


def test_untied_head_gets_its_own_subtoken_mean(tiny, smollm2, tmp_path):
    src = tiny("llama", vocab_size=49152, tie_word_embeddings=False)
    d = tmp_path / "untied"
    shutil.copytree(src, d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2 / f, d / f)
    ck = surgeon.open(d)
    assert not ck.tied
    old_e, old_h = ck.get("embed"), ck.get("lm_head")
    report = add_tokens(ck, ["въѣздъ"])
    (i,) = report.added.values()
    pieces = report.pieces["въѣздъ"]
    torch.testing.assert_close(ck.get("embed")[i], old_e[pieces].mean(0))
    torch.testing.assert_close(ck.get("lm_head")[i], old_h[pieces].mean(0))
    assert ck.shape("lm_head") == ck.shape("embed") == (49153, 64)
    ck.save(tmp_path / "out")
    rt = load(tmp_path / "out")
    assert rt.model.get_output_embeddings().weight.shape[0] == 49153


def test_bad_inputs_name_the_token(smollm2):
    ck = surgeon.open(smollm2)
    with pytest.raises(EditError, match="'въѣздъ'.*not a single token"):
        add_tokens(ck, ["ѣ"], init=("copy", "въѣздъ"))
    with pytest.raises(EditError, match="init 'mean'"):
        add_tokens(ck, ["ѣ"], init="mean")
    with pytest.raises(EditError, match="token ''"):
        add_tokens(ck, ["ѣ", ""])
    assert not ck.staged and not ck.files  # nothing half-done
    report = add_tokens(ck, ["colour", "hello"])
    assert report.added == {} and set(report.skipped) == {"colour", "hello"} and not ck.staged and not ck.files


def test_example_script_adds_tokens(smollm2):
    from pathlib import Path

    from surgeon.edits.apply import apply

    plan = apply(Path(__file__).parent.parent / "examples" / "add_tokens.py", smollm2, dry_run=True,
                 params={"tokens": ["ѣ", "colour"], "init": "vocab_mean"})
    (embed,) = plan["tensors"]
    assert embed["key"] == "embed" and embed["rows_added"] == 1 and embed["delta_norm"] == 0
    assert plan["config_changes"] == {"vocab_size": [49152, 49153]} and plan["files"] == ["tokenizer.json"]
    assert plan["edits"][0]["skipped"] == {"colour": 31991}
