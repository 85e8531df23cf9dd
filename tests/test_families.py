"""Role tables for every supported family, checked three ways on tiny random checkpoints.

1. Coverage: every tensor that ``save_pretrained`` writes gets a role, and
   ``surgeon inspect`` (the CLI) reports it.
2. Data: every field of each ``surgeon/roles/architectures/*.json`` is used by a real
   tensor and every config key it names exists in the transformers config class.
3. Behaviour: a role *is* what it says, shown through the public API only
   (``ck[key] = ...``, save, :func:`surgeon.runtime.load`). Zeroing ``attn.q``
   makes attention uniform over the causal prefix, so the block output is
   ``o(mean v)``, computed here from the ``v`` and ``o`` views; zeroing ``mlp.up``
   silences the MLP, doubling it doubles the output (doubling ``mlp.gate`` does
   not); silencing ``norm.pre_attn`` zeroes the attention input, ``norm.post_attn``
   removes the attention contribution; writes through fused views land in their
   rows only. q and k enter attention symmetrically (q·k), so a q/k mix-up of
   equal shapes is the one swap these checks cannot see.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors import safe_open
from tiny import FAMILIES
from transformers import CONFIG_MAPPING, AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import surgeon
from surgeon.cli import main
from surgeon.errors import RoleError, UnknownArchitecture
from surgeon.roles import Architecture, ArchitectureError, architectures, find_architecture
from surgeon.runtime import load

FAMS = list(FAMILIES)
TEXT = "The tiny cat sat on a warm mat."
TIED = {"gemma": {}, "gemma2": {}, "gemma3_text": {}, "gpt2": {}, "llama": {"tie_word_embeddings": True}}


def arch_of(family: str) -> Architecture:
    return find_architecture({"model_type": family})


def variants(tiny, family):
    """The default tiny checkpoint and one with tie_word_embeddings flipped (an lm_head appears or goes)."""
    return [tiny(family), tiny(family, tie_word_embeddings=not arch_of(family).tie_default)]


def declared_roles(arch: Architecture) -> set[str]:
    """Every layer role a table declares: plain, fused wholes and parts, expert roles."""
    parts = {p for spec in arch.fused.values() for p in spec["parts"]}
    return set(arch.roles) | set(arch.fused) | parts | set((arch.experts or {}).get("roles", {}))


def tensor_names(path) -> list[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return list(f.keys())


def is_moe_layer(ck, layer: int) -> bool:
    return any(r.layer == layer and r.expert is not None for r in ck.roles.by_key.values())


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


_LOADED: dict = {}


def runtime(source):
    """The runtime bridge for a Checkpoint (staged edits included) or a directory; each tiny one is loaded once."""
    if isinstance(source, surgeon.Checkpoint):
        return load(source)
    if str(source) not in _LOADED:
        _LOADED[str(source)] = load(source)
    return _LOADED[str(source)]


def activations(rt, points) -> dict[str, torch.Tensor]:
    """Activations at ``points`` (role-named hook points) for the one test prompt."""
    with rt.capture(points) as got:
        rt.forward([TEXT])
    return {k: v[0] for k, v in got.items()}


# ---------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("family", FAMS)
def test_every_tensor_of_the_tiny_checkpoint_gets_a_role(tiny, family):
    for path in variants(tiny, family):
        ck = surgeon.open(path)
        assert ck.roles.unclassified == []
        assert sorted(ck.roles.by_tensor) == sorted(tensor_names(path))


@pytest.mark.parametrize("family", FAMS)
def test_inspect_json_reports_every_tensor_by_role(tiny, family):
    path = tiny(family)
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    arch = arch_of(family)
    cfg = json.loads((path / "config.json").read_text())
    assert doc["model_type"] == family and doc["architecture"] == arch.architectures[0]
    assert doc["num_layers"] == 2 and doc["hidden_size"] == 64 and doc["vocab_size"] == 256
    assert doc["tied_embeddings"] == arch.tied(cfg)
    assert doc["unclassified"] == []
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(tensor_names(path))
    for t in doc["tensors"]:
        assert set(t) >= {"name", "role", "layer", "expert", "param", "shape", "dtype", "file"}, t
        assert t["role"] is not None and t["file"] == "model.safetensors" and t["dtype"] == "F32", t
        assert (t["layer"] is None) == (t["role"] in ("embed", "pos_embed", "lm_head", "final_norm")), t
    fused = {t["role"]: sorted(s["role"] for s in t["splits"])
             for t in doc["tensors"] if t.get("fused") and t["param"] == "weight"}
    assert fused == {frole: sorted(spec["parts"]) for frole, spec in arch.fused.items()}
    experts = [t for t in doc["tensors"] if t["expert"] is not None]
    if arch.experts:
        count = arch.num_experts(cfg)
        assert doc["num_experts"] == count == 4
        moe_layers = {t["layer"] for t in experts}
        for layer in moe_layers:
            for role in arch.experts["roles"]:
                got = sorted(t["expert"] for t in experts if t["layer"] == layer and t["role"] == role)
                assert got == list(range(count))
    else:
        assert experts == [] and doc["num_experts"] is None


@pytest.mark.parametrize("family", FAMS)
def test_inspect_table_prints_every_role_column(tiny, family):
    res = CliRunner().invoke(main, ["inspect", str(tiny(family))])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.stdout.splitlines()
                  if line.split()[:1] == ["layers"] and not line.split()[1].isdigit())
    ck = surgeon.open(tiny(family))
    roles = {("experts." if r.expert is not None else "") + r.role
             for r in ck.roles.by_key.values() if r.layer is not None}
    assert set(header.split()[1:]) == roles
    assert f"family {arch_of(family).name}" in res.stdout


# ---------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", sorted(architectures()))
def test_every_declared_role_matches_a_tensor(tiny, name):
    """No dead data: each module the table names is found in a checkpoint transformers wrote."""
    arch = architectures()[name]
    seen_top, seen_layer, seen_expert, seen_fused = set(), set(), set(), set()
    for path in variants(tiny, arch.model_types[0]):
        table = surgeon.open(path).roles
        for refs in table.by_tensor.values():
            for r in refs:
                if r.layer is None:
                    seen_top.add(r.role)
                elif r.expert is not None:
                    seen_expert.add(r.role)
                elif r.fused_in is None and r.role in arch.fused:
                    seen_fused.add(r.role)
                elif r.fused_in is None:
                    seen_layer.add(r.role)
    assert seen_top == set(arch.top)
    assert seen_layer == set(arch.roles)
    assert seen_fused == set(arch.fused)
    assert seen_expert == set((arch.experts or {}).get("roles", {}))


@pytest.mark.parametrize("name", sorted(architectures()))
def test_table_agrees_with_the_transformers_config_class(name):
    arch = architectures()[name]
    for mt in arch.model_types:
        defaults = AutoConfig.for_model(mt).to_dict()
        known = set(defaults) | set(CONFIG_MAPPING[mt].attribute_map)
        missing = {k for k in arch.config_names() if k not in known}
        assert not missing, f"{name}: config keys unknown to transformers' {mt} config: {missing}"
        # bias flags are config switches transformers reads (surgeon.steering relies on them)
        assert set(arch.bias_flags) <= set(defaults)
        # a derived formula is a fallback for a key the config may lack; one transformers always fills is dead
        for key in arch.derived:
            assert defaults.get(key) is None, f"{name}: derived {key!r} shadows a key transformers always writes"
        assert arch.tie_default == defaults["tie_word_embeddings"]
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[mt] == arch.architectures[0]
        assert getattr(transformers, arch.architectures[0]).base_model_prefix == arch.base_prefix
    exprs = " ".join([*(s for f in arch.fused.values() for s in f["parts"].values()),
                      *(f.get("heads", "") for f in arch.fused.values()), *arch.derived.values()])
    for key in arch.derived:
        assert key in exprs, f"{name}: derived {key!r} is used by no size expression"


@pytest.mark.parametrize("family", FAMS)
def test_tiny_config_names_the_tables_model_type_and_class(tiny, family):
    cfg = json.loads((tiny(family) / "config.json").read_text())
    arch = arch_of(family)
    assert cfg["model_type"] in arch.model_types
    assert cfg["architectures"] == list(arch.architectures)


@pytest.mark.parametrize("family", FAMS)
def test_every_layer_has_attention_norms_and_one_kind_of_mlp(tiny, family):
    ck = surgeon.open(tiny(family))
    arch = ck.architecture
    n = ck.num_layers
    parts = {p for spec in arch.fused.values() for p in spec["parts"]}
    declared = set(arch.roles) | set(arch.fused) | parts
    dense = {r for r in declared if r.startswith("mlp.") and not r.startswith(("mlp.router", "mlp.shared."))}
    sparse = {r for r in declared if r.startswith(("mlp.router", "mlp.shared."))}
    for role in declared - dense - sparse:
        assert sorted(r.layer for r in ck.roles.by_key.values() if r.role == role and r.param == "weight"
                      and r.expert is None) == list(range(n)), role
    kinds = []
    for layer in range(n):
        have = {r.role for r in ck.roles.by_key.values() if r.layer == layer and r.expert is None}
        if is_moe_layer(ck, layer):
            assert have & dense == set() and have >= sparse
            experts = {r.expert for r in ck.roles.by_key.values() if r.layer == layer and r.expert is not None}
            assert experts == set(range(ck.roles.num_experts))
            kinds.append("moe")
        else:
            assert have >= dense and have & sparse == set()
            kinds.append("dense")
    # the tiny configs keep layer 1 dense in the Qwen MoE families (mlp_only_layers), so both kinds are covered
    expected = {"mixtral": ["moe", "moe"], "qwen3_moe": ["moe", "dense"], "qwen2_moe": ["moe", "dense"]}
    assert kinds == expected.get(family, ["dense", "dense"])


@pytest.mark.parametrize("family", FAMS)
def test_checkpoint_saved_from_the_base_model_is_classified_too(tiny, family):
    """Original GPT-2 files (and any AutoModel.save_pretrained) omit the base prefix."""
    path = tiny(family, head=False)
    assert not any(n.startswith(arch_of(family).base_prefix + ".") for n in tensor_names(path))
    ck = surgeon.open(path)
    assert ck.roles.unclassified == []
    assert "layers.1.attn.o" in ck and "embed" in ck


def test_gpt2_base_model_views_reach_the_loaded_modules(tiny):
    ck = surgeon.open(tiny("gpt2", head=False))
    rt = runtime(tiny("gpt2", head=False))
    for key in ("layers.0.mlp.up", "layers.1.attn.o", "layers.0.norm.pre_mlp"):
        torch.testing.assert_close(ck[key], rt.module(key).weight.T if ck[key].dim() == 2 else rt.module(key).weight,
                                   rtol=0, atol=0)


def test_a_malformed_table_is_refused_naming_the_field():
    doc = json.loads((resources.files("surgeon.roles.architectures") / "llama.json").read_text())
    Architecture.from_json("llama", doc)
    with pytest.raises(ArchitectureError, match="llama.json: unknown field 'head_split'"):
        Architecture.from_json("llama", {**doc, "head_split": True})
    with pytest.raises(ArchitectureError, match="'attn.query' is not in the vocabulary"):
        Architecture.from_json("llama", {**doc, "roles": {**doc["roles"], "attn.query": "self_attn.q_proj"}})
    with pytest.raises(ArchitectureError, match="missing field 'base_prefix'"):
        Architecture.from_json("llama", {k: v for k, v in doc.items() if k != "base_prefix"})


# ---------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("family", FAMS)
def test_role_keys_reach_the_modules_of_the_loaded_model(tiny, family):
    """Hook points named by role land on the module whose weight the view shows (Mixtral: renamed on load)."""
    ck = surgeon.open(tiny(family))
    rt = runtime(tiny(family))
    for key, ref in ck.roles.by_key.items():
        if ref.layer != 0 or ref.expert is not None or ref.view.rows is not None or ref.param != "weight":
            continue
        w = rt.module(key).weight.detach()
        torch.testing.assert_close(w.T if ref.view.transposed and w.dim() == 2 else w, ck[key], rtol=0, atol=0)
    got = activations(rt, ["layers.0.attn.input", "layers.0.attn", "layers.0.mlp.input", "layers.0.mlp"])
    assert {k: tuple(v.shape[-1:]) for k, v in got.items()} == {k: (64,) for k in got}


def attention_layer(ck) -> int:
    """The first layer with softmax attention (hybrid families start with linear-attention or SSM layers)."""
    return next(i for i in range(ck.num_layers) if all(f"layers.{i}.attn.{p}" in ck for p in "qvo"))


def _uniform_attention_output(ck, rt, x, layer: int = 0):
    """o(mean v) from the v and o views, with GQA head groups: attention whose scores are all equal.

    Where the family's attention module has per-head sinks (``module.sinks``, handed to the attention
    function as ``s_aux``: one extra softmax logit per head that attends to nothing, gpt-oss and others),
    equal scores give each of the ``n`` visible keys the weight ``1 / (n + exp(sink))``, so each head's mean
    is scaled by ``n / (n + exp(sink))``. A ``module.sliding_window`` shorter than the prompt limits the
    keys a position sees to the window.
    """
    cfg = rt.model.config.get_text_config()  # a multimodal wrapper: its text tower's
    att = rt.module(f"layers.{layer}.attn")
    heads = cfg.num_attention_heads
    v = x @ ck[f"layers.{layer}.attn.v"].T
    if f"layers.{layer}.attn.v.bias" in ck:
        v = v + ck[f"layers.{layer}.attn.v.bias"]
    # key/value heads from v's width, not the config: Falcon's multi_query keeps one whatever num_kv_heads says
    head_dim = getattr(att, "head_dim", None) or getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = v.shape[1] // head_dim
    t = v.shape[0]
    pos = torch.arange(t)
    seen = pos[None, :] <= pos[:, None]
    window = getattr(att, "sliding_window", None)
    if isinstance(window, int) and window < t:
        seen &= pos[:, None] - pos[None, :] < window
    n = seen.sum(1, keepdim=True).to(v.dtype)  # keys each position attends to
    mean = (seen.to(v.dtype) @ v) / n
    mean = mean.view(t, kv_heads, head_dim).repeat_interleave(heads // kv_heads, dim=1)
    sinks = getattr(att, "sinks", None)
    if isinstance(sinks, torch.Tensor):
        mean = mean * (n / (n + sinks.detach().float().exp()[None, :]))[..., None]
    out = mean.reshape(t, heads * head_dim) @ ck[f"layers.{layer}.attn.o"].T
    return out + ck[f"layers.{layer}.attn.o.bias"] if f"layers.{layer}.attn.o.bias" in ck else out


QUERY_EDITS = [(f, "attn.q") for f in FAMS] + [(f, "attn.q_norm") for f in FAMS if "attn.q_norm" in arch_of(f).roles]


@pytest.mark.parametrize("family,role", QUERY_EDITS)
def test_zero_query_makes_attention_uniform_over_the_prefix(tiny, family, role, tmp_path):
    """With zero queries every score is equal, so the block output is o(mean v) over the visible prefix.

    One constant factor on the values is allowed and fitted (MiMo-V2 multiplies v by its
    ``attention_value_scale`` inside attention): a wrong q, v or o, or attention that stays
    non-uniform, is not one scalar away from o(mean v); the factor must stay near 1.
    """
    ck = surgeon.open(tiny(family))
    layer = attention_layer(ck)
    if role == "attn.q_norm":  # a zero query norm zeroes the normalised queries
        _silence_norm(ck, f"layers.{layer}.attn.q_norm", family)
    for key in (f"layers.{layer}.attn.q", f"layers.{layer}.attn.q.bias") if role == "attn.q" else ():
        if key in ck:
            ck[key] = torch.zeros(ck.shape(key))
    ck.save(tmp_path / "out")
    points = [f"layers.{layer}.attn.input", f"layers.{layer}.attn"]
    results = {}
    for name, path in (("before", tiny(family)), ("after", tmp_path / "out")):
        rt = runtime(path)
        got = activations(rt, points)
        uniform = _uniform_attention_output(surgeon.open(path), rt, got[points[0]], layer)
        results[name] = (got[points[1]], uniform)
    out, expected = results["after"]
    bias = ck[f"layers.{layer}.attn.o.bias"] if f"layers.{layer}.attn.o.bias" in ck else torch.zeros(())
    scale = float(((out - bias) * (expected - bias)).sum() / (expected - bias).pow(2).sum())
    assert 0.5 < scale < 2, scale
    torch.testing.assert_close(out, bias + scale * (expected - bias), rtol=1e-4, atol=1e-6)
    # the unedited model attends non-uniformly, so this check can fail
    before, uniform = results["before"]
    assert (before - bias - scale * (uniform - bias)).abs().max() > 100 * (1e-4 * uniform.abs().max() + 1e-6)


@pytest.mark.parametrize("family", FAMS)
def test_zero_up_projection_silences_the_mlp(tiny, family, tmp_path):
    ck = surgeon.open(tiny(family))
    n_experts = ck.roles.num_experts
    for layer in range(ck.num_layers):
        if is_moe_layer(ck, layer):
            keys = [f"layers.{layer}.experts.{e}.mlp.up" for e in range(n_experts)] + [f"layers.{layer}.mlp.shared.up"]
        else:
            keys = [f"layers.{layer}.mlp.up"]
        for key in keys + [k + ".bias" for k in keys]:
            if key in ck:
                ck[key] = torch.zeros(ck.shape(key))
    ck.save(tmp_path / "out")
    points = [f"layers.{i}.mlp" for i in range(ck.num_layers)]
    before, after = activations(runtime(tiny(family)), points), activations(runtime(tmp_path / "out"), points)
    for i, p in enumerate(points):
        bias = f"layers.{i}.mlp.down.bias"
        expected = ck[bias].expand_as(after[p]) if bias in ck else torch.zeros_like(after[p])
        torch.testing.assert_close(after[p], expected, rtol=1e-5, atol=1e-7)
        assert (before[p] - expected).abs().max() > 1e-3


def _scaled(ck, layer: int, role: str, factor: float) -> None:
    """Scale ``role`` of ``layer`` (every expert's and the shared expert's in an MoE layer) by ``factor``."""
    if is_moe_layer(ck, layer):
        keys = [f"layers.{layer}.experts.{e}.{role}" for e in range(ck.roles.num_experts)] + [
            f"layers.{layer}.{role.replace('mlp.', 'mlp.shared.')}"]
    else:
        keys = [f"layers.{layer}.{role}"]
    for key in keys:
        if key in ck:
            ck[key] = ck[key] * factor


@pytest.mark.parametrize("family", [f for f in FAMS if "mlp.gate" in declared_roles(arch_of(f))])
def test_up_is_the_linear_branch_and_gate_the_activated_one(tiny, family, tmp_path):
    """act(gate x) * (up x): doubling up doubles the MLP output exactly, doubling gate does not."""
    outs = {"none": activations(runtime(tiny(family)), ["layers.0.mlp"])["layers.0.mlp"]}
    for how in ("mlp.up", "mlp.gate"):
        ck = surgeon.open(tiny(family))
        _scaled(ck, 0, how, 2.0)
        outs[how] = activations(runtime(ck), ["layers.0.mlp"])["layers.0.mlp"]
    torch.testing.assert_close(outs["mlp.up"], 2 * outs["none"], rtol=1e-5, atol=1e-7)
    assert (outs["mlp.gate"] - 2 * outs["none"]).abs().max() > 1e-2 * outs["none"].abs().max()




def _silence_norm(ck, key: str, family: str) -> None:
    """Make a norm output zero: weight 0 (Gemma: -1) and bias 0."""
    ck[key] = torch.full(ck.shape(key), -ck.architecture.norm_offset)  # gain (offset + w) becomes 0
    if key + ".bias" in ck:
        ck[key + ".bias"] = torch.zeros(ck.shape(key + ".bias"))


def _block_outputs(ck, layer: int, proj: str) -> list[str]:
    """The keys whose zeroing silences a block: its output projection, or in an MoE layer every expert's
    ``mlp.down`` and the shared expert's, with biases."""
    keys = [f"layers.{layer}.{proj}"]
    if proj == "mlp.down" and is_moe_layer(ck, layer):
        keys = [f"layers.{layer}.experts.{e}.mlp.down" for e in range(ck.roles.num_experts)]
        keys.append(f"layers.{layer}.mlp.shared.down")
    return [k for key in keys for k in (key, key + ".bias") if k in ck]


@pytest.mark.parametrize("family", FAMS)
def test_norms_are_named_by_what_they_normalise(tiny, family):
    assert check_norms(tiny, family)


def _locatable(rt, point: str) -> bool:
    try:
        rt.module(point)
    except KeyError:  # no role locates the block (an inferred family without attn.o or mlp.down)
        return False
    return True


def check_norms(tiny, family) -> bool:
    """pre_attn feeds attention, pre_mlp feeds the MLP, post_attn / post_mlp scale a block's output.

    ``pre_attn`` is silenced in the first layer that has one and ``pre_mlp`` in another layer, so a
    swapped pair shows (ModernBERT's first layer has no attention norm); ``final_norm`` where there is one;
    each where its block can be located, post norms where the block outputs they are compared with
    (``attn.o``, ``mlp.down``) have roles. False when no norm could be checked.
    """
    rt0 = runtime(tiny(family))
    points = [p for p in ("layers.0.attn.input", "layers.0.mlp.input", "layers.1.attn.input", "layers.1.mlp.input")
              if _locatable(rt0, p)] + ["layers.1", "lm_head.input"]
    base = surgeon.open(tiny(family))
    have = {r.role for r in base.roles.by_key.values() if r.role.startswith("norm.") or r.role == "final_norm"}
    original = activations(rt0, points)
    # pre norms: pre_attn of one layer and pre_mlp of the other silenced, so a swapped pair would show
    on = {role: [i for i in (0, 1) if f"layers.{i}.norm.{role}" in base and f"layers.{1 - i}.{block}.input" in points
                 and f"layers.{i}.{block}.input" in points]
          for role, block in (("pre_attn", "attn"), ("pre_mlp", "mlp"))}
    at = on["pre_attn"][0] if on["pre_attn"] else None
    mt = next((i for i in on["pre_mlp"][::-1] if i != at), None)
    pre = surgeon.open(tiny(family))
    for key in (f"layers.{at}.norm.pre_attn", f"layers.{mt}.norm.pre_mlp", "final_norm"):
        if key in pre:
            _silence_norm(pre, key, family)
    got = activations(runtime(pre), points)
    if "final_norm" in have:
        assert got["lm_head.input"].abs().max() == 0
    if at is not None:
        assert got[f"layers.{at}.attn.input"].abs().max() == 0 < got[f"layers.{1 - at}.attn.input"].abs().max()
    if mt is not None:
        assert got[f"layers.{mt}.mlp.input"].abs().max() == 0 < got[f"layers.{1 - mt}.mlp.input"].abs().max()
    post = [r for r in ("norm.post_attn", "norm.post_mlp") if r in have]
    pairs = ((0, "norm.post_attn", "attn.o"), (1, "norm.post_mlp", "mlp.down"))
    blocks = [(layer, role, _block_outputs(base, layer, proj)) for layer, role, proj in pairs if role in have]
    if not post or not all(keys for _, _, keys in blocks):  # no role for a block's output: post norms stay unchecked
        return at is not None or mt is not None
    # post norms: silencing one removes its block's contribution, like zeroing the block's output projection
    silenced, reference = surgeon.open(tiny(family)), surgeon.open(tiny(family))
    for layer, role, keys in blocks:
        _silence_norm(silenced, f"layers.{layer}.{role}", family)
        for key in keys:
            reference[key] = torch.zeros(reference.shape(key))
    a, b = activations(runtime(silenced), points), activations(runtime(reference), points)
    torch.testing.assert_close(a["layers.1"], b["layers.1"], rtol=1e-5, atol=1e-6)
    assert (a["layers.1"] - original["layers.1"]).abs().max() > 1e-3
    if "layers.0.attn.input" in a:
        torch.testing.assert_close(a["layers.0.attn.input"], original["layers.0.attn.input"], rtol=0, atol=0)
    assert "layers.1.mlp.input" not in a or a["layers.1.mlp.input"].abs().max() > 1e-3
    return True


FUSED_WRITES = [("phi3", "layers.0.attn.k"), ("phi3", "layers.1.mlp.up"), ("gpt2", "layers.0.attn.v"),
                ("gpt2", "layers.1.attn.q.bias"), ("gpt_neox", "layers.0.attn.k"), ("gpt_neox", "layers.1.attn.v.bias")]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family,key", FUSED_WRITES)
def test_write_through_a_fused_part_touches_only_its_rows(tiny, family, key, dtype, tmp_path):
    path = tiny(family) if dtype == "float32" else tiny(family, dtype=dtype)
    ck = surgeon.open(path)
    ref = ck.resolve(key)
    assert ref.fused_in is not None
    value = torch.randn(ck.shape(key))
    ck[key] = value
    ck.save(tmp_path / "out")
    before, after = surgeon.open(path), surgeon.open(tmp_path / "out")
    stored = getattr(torch, dtype)
    assert torch.equal(as_bytes(after.get(key, dtype=None)), as_bytes(value.to(stored)))
    others = [r.key for r in after.roles.by_tensor[ref.tensor] if r.fused_in is not None and r.key != key]
    assert len(others) >= 1
    for other in others:
        assert torch.equal(as_bytes(after.get(other, dtype=None)), as_bytes(before.get(other, dtype=None))), other
    # the parts tile the fused tensor: nothing outside them could have changed unnoticed
    assert sum(after.shape(r.key)[0] for r in after.roles.by_tensor[ref.tensor] if r.fused_in) == after.shape(
        after.roles.by_tensor[ref.tensor][0].key)[0]


def test_gpt2_conv1d_is_shown_out_in_and_computes_x_wt_plus_b(tiny, tmp_path):
    ck = surgeon.open(tiny("gpt2"))
    assert ck.shape("layers.0.mlp.up") == ck["layers.0.mlp.up"].shape == (256, 64)
    assert ck.entries["transformer.h.0.mlp.c_fc.weight"].shape == (64, 256)  # (in, out) on disk
    got = activations(runtime(tiny("gpt2")), ["layers.0.mlp.up.input", "layers.0.mlp.up", "layers.0.mlp.down.input",
                                               "layers.0.mlp.down"])
    for role in ("layers.0.mlp.up", "layers.0.mlp.down"):
        torch.testing.assert_close(got[role], got[role + ".input"] @ ck[role].T + ck[role + ".bias"],
                                   rtol=1e-5, atol=1e-6)
    # a whole (out, in) matrix written back goes to disk as (in, out) and the module computes with it
    w = torch.randn(256, 64) * 0.05
    ck["layers.0.mlp.up"] = w
    ck.save(tmp_path / "out")
    assert surgeon.open(tmp_path / "out").entries["transformer.h.0.mlp.c_fc.weight"].shape == (64, 256)
    got = activations(runtime(tmp_path / "out"), ["layers.0.mlp.up.input", "layers.0.mlp.up"])
    torch.testing.assert_close(got["layers.0.mlp.up"], got["layers.0.mlp.up.input"] @ w.T + ck["layers.0.mlp.up.bias"],
                               rtol=1e-5, atol=1e-6)


def test_gpt2_attention_recomputed_from_the_split_views(tiny):
    """c_attn's q, k and v views (Conv1D, fused) reproduce GPT-2 attention exactly (no RoPE to model)."""
    ck = surgeon.open(tiny("gpt2"))
    got = activations(runtime(tiny("gpt2")), ["layers.0.attn.input", "layers.0.attn"])
    x = got["layers.0.attn.input"]
    q, k, v = (x @ ck[f"layers.0.attn.{p}"].T + ck[f"layers.0.attn.{p}.bias"] for p in "qkv")
    t, heads = x.shape[0], 4
    q, k, v = (m.view(t, heads, -1).transpose(0, 1) for m in (q, k, v))
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    heads_out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, -1)
    expected = heads_out @ ck["layers.0.attn.o"].T + ck["layers.0.attn.o.bias"]
    torch.testing.assert_close(got["layers.0.attn"], expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- tied embeddings


@pytest.mark.parametrize("family", sorted(TIED))
def test_tied_lm_head_writes_the_embedding(tiny, family, tmp_path):
    path = tiny(family, **TIED[family])
    ck = surgeon.open(path)
    assert ck.tied and ck.resolve("lm_head").tensor == ck.resolve("embed").tensor
    new = ck["lm_head"] + 0.5 * torch.randn(ck.shape("lm_head"))
    ck["lm_head"] = new
    ck.save(tmp_path / "out")
    out = surgeon.open(tmp_path / "out")
    assert torch.equal(out["embed"], new) and torch.equal(out["lm_head"], new)
    logits = {}
    for name, p in (("before", path), ("after", tmp_path / "out")):
        rt = runtime(p)
        with rt.capture(["lm_head.input", "lm_head"]) as got:
            logits[name] = rt.forward([TEXT])[0]
        if name == "after":  # the head multiplies by the new matrix
            bias = ck["lm_head.bias"] if "lm_head.bias" in ck else 0  # CTRL's head adds a bias
            torch.testing.assert_close(got["lm_head"][0], got["lm_head.input"][0] @ new.T + bias, rtol=1e-4, atol=1e-5)
    assert (logits["after"] - logits["before"]).abs().max() > 1e-2


def test_untied_lm_head_writes_only_the_head(tiny, tmp_path):
    path = tiny("llama")
    ck = surgeon.open(path)
    assert not ck.tied and ck.resolve("lm_head").tensor == "lm_head.weight"
    new = torch.randn(ck.shape("lm_head"))
    ck["lm_head"] = new
    ck.save(tmp_path / "out")
    before, after = surgeon.open(path), surgeon.open(tmp_path / "out")
    assert torch.equal(after["lm_head"], new)
    assert torch.equal(as_bytes(after.get("embed", None)), as_bytes(before.get("embed", None)))
    manifest = json.loads((tmp_path / "out" / "surgeon.json").read_text())
    assert [c["name"] for c in manifest["tensors"]] == ["lm_head.weight"]


# ---------------------------------------------------------------------------- unknown families


@pytest.fixture
def unknown(tiny, tmp_path):
    """A llama checkpoint whose config.json names a family surgeon has no table for."""
    d = tmp_path / "frob"
    shutil.copytree(tiny("llama"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_unknown_family_opens_by_raw_names_and_refuses_roles(unknown):
    ck = surgeon.open(unknown)
    assert ck["model.layers.0.mlp.down_proj.weight"].shape == (64, 128)
    with pytest.raises(UnknownArchitecture) as err:
        _ = ck.roles
    msg = str(err.value)
    assert "\n" not in msg and "'frobnicator'" in msg
    assert all(mt in msg for a in architectures().values() for mt in a.model_types)
    with pytest.raises(RoleError, match="frobnicator.*supported: gemma"):
        ck["layers.0.mlp.down"]


def test_unknown_model_type_is_not_guessed_from_the_class_name(unknown):
    cfg = json.loads((unknown / "config.json").read_text())
    with pytest.raises(UnknownArchitecture):
        find_architecture({**cfg, "architectures": ["LlamaForCausalLM"]})
    assert find_architecture({"architectures": ["LlamaForCausalLM"]}).name == "llama"  # no model_type: class decides


def test_inspect_of_an_unknown_family_lists_every_tensor_with_one_warning(unknown):
    res = CliRunner().invoke(main, ["inspect", str(unknown), "--json"])
    assert res.exit_code == 0, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "frobnicator" in res.stderr and "Traceback" not in res.stderr
    doc = json.loads(res.stdout)
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(tensor_names(unknown))
    assert all(t["role"] is None for t in doc["tensors"]) and len(doc["unclassified"]) == 21
    assert doc["roles_from"] is None and "frobnicator" in doc["warning"]
    text = CliRunner().invoke(main, ["inspect", str(unknown)])
    assert text.exit_code == 0 and "21 tensor(s) without a role" in text.stdout


def test_raw_edits_of_an_unknown_family_save(unknown, tmp_path):
    ck = surgeon.open(unknown)
    name = "model.layers.0.mlp.down_proj.weight"
    ck[name] = torch.zeros(64, 128)
    ck.save(tmp_path / "out")
    assert surgeon.open(tmp_path / "out")[name].abs().max() == 0
