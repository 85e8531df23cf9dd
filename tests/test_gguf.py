"""Edits shipped to llama.cpp: GGUF through llama.cpp's converter, control vectors, LoRA adapters.

Every test checks the effect *in llama.cpp* (llama-cpp-python, built once per machine by
``make install``): greedy tokens against transformers, the edited answer, the new token ids, the
steering effect. A missing llama-cpp-python is a failure, not a skip.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

import surgeon
from surgeon.edits import ablate, add_tokens, bake_additive, extract, interpolate, steer, transplant, zero_heads
from surgeon.edits.memit import FactsParams, edit_facts
from surgeon.edits.rome import RankOneParams, RankOneRequest, rank_one
from surgeon.export.adapter import export_adapter
from surgeon.export.control_vector import ControlVectorError, apply_control_vector, export_control_vector
from surgeon.export.gguf import bias_slots, export_gguf, gguf_architecture
from surgeon.export.llama_cpp import GGUFError, LlamaCppSource, find_llama_cpp, llama_greedy, llama_logits, open_llama
from surgeon.export.lora_gguf import export_lora_gguf
from surgeon.export.verify import DEFAULT_PROMPTS
from surgeon.runtime import load
from surgeon.study import facts as F
from surgeon.study.config import FinetuneConfig
from surgeon.study.finetune import finetune
from surgeon.study.task import Task

pytestmark = pytest.mark.slow

EIFFEL = RankOneRequest("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Rome")
HAPPY = ["I am so happy and joyful today", "What a wonderful, delightful surprise",
         "We laughed and celebrated all night", "I love this beautiful sunny morning",
         "Everything is going great, I feel fantastic", "She smiled with pure joy"]
SAD = ["I am so sad and miserable today", "What a terrible, depressing surprise",
       "We cried and mourned all night", "I hate this gloomy rainy morning",
       "Everything is going wrong, I feel awful", "She wept with deep sorrow"]
CONCEPT = [" happy", " joy", " wonderful", " great", " love"]
STEER_PROMPTS = ["Today I went to the park and", "When I opened the letter, I", "My week at work has been"]
NEW_SMOL = [" surgeonite", " ggufling"]
NEW_GEMMA = ["въѣздъ", "ѳита", "лѣсъ"]
RUNS: dict[str, dict] = {}  # what each export measured, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\nGGUF exports (seconds: whole export / converter alone / verification):")
    for name, r in RUNS.items():
        print(f"  {name:28s} {r}")


@pytest.fixture(scope="module")
def src():
    import llama_cpp  # noqa: F401 - missing is a failure: make install builds it

    return find_llama_cpp()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


def _export(name, ck, out, **kw):
    exp = export_gguf(ck, out, max_new_tokens=8, **kw)
    v = exp.verification
    RUNS[name] = {"export_s": round(exp.seconds, 1), "convert_s": round(exp.convert_seconds, 1),
                  "verify_s": round(v.seconds, 1), "ok": v.ok, "top1": v.top1, "top1_decided": v.top1_decided,
                  "flip_margin": v.top1_flip_margin, "ties": {p.prompt: p.ties for p in v.prompts if p.ties},
                  "prompts": {p.prompt: p.llama for p in v.prompts}}
    return exp


def _llama_text(llm, tok, prompt, n=8):
    return tok.decode(llama_greedy(llm, tok(prompt)["input_ids"], n))


# --------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smol_f16(smollm2, src, out_dir):
    return _export("smollm2 unedited f16", smollm2, out_dir / "smol-f16.gguf")


def test_unedited_smollm2_f16_gives_transformers_greedy_tokens(smol_f16):
    v = smol_f16.verification
    assert smol_f16.architecture == "LLAMA"
    assert v.ok and [p.prompt for p in v.prompts] == list(DEFAULT_PROMPTS)
    assert all(p.agree and len(p.ties) <= 1 for p in v.prompts)
    assert " Paris" in v.prompts[0].llama


def test_unedited_smollm2_q8_0_agrees_on_first_tokens_and_top1(smollm2, src, out_dir):
    exp = _export("smollm2 unedited q8_0", smollm2, out_dir / "smol-q8.gguf", outtype="q8_0")
    v = exp.verification
    assert v.ok and all(p.agree for p in v.prompts)
    # measured (1039 tokens): 0.945 overall, every flip where transformers led by < 0.33 logits, 1.000 decided
    assert v.top1_tokens >= 500 and v.top1 >= 0.90
    assert v.top1_decided >= 0.95 and v.top1_decided_tokens >= 0.5 * v.top1_tokens


@pytest.fixture(scope="module")
def smol_rome(smollm2, tmp_path_factory):
    """SmolLM2 with the Eiffel Tower moved to Rome (ROME, layer 6, identity covariance: no corpus pass)."""
    ck = surgeon.open(smollm2)
    rank_one(ck, EIFFEL, layer=6, covariance="identity", params=RankOneParams(steps=12, n_prefixes=5))
    out = tmp_path_factory.mktemp("rome") / "ckpt"
    ck.save(out)
    return out


def test_rome_edit_answers_rome_in_llama_cpp(smol_rome, src, out_dir):
    exp = _export("smollm2 rome f16", smol_rome, out_dir / "smol-rome.gguf")
    edited = {p.prompt: p for p in exp.verification.prompts}[EIFFEL.prompt]  # the manifest's prompt is verified too
    assert edited.agree and edited.llama.startswith(" Rome")


@pytest.fixture(scope="module")
def smol_tokens(smollm2, tmp_path_factory):
    ck = surgeon.open(smollm2)
    report = add_tokens(ck, NEW_SMOL)
    out = tmp_path_factory.mktemp("tokens") / "ckpt"
    ck.save(out)
    return out, report


def test_added_tokens_keep_their_ids_in_llama_cpp(smol_tokens, src, out_dir):
    path, report = smol_tokens
    prompt = f"A new word:{NEW_SMOL[0]} and{NEW_SMOL[1]} and"
    exp = _export("smollm2 add_tokens f16", path, out_dir / "smol-tokens.gguf", prompts=[prompt])
    assert exp.verification.ok  # includes: llama.cpp tokenizes the prompt to transformers' ids
    llm = open_llama(exp.out, n_ctx=64)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    assert sorted(report.added.values()) == [49152, 49153]
    assert [i for i in ids if i >= 49152] == [49152, 49153]
    assert llm.n_vocab() == 49154


@pytest.fixture(scope="module")
def smol_rt(smollm2):
    return load(surgeon.open(smollm2))


@pytest.fixture(scope="module")
def smol_happy(smol_rt):
    return extract(smol_rt, HAPPY, SAD, 9)


def test_baked_steering_bias_steers_llama_cpp_like_transformers(smollm2, smol_rt, smol_happy, smol_f16, src, out_dir,
                                                                tmp_path_factory):
    ck = surgeon.open(smollm2)
    bake_additive(ck, smol_happy, alpha=4.0)  # layers.9.mlp.down.bias (+ zero gate/up/down biases elsewhere)
    path = tmp_path_factory.mktemp("steer") / "ckpt"
    ck.save(path)
    exp = _export("smollm2 steering bias f16", path, out_dir / "smol-steer.gguf", prompts=STEER_PROMPTS)
    steered = {p.prompt: p.llama for p in exp.verification.prompts}
    assert exp.verification.ok
    # the bias acts in llama.cpp: the steered continuations differ from the unedited file's
    llm = open_llama(smol_f16.out, n_ctx=64)
    tok = smol_rt.tokenizer  # add_tokens was not part of this edit: the same tokenizer
    changed = [p for p in STEER_PROMPTS if _llama_text(llm, tok, p) != steered[p]]
    assert len(changed) >= 2


def test_ablation_zeroed_heads_interpolation_and_transplant_export_and_agree(smollm2, smol_happy, smol_rome, src,
                                                                            out_dir, tmp_path_factory):
    """The weight-only edits in one checkpoint: each changes values, none changes a tensor's shape or name."""
    ck = surgeon.open(smollm2)
    ablate(ck, smol_happy, layers=range(6, 12))
    zero_heads(ck, 3, [0, 1])
    interpolate(ck, surgeon.open(smol_rome), 0.5, keys=["layers.6.mlp.down"])
    transplant(ck, smollm2, layers=20, from_layer=21)  # a whole layer, norms included, from another depth
    path = tmp_path_factory.mktemp("algebra") / "ckpt"
    ck.save(path)
    exp = _export("smollm2 ablate+heads+interp f16", path, out_dir / "smol-algebra.gguf")
    assert exp.verification.ok and all(p.agree for p in exp.verification.prompts)


def test_memit_facts_and_a_merged_lora_finetune_export_and_answer_in_llama_cpp(smollm2, src, out_dir,
                                                                               tmp_path_factory):
    """MEMIT's three facts and a LoRA fine-tune merged on top, in one checkpoint: llama.cpp gives the new answers."""
    ck = surgeon.open(smollm2)
    fs = F.facts(Task.load(F.shipped("smollm2")), "validation")[:3]
    edit_facts(ck, [f.request for f in fs], layers=[2, 3, 4, 5, 6], params=FactsParams(steps=12))
    tune = Task.from_dict({"name": "moon", "train": [{"prompt": "The Moon is made of", "completion": " cheese"}] * 4})
    finetune(ck, tune, FinetuneConfig(method="lora", layers="10-12", roles="attn", steps=8, lr=5e-3, batch=4),
             progress=False)
    path = tmp_path_factory.mktemp("memit") / "ckpt"
    ck.save(path)
    exp = _export("smollm2 memit+lora f16", path, out_dir / "smol-memit.gguf", prompts=["The Moon is made of"])
    got = {p.prompt: p for p in exp.verification.prompts}
    assert exp.verification.ok and all(p.agree for p in exp.verification.prompts)
    assert sum(got[f.prompt].llama.startswith(f.target) for f in fs) >= 2  # the manifest's fact prompts, verified
    assert got["The Moon is made of"].llama.startswith(" cheese")


def test_llama_bias_slots_are_read_from_llama_cpp_source(src):
    assert gguf_architecture(src, "LlamaForCausalLM") == "LLAMA"
    assert gguf_architecture(src, "Gemma3ForCausalLM") == "GEMMA3"
    assert gguf_architecture(src, "NoSuchForCausalLM") == ""
    assert {"ATTN_OUT", "FFN_DOWN", "FFN_GATE", "FFN_UP"} <= bias_slots(src, "LLAMA")
    assert "ATTN_OUT" not in bias_slots(src, "GEMMA3") and "FFN_DOWN" not in bias_slots(src, "GEMMA3")


# --------------------------------------------------------------------------- control vectors


def _concept_rise(logps_base, logps_steered, ids):
    """Mean rise of the concept tokens' log-probability over the prompts, in nats."""
    return float((logps_steered[:, ids] - logps_base[:, ids]).mean())


def _llama_logprobs(llm, tok, prompts):
    rows = [torch.from_numpy(llama_logits(llm, tok(p)["input_ids"])[-1]).float() for p in prompts]
    return torch.log_softmax(torch.stack(rows), -1)


def _control_vector_effect(rt, vec, gguf, cv_path, alpha):
    tok = rt.tokenizer
    ids = [tok(w, add_special_tokens=False)["input_ids"][-1] for w in CONCEPT]
    base = rt.next_token_logprobs(STEER_PROMPTS)
    with steer(rt, vec, alpha=alpha):
        steered = rt.next_token_logprobs(STEER_PROMPTS)
    info = export_control_vector(vec, cv_path, alpha=alpha)
    llm = open_llama(gguf, n_ctx=64)
    l_base = _llama_logprobs(llm, tok, STEER_PROMPTS)
    apply_control_vector(llm, cv_path)
    l_steered = _llama_logprobs(llm, tok, STEER_PROMPTS)
    apply_control_vector(llm, None)
    l_cleared = _llama_logprobs(llm, tok, STEER_PROMPTS)
    return info, _concept_rise(base, steered, ids), _concept_rise(l_base, l_steered, ids), \
        float((l_cleared - l_base).abs().max())


def test_control_vector_raises_concept_tokens_in_llama_cpp_like_runtime_steer_smollm2(smol_rt, smol_happy, smol_f16,
                                                                                     out_dir):
    info, hf, cpp, cleared = _control_vector_effect(smol_rt, smol_happy, smol_f16.out, out_dir / "happy-smol.gguf", 4.0)
    RUNS["smollm2 control vector L9 a=4"] = {"rise_transformers": round(hf, 3), "rise_llama_cpp": round(cpp, 3),
                                             "norm": round(info["norm"], 2)}
    assert info["layer"] == 9 and info["n_embd"] == 576
    assert hf > 0.5 and cpp > 0.5  # concept tokens' log-probability rises in both
    assert abs(cpp / hf - 1) < 0.2  # same size of effect: layer numbering maps one to one
    assert cleared < 1e-3


def test_control_vector_layer_zero_is_refused(smol_happy, tmp_path):
    with pytest.raises(ControlVectorError, match="layer 0"):
        export_control_vector(smol_happy, tmp_path / "cv.gguf", layer=0)
    assert not (tmp_path / "cv.gguf").exists()


# --------------------------------------------------------------------------- adapter


def test_rome_adapter_as_llama_cpp_lora_reproduces_the_edit(smollm2, smol_rome, smol_f16, src, out_dir):
    adapter = out_dir / "rome-adapter"
    export_adapter(smol_rome, smollm2, adapter)
    t = time.perf_counter()
    res = export_lora_gguf(adapter, smollm2, out_dir / "rome-lora.gguf", base_gguf=smol_f16.out)
    ours = load(smol_rome)  # the edited model's greedy answer, in transformers
    tok = ours.tokenizer
    llm = open_llama(smol_f16.out, n_ctx=64, lora=res["out"])
    with_lora = _llama_text(llm, tok, EIFFEL.prompt)
    plain = _llama_text(open_llama(smol_f16.out, n_ctx=64), tok, EIFFEL.prompt)
    want = tok.decode(ours.model.generate(**ours.encode([EIFFEL.prompt]), max_new_tokens=8, do_sample=False,
                                          pad_token_id=tok.pad_token_id)[0, len(tok(EIFFEL.prompt)["input_ids"]):])
    RUNS["smollm2 rome LoRA gguf"] = {"convert_s": round(res["seconds"], 1), "with_lora": with_lora, "base": plain,
                                      "edited_transformers": want, "total_s": round(time.perf_counter() - t, 1)}
    assert with_lora.startswith(" Rome") and not plain.startswith(" Rome")
    assert with_lora == want
    modelfile = (out_dir / "Modelfile").read_text()
    assert "FROM ./smol-f16.gguf" in modelfile and "ADAPTER ./rome-lora.gguf" in modelfile


def test_lora_bias_adapter_is_refused_naming_the_tensor(tmp_path):
    (tmp_path / "adapter").mkdir()
    save_file({"base_model.model.model.layers.9.mlp.down_proj.lora_A.weight": torch.zeros(1, 4),
               "base_model.model.model.layers.9.mlp.down_proj.lora_B.weight": torch.zeros(4, 1),
               "base_model.model.model.layers.9.mlp.down_proj.lora_B.bias": torch.ones(4)},
              str(tmp_path / "adapter" / "adapter_model.safetensors"))
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 1, "lora_alpha": 1}))
    with pytest.raises(GGUFError, match=r"layers\.9\.mlp\.down_proj\.lora_B\.bias: .*control-vector"):
        export_lora_gguf(tmp_path / "adapter", tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# --------------------------------------------------------------------------- Gemma-3


@pytest.fixture(scope="module")
def gemma_f16(gemma3, src, out_dir):
    return _export("gemma3 unedited f16", gemma3, out_dir / "gemma-f16.gguf")


def test_unedited_gemma3_f16_gives_transformers_greedy_tokens(gemma_f16):
    v = gemma_f16.verification
    assert gemma_f16.architecture == "GEMMA3"
    assert v.ok and all(p.agree for p in v.prompts)


def test_unedited_gemma3_q8_0_agrees_on_first_tokens_and_top1(gemma3, src, out_dir):
    exp = _export("gemma3 unedited q8_0", gemma3, out_dir / "gemma-q8.gguf", outtype="q8_0")
    v = exp.verification
    assert v.ok and v.top1_decided >= 0.95 and v.top1 >= 0.90 and v.top1_tokens >= 500
    assert all(p.agree for p in v.prompts)


def test_gemma3_rome_and_weight_edits_export_and_answer_in_llama_cpp(gemma3, src, out_dir, tmp_path):
    """Gemma-3 (tied 262k head, sandwich norms with +1 offsets): a ROME fact, an ablated direction, zeroed heads,
    a transplanted layer and an interpolation in one checkpoint; llama.cpp gives transformers' tokens and the fact."""
    ck = surgeon.open(gemma3)
    rt = load(surgeon.open(gemma3))
    ablate(ck, extract(rt, HAPPY, SAD, 9), layers=range(10, 14))
    del rt
    zero_heads(ck, 5, [0])
    transplant(ck, gemma3, layers=12, from_layer=13)
    interpolate(ck, surgeon.open(gemma3), 0.5, keys=["layers.14.mlp.up"])  # halfway back to the original
    res = rank_one(ck, EIFFEL, layer=3, covariance="identity", params=RankOneParams(steps=20, n_prefixes=5))
    assert res.p_after > 0.5, res  # last, on the model the other edits made
    ck.save(tmp_path / "ckpt")
    del ck
    exp = _export("gemma3 rome+weight edits f16", tmp_path / "ckpt", out_dir / "gemma-edits.gguf")
    got = {p.prompt: p for p in exp.verification.prompts}
    assert exp.verification.ok and all(p.agree for p in got.values())
    assert got[EIFFEL.prompt].llama.startswith(" Rome")


def test_gemma3_memit_facts_and_a_merged_lora_finetune_export_and_answer_in_llama_cpp(gemma3, src, out_dir,
                                                                                      tmp_path):
    """Gemma-3: MEMIT through the post-MLP norm (layers 3-5 and λ chosen on validation; the paper's 25 steps, as
    12 left two of the three facts unwritten) and a LoRA fine-tune merged on top, in one checkpoint: llama.cpp
    gives transformers' tokens and the new answers."""
    ck = surgeon.open(gemma3)
    fs = F.facts(Task.load(F.shipped("gemma3")), "validation")[:3]
    edit_facts(ck, [f.request for f in fs], layers=[3, 4, 5], params=FactsParams(steps=25, covariance_weight=0.05))
    tune = Task.from_dict({"name": "moon", "train": [{"prompt": "The Moon is made of", "completion": " cheese"}] * 4})
    finetune(ck, tune, FinetuneConfig(method="lora", layers="10-12", roles="attn", steps=8, lr=1e-3, batch=4),
             progress=False)
    ck.save(tmp_path / "ckpt")
    del ck
    exp = _export("gemma3 memit+lora f16", tmp_path / "ckpt", out_dir / "gemma-memit.gguf",
                  prompts=["The Moon is made of"])
    got = {p.prompt: p for p in exp.verification.prompts}
    assert exp.verification.ok and all(p.agree for p in got.values())
    assert sum(got[f.prompt].llama.startswith(f.target) for f in fs) >= 2  # the manifest's fact prompts, verified
    assert got["The Moon is made of"].llama.startswith(" cheese")


def test_gemma3_added_tokens_keep_their_ids_in_llama_cpp(gemma3, src, out_dir, tmp_path):
    ck = surgeon.open(gemma3)
    report = add_tokens(ck, NEW_GEMMA)
    ck.save(tmp_path / "ckpt")
    del ck
    prompt = f"Старое слово {NEW_GEMMA[0]} и {NEW_GEMMA[1]}, and {NEW_GEMMA[2]} is"
    exp = _export("gemma3 add_tokens f16", tmp_path / "ckpt", out_dir / "gemma-tokens.gguf", prompts=[prompt])
    assert exp.verification.ok
    llm = open_llama(exp.out, n_ctx=64)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    assert sorted(report.added.values()) == [262144, 262145, 262146]
    assert sorted(i for i in ids if i >= 262144) == [262144, 262145, 262146]


def test_gemma3_control_vector_raises_concept_tokens_like_runtime_steer(gemma3, gemma_f16, out_dir):
    rt = load(surgeon.open(gemma3))
    vec = extract(rt, HAPPY, SAD, 9)
    info, hf, cpp, cleared = _control_vector_effect(rt, vec, gemma_f16.out, out_dir / "happy-gemma.gguf", 4.0)
    RUNS["gemma3 control vector L9 a=4"] = {"rise_transformers": round(hf, 3), "rise_llama_cpp": round(cpp, 3),
                                            "norm": round(info["norm"], 2)}
    assert hf > 0.5 and cpp > 0.5
    assert abs(cpp / hf - 1) < 0.2
    assert cleared < 1e-3


def test_gemma3_bias_on_attn_o_is_refused_before_converting(gemma3, src, tmp_path):
    ck = surgeon.open(gemma3)
    bake_additive(ck, torch.ones(640), layer=4, alpha=0.1, site="attn.o")  # transformers loads it, llama.cpp cannot
    with pytest.raises(GGUFError, match=r"^layers\.4\.attn\.o\.bias \(model\.layers\.4\.self_attn\.o_proj\.bias\): "
                                         r"llama\.cpp's gemma3 architecture has no slot"):
        export_gguf(ck, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- where the converter comes from


def test_converter_order_flag_then_env_then_installed_sdist(src, tmp_path, monkeypatch):
    assert src.origin.startswith("llama-cpp-python ") and src.converter.is_file() and src.lora_converter.is_file()
    assert find_llama_cpp(src.converter) == LlamaCppSource(src.root, "--converter")
    monkeypatch.setenv("SURGEON_LLAMA_CPP", str(src.root))
    assert find_llama_cpp().origin == "$SURGEON_LLAMA_CPP"
    assert find_llama_cpp(src.root).origin == "--converter"  # the flag wins over the variable
    monkeypatch.setenv("SURGEON_LLAMA_CPP", str(tmp_path))
    with pytest.raises(GGUFError, match="no convert_hf_to_gguf.py"):
        find_llama_cpp()
    with pytest.raises(GGUFError, match="neither convert_hf_to_gguf.py"):
        find_llama_cpp(tmp_path)
