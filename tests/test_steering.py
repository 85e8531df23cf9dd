"""Steering vectors on SmolLM2 (and tiny sandwich-norm families): extract, steer, bake, ablate."""

from __future__ import annotations

import pytest
import torch

import surgeon
from surgeon.edits.bake import ablate, bake_additive, bias_flags
from surgeon.edits.steering import SteeringError, SteeringVector, extract, steer, written_projection
from surgeon.errors import EditError
from surgeon.roles import architectures
from surgeon.runtime import load

HAPPY = ["I am so happy and joyful today", "What a wonderful, delightful surprise",
         "We laughed and celebrated all night", "I love this beautiful sunny morning",
         "Everything is going great, I feel fantastic", "She smiled with pure joy",
         "This is the best day of my life", "I'm thrilled and grateful"]
SAD = ["I am so sad and miserable today", "What a terrible, depressing surprise", "We cried and mourned all night",
       "I hate this gloomy rainy morning", "Everything is going wrong, I feel awful", "She wept with deep sorrow",
       "This is the worst day of my life", "I'm heartbroken and hopeless"]
NEUTRAL = ["The museum opens at nine in the morning and closes at five on weekdays.",
           "Water boils at one hundred degrees Celsius at sea level, and at a lower temperature on a mountain.",
           "The report lists the population of each county, the area in square miles, and the main roads.",
           "To change a tyre, loosen the nuts, raise the car with the jack, and remove the wheel."]
LAYER = 9


@pytest.fixture(scope="module")
def rt(smollm2):
    return load(surgeon.open(smollm2))


@pytest.fixture(scope="module")
def happy(rt):
    return extract(rt, HAPPY, SAD, LAYER)


def _valid(rt, logits):
    return logits[rt.encode(NEUTRAL)["attention_mask"].bool()].float()


def _kl(rt_a, rt_b, texts) -> float:
    """Mean over real tokens of KL(a ‖ b) of the next-token distributions, in nats."""
    enc = rt_a.encode(texts)
    with torch.no_grad():
        p = torch.log_softmax(rt_a.model(**enc).logits.float(), -1)
        q = torch.log_softmax(rt_b.model(**enc).logits.float(), -1)
    return float((p.exp() * (p - q)).sum(-1)[enc["attention_mask"].bool()].mean())


# --------------------------------------------------------------------------- bias_flags data


def test_bias_flags_are_exactly_the_biases_transformers_builds():
    """For every family, switching each declared flag on gives a bias to exactly the declared roles."""
    from tiny import FAMILIES
    from transformers import AutoConfig, AutoModelForCausalLM

    def biased_roles(arch, cfg):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        mods = dict(model.named_modules())
        layer = arch.layer.format(layer=0)
        table = {**arch.roles, **{r: s["module"] for r, s in arch.fused.items()}}
        out = set()
        for role, path in table.items():
            name = arch.module_in_model(f"{layer}.{path}", mods)
            if name is not None and getattr(mods[name], "bias", None) is not None:
                out.add(role)
        return out

    checked = 0
    for arch in architectures().values():
        mt = next(m for m in arch.model_types if m in FAMILIES)
        flags = bias_flags(arch)
        off = {f: False for f in flags}
        base = biased_roles(arch, AutoConfig.for_model(mt, **FAMILIES[mt], **off))
        for flag, roles in flags.items():
            assert flag in AutoConfig.for_model(mt).to_dict(), f"{arch.name}: {flag} is not a {mt} config field"
            on = biased_roles(arch, AutoConfig.for_model(mt, **FAMILIES[mt], **{**off, flag: True}))
            assert on - base == set(roles), f"{arch.name}.{flag}: transformers adds {on - base}, table says {roles}"
            checked += 1
    assert checked == 10  # llama ×2, gpt_neox, gemma ×3, olmo2, qwen2_moe, qwen3, qwen3_moe


def test_bake_refuses_a_family_that_cannot_carry_the_bias(tiny):
    ck = surgeon.open(tiny("mistral"))
    with pytest.raises(EditError, match=r"layers\.1\.mlp\.down\.bias: mistral .* no config flag"):
        bake_additive(ck, torch.ones(64), layer=1, site="mlp.down")
    ck = surgeon.open(tiny("gemma2"))
    with pytest.raises(EditError, match="norm.post_mlp") as e:
        bake_additive(ck, torch.ones(64), layer=1)  # residual site: not expressible behind a post-norm
    # the hint names only sites this family can carry, and following it works
    ck3 = surgeon.open(tiny("gemma3_text"))
    with pytest.raises(EditError, match=r"bake site='attn\.o' and try it") as e:
        bake_additive(ck3, torch.ones(64), layer=1)
    assert "mlp.down' or" not in str(e.value)
    assert bake_additive(ck3, torch.ones(64), layer=1, site="attn.o")["key"] == "layers.1.attn.o.bias"


def test_bake_adds_to_an_existing_bias_without_flags(tiny):
    ck = surgeon.open(tiny("gpt2"))
    before = ck["layers.1.mlp.down.bias"]
    info = bake_additive(ck, torch.ones(64), layer=1, alpha=0.5)
    assert info["flag"] is None and not ck.added and ck.config == ck.original_config
    assert torch.allclose(ck["layers.1.mlp.down.bias"] - before, torch.full((64,), 0.5))


# --------------------------------------------------------------------------- extraction


def test_extracted_direction_separates_the_pairs(rt, happy):
    assert happy.layer == LAYER and happy.n_pairs == 8
    assert abs(float(happy.direction.norm()) - 1) < 1e-5
    assert happy.separation == 1.0  # every happy prompt sits further along it than its sad twin
    assert 0 < happy.scale < happy.residual_norm  # measured 28.1 vs 152.6
    pca = extract(rt, HAPPY, SAD, LAYER, method="pca")
    mean_pos = extract(rt, HAPPY, SAD, LAYER, position="mean")
    assert float(pca.direction @ happy.direction) > 0.5  # measured 0.68
    assert pca.explained > happy.explained  # the first PC holds the most energy by construction (0.45 vs 0.35)
    assert float(mean_pos.direction @ happy.direction) > 0.5  # measured 0.74


def test_vector_round_trips_through_safetensors(happy, tmp_path, smollm2, tiny):
    path = happy.save(tmp_path / "happy.safetensors")
    back = SteeringVector.load(path)
    assert torch.equal(back.direction, happy.direction)
    assert (back.layer, back.scale, back.method, back.position, back.model) == (
        happy.layer, happy.scale, happy.method, happy.position, happy.model)
    back.check(surgeon.open(smollm2))
    with pytest.raises(SteeringError, match="hidden size 64"):
        back.check(surgeon.open(tiny("llama")))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SteeringError, match="not a surgeon steering vector"):
        SteeringVector.load(tmp_path / "other.safetensors")


# --------------------------------------------------------------------------- steering at run time


def test_steer_moves_the_next_token_towards_the_positive_pole(rt, happy):
    ids = [rt.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" happy", " sad")]

    def margin(alpha):
        with steer(rt, happy, alpha=alpha):
            lp = rt.next_token_logprobs(["Today I feel", "My mood right now is"])
        return (lp[:, ids[0]] - lp[:, ids[1]]).tolist()

    plain, up, down = margin(0.0), margin(2.0), margin(-2.0)
    # measured: log P(happy) - log P(sad) = [1.42, 1.31] -> [5.78, 6.89] at +2, [-0.29, -1.60] at -2
    assert all(u > p + 3 for u, p in zip(up, plain))
    assert all(d < p - 1 for d, p in zip(down, plain))
    assert margin(0.0) == plain  # the context left nothing behind


def test_baked_mlp_bias_gives_the_runtime_steering_logits(rt, happy, smollm2, tmp_path):
    ck = surgeon.open(smollm2)
    info = bake_additive(ck, happy, alpha=2.0)  # site="residual" -> layers.9.mlp.down.bias for Llama
    assert info["key"] == "layers.9.mlp.down.bias" and info["flag"] == "mlp_bias"
    assert info["zero_biases"] == 30 * 3 - 1  # mlp_bias gives gate, up, down of every layer a bias
    ck.save(tmp_path / "baked")
    baked_ck = surgeon.open(tmp_path / "baked")
    assert baked_ck.config["mlp_bias"] is True
    stored = baked_ck["layers.9.mlp.down.bias"]  # bf16 on disk
    baked = load(tmp_path / "baked")  # plain from_pretrained: the config flag alone makes it load the biases
    params = dict(baked.model.named_parameters())
    assert torch.equal(params["model.layers.9.mlp.down_proj.bias"], stored)
    assert all(not params[f"model.layers.{i}.mlp.{p}_proj.bias"].any() for i in (0, 29) for p in ("gate", "up", "down"))
    with torch.no_grad():
        base = _valid(rt, rt.forward(NEUTRAL))
        got = _valid(rt, baked.forward(NEUTRAL))
        with steer(rt, happy, alpha=2.0):
            exact = _valid(rt, rt.forward(NEUTRAL))
        with steer(rt, stored, layer=LAYER):
            same_bias = _valid(rt, rt.forward(NEUTRAL))
    moved = (exact - base).abs().max().item()
    vs_exact = (got - exact).abs().max().item()
    vs_stored = (got - same_bias).abs().max().item()
    # measured: steering moves logits by 11.0; baked vs steer(α·v in fp32) 0.026 (bf16 rounding of the bias,
    # relative 1.8e-3); baked vs steer(the stored bf16 bias) 3.8e-5 (fp32 order of operations only)
    assert moved > 3
    assert vs_stored < 1e-3
    assert vs_exact < 0.1


def test_post_norm_family_bias_matches_its_projection_site_not_the_residual(tiny, tmp_path):
    """Gemma-3: attn.o's output is normalised by norm.post_attn, so its bias is not a residual addition."""
    src = tiny("gemma3_text")
    ck = surgeon.open(src)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    info = bake_additive(ck, v, layer=1, site="attn.o")
    assert info["flag"] == "attention_bias" and info["zero_biases"] == 2 * 4 - 1
    ck.save(tmp_path / "baked")
    rt0, rt1 = load(src), load(tmp_path / "baked")
    ids = {"input_ids": torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        got = rt1.model(**ids).logits
        with steer(rt0, v, layer=1, site="attn.o"):
            same_site = rt0.model(**ids).logits
        with steer(rt0, v, layer=1, site="residual"):
            residual = rt0.model(**ids).logits
    assert (got - same_site).abs().max() < 1e-4  # fp32 tiny model: equal up to rounding
    assert (got - residual).abs().max() > 100 * (got - same_site).abs().max()


# --------------------------------------------------------------------------- ablation


def test_ablation_removes_the_direction_from_every_residual_write(rt, happy, smollm2, tmp_path):
    ck = surgeon.open(smollm2)
    info = ablate(ck, happy, embed=True)
    assert len(info["tensors"]) == 30 * 2 + 1 and info["tied_head"]
    ck.save(tmp_path / "ablated")
    ablated = load(tmp_path / "ablated")
    points = ["embed", 0, 9, 15, 29]
    before = written_projection(rt, NEUTRAL, happy, points)
    after = written_projection(ablated, NEUTRAL, happy, points)
    for p in points:
        # measured before: ratio 0.02-0.04 (≈ 1/√576 = 0.042, a direction the layers barely favour);
        # after: ≤ 2.2e-4, the bf16 rounding of the orthogonalised weights
        assert after[p]["ratio"] < 1e-3, (p, after[p])
        assert after[p]["along"] < before[p]["along"] / 20, (p, before[p], after[p])
    enc = ablated.encode(NEUTRAL)
    with ablated.capture(["layers.15", "layers.29"]) as store, torch.no_grad():
        ablated.model(**enc)
    for h in store.values():  # every writer ablated: the stream itself has no component along r
        h = h[enc["attention_mask"].bool()].float()
        assert (h @ happy.direction).abs().max() < 1e-3 * h.norm(dim=-1).mean()
    kl = _kl(rt, ablated, NEUTRAL)
    assert kl < 0.3  # measured 0.09 nats/token over the neutral texts: ablating a mood direction costs little


@pytest.mark.parametrize("family", ["gemma3_text", "olmo2"])
def test_ablation_is_exact_through_post_norm_gains(tiny, family, tmp_path):
    """Blocks normalised before the residual add are made orthogonal to g⊙r, so the *written* part is ⟂ r."""
    src = tiny(family)
    r = torch.randn(64, generator=torch.Generator().manual_seed(2))
    ck = surgeon.open(src)
    ablate(ck, r, layers=[0, 1])
    ck.save(tmp_path / "ablated")
    naive = surgeon.open(src)
    ablate(naive, r, layers=[0, 1], through_post_norm=False)  # W ⟂ r, as pre-norm tools do
    naive.save(tmp_path / "naive")
    texts = ["a b c d e f", "hello world, again and again"]
    before = written_projection(load(src), texts, r, [0, 1])
    after = written_projection(load(tmp_path / "ablated"), texts, r, [0, 1])
    after_naive = written_projection(load(tmp_path / "naive"), texts, r, [0, 1])
    for layer in (0, 1):
        assert before[layer]["ratio"] > 0.01
        assert after[layer]["ratio"] < 1e-5, (family, layer, after[layer])  # fp32 tiny checkpoint
        assert after_naive[layer]["ratio"] > 100 * after[layer]["ratio"]  # the norm's gain turns some back towards r


@pytest.mark.parametrize("script, params, keys", [
    ("steer_bake.py", {"alpha": 2.0}, {f"layers.{LAYER}.mlp.down.bias"}),
    ("steer_ablate.py", {"layers": [8, 9]},
     {"layers.8.attn.o", "layers.8.mlp.down", "layers.9.attn.o", "layers.9.mlp.down"}),
])
def test_example_scripts_bake_and_ablate_a_saved_vector(smollm2, happy, tmp_path, script, params, keys):
    from pathlib import Path

    from surgeon.edits.apply import apply

    vec = happy.save(tmp_path / "happy.safetensors")
    plan = apply(Path(__file__).parent.parent / "examples" / script, smollm2, dry_run=True,
                 params={"vector": str(vec), **params})
    touched = {t["key"] for t in plan["tensors"]}
    assert keys <= touched, touched
    if script == "steer_ablate.py":
        assert touched == keys
    else:
        assert plan["config_changes"].get("mlp_bias") == [False, True], plan["config_changes"]


def test_capture_keeps_what_it_saw_when_the_model_adds_into_the_output_in_place(tiny):
    """Falcon's parallel block does ``mlp_output += attention_output`` after the MLP returns: a recorded view
    would read the sum. Here a later hook adds in place; the capture must still hold the MLP's own output."""
    rt = load(tiny("llama"))
    with rt.capture(["layers.0.mlp"]) as plain, torch.no_grad():
        rt.forward(["a b c d"])
    with rt.capture(["layers.0.mlp"]) as got, torch.no_grad():
        h = rt.module("layers.0.mlp").register_forward_hook(lambda _m, _a, out: out.add_(1.0))
        try:
            rt.forward(["a b c d"])
        finally:
            h.remove()
    assert torch.equal(got["layers.0.mlp"], plain["layers.0.mlp"])
