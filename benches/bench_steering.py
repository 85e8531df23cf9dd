"""Steering vectors and adapter export on the real models: wall time, peak memory, effects.

Each phase runs in its own process so its peak RSS is its own:

* ``extract``  — happy/sad and French/English directions on SmolLM2 (8 pairs each), steered generations.
* ``bake``     — α·v baked as layers.L.mlp.down.bias, saved, reloaded by plain transformers; logits
  against the run-time steer (fp32 vector, and the stored bf16 bias).
* ``ablate``   — directional ablation of the happy direction, all layers + embedding, and layers 8–12
  only: per-layer written component along r before/after; KL(original ‖ ablated) and perplexity
  ratio on the shipped neutral corpus (the definition of :mod:`surgeon.study.measure`).
* ``adapter``  — the all-layer ablation exported as a LoRA adapter; logits of base + adapter (peft)
  against the ablated checkpoint and against the same ablation done in fp32.
* ``gemma3``   — Gemma-3-270M: a bias on attn.o (behind norm.post_attn) against steer(site="attn.o")
  and steer(site="residual"); ablation KL.

Usage: ``python benches/bench_steering.py [--phases extract,bake,...] [--json out.json]``. Timings
on a shared 2-core machine are noisy; the thread count is SURGEON_THREADS (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from steering_extract import PAIRS  # noqa: E402

PHASES = ("extract", "bake", "ablate", "adapter", "gemma3")
LAYER = 9


def _setup():
    torch.set_num_threads(int(os.environ.get("SURGEON_THREADS", "2")))


def _smollm2():
    from surgeon.fixtures import fixture

    return fixture("smollm2")


def _happy(rt, layer=LAYER):
    from surgeon.edits.steering import extract

    pos, neg, _ = PAIRS["happy"]
    return extract(rt, pos, neg, layer)


def _neutral_task(n=8):
    from surgeon.study.task import Task, neutral_texts

    return Task(name="neutral", neutral=neutral_texts("neutral_en", n))


def _kl(original_rt, changed_rt, task=None):
    from surgeon.study.measure import measure, reference

    task = task or _neutral_task()
    m = measure(changed_rt, task, reference(original_rt, task))
    return {"kl": m.kl, "perplexity_ratio": m.perplexity_ratio}


def phase_extract(out):
    import surgeon
    from surgeon.edits.steering import extract, steer
    from surgeon.runtime import load

    rt = load(surgeon.open(_smollm2()))
    res = {}
    for name, layer, alphas in (("happy", 9, (-2, 0, 2)), ("french", 12, (0, 2))):
        pos, neg, prompts = PAIRS[name]
        t = time.perf_counter()
        sv = extract(rt, pos, neg, layer)
        wall = time.perf_counter() - t
        pca = extract(rt, pos, neg, layer, method="pca")
        gens = {}
        for prompt in prompts[:2]:
            for a in alphas:
                with steer(rt, sv, alpha=a):
                    gens[f"{prompt} | α={a:+d}"] = rt.generate(prompt, 25)
        res[name] = {"layer": layer, "extract_s": wall, "scale": sv.scale, "residual_norm": sv.residual_norm,
                     "separation": sv.separation, "explained": sv.explained,
                     "pca_cosine": float(pca.direction @ sv.direction), "generations": gens}
    return res


def phase_bake(out):
    import surgeon
    from surgeon.edits.bake import bake_additive
    from surgeon.edits.steering import steer
    from surgeon.runtime import load

    rt = load(surgeon.open(_smollm2()))
    sv = _happy(rt)
    t = time.perf_counter()
    ck = surgeon.open(_smollm2())
    info = bake_additive(ck, sv, alpha=2.0)
    ck.save(out / "baked")
    wall = time.perf_counter() - t
    baked = load(out / "baked")
    stored = surgeon.open(out / "baked")[info["key"]]
    texts = _neutral_task(8).neutral
    enc = rt.encode(texts)
    m = enc["attention_mask"].bool()
    with torch.no_grad():
        base = rt.model(**enc).logits[m]
        got = baked.model(**enc).logits[m]
        with steer(rt, sv, alpha=2.0):
            exact = rt.model(**enc).logits[m]
        with steer(rt, stored, layer=LAYER):
            same = rt.model(**enc).logits[m]
    return {"bake_and_save_s": wall, "key": info["key"], "flag": info["flag"], "zero_biases": info["zero_biases"],
            "steer_moves_logits_max": float((exact - base).abs().max()),
            "baked_vs_steer_fp32_max": float((got - exact).abs().max()),
            "baked_vs_steer_fp32_mean": float((got - exact).abs().mean()),
            "baked_vs_steer_stored_bias_max": float((got - same).abs().max()),
            "bias_bf16_relative_rounding": float((stored - 2 * sv.vector).norm() / (2 * sv.vector).norm()),
            "kl_neutral": _kl(rt, baked)}


def phase_ablate(out):
    import surgeon
    from surgeon.edits.bake import ablate
    from surgeon.edits.steering import written_projection
    from surgeon.runtime import load

    rt = load(surgeon.open(_smollm2()))
    sv = _happy(rt)
    texts = _neutral_task(4).neutral
    points = ["embed", 0, 5, 9, 15, 29]
    before = written_projection(rt, texts, sv, points)
    res = {"before": {str(k): v["ratio"] for k, v in before.items()}}
    for name, kw in (("all_layers_embed", dict(layers=None, embed=True)), ("layers_8_12", dict(layers=range(8, 13)))):
        t = time.perf_counter()
        ck = surgeon.open(_smollm2())
        info = ablate(ck, sv, **kw)
        ck.save(out / name)
        wall = time.perf_counter() - t
        ab = load(out / name)
        after = written_projection(ab, texts, sv, points)
        res[name] = {"ablate_and_save_s": wall, "tensors": len(info["tensors"]),
                     "after": {str(k): v["ratio"] for k, v in after.items()}, **_kl(rt, ab)}
    return res


def phase_adapter(out):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import surgeon
    from surgeon.edits.bake import ablate
    from surgeon.export.adapter import export_adapter
    from surgeon.runtime import load

    src = _smollm2()
    rt = load(surgeon.open(src))
    sv = _happy(rt)
    ck = surgeon.open(src)
    ablate(ck, sv, embed=True)
    ck.save(out / "ablated")
    del rt
    t = time.perf_counter()
    rep = export_adapter(out / "ablated", src, out / "adapter")
    wall = time.perf_counter() - t
    texts = _neutral_task(4).neutral
    ab = load(out / "ablated")
    enc = ab.encode(texts)
    m = enc["attention_mask"].bool()
    r = sv.direction
    with torch.no_grad():
        edited = ab.model(**enc).logits[m]
        del ab
        base = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        plain = base(**enc).logits[m]
        pm = PeftModel.from_pretrained(base, str(out / "adapter"))
        got = pm(**enc).logits[m]
        with pm.disable_adapter():  # the same ablation in fp32, on the live weights
            keep = {}
            for name, p in base.named_parameters():
                if name.endswith(("o_proj.base_layer.weight", "down_proj.base_layer.weight")):
                    keep[name] = p.detach().clone()
                    p -= torch.outer(r, r @ p)
                elif name.endswith("embed_tokens.base_layer.weight") or name == "model.embed_tokens.weight":
                    keep[name] = p.detach().clone()
                    p -= torch.outer(p @ r, r)
            ideal = pm(**enc).logits[m]
    return {"export_s": wall, "adapter_parameters": rep.parameters, "tensors": len(rep.tensors),
            "max_residual": max(t.residual for t in rep.tensors if t.residual is not None),
            "ablation_moves_logits_max": float((edited - plain).abs().max()),
            "adapter_vs_checkpoint_max": float((got - edited).abs().max()),
            "adapter_vs_checkpoint_mean": float((got - edited).abs().mean()),
            "adapter_vs_fp32_ablation_max": float((got - ideal).abs().max()),
            "checkpoint_vs_fp32_ablation_max": float((edited - ideal).abs().max()),
            "fp32_params_touched": len(keep)}


def phase_gemma3(out):
    import surgeon
    from surgeon.edits.bake import ablate, bake_additive
    from surgeon.edits.steering import extract, steer
    from surgeon.errors import EditError
    from surgeon.fixtures import fixture
    from surgeon.runtime import load

    src = fixture("gemma3")
    rt = load(surgeon.open(src))
    pos, neg, _ = PAIRS["happy"]
    layer = 8
    sv = extract(rt, pos, neg, layer)
    ck = surgeon.open(src)
    try:
        bake_additive(ck, sv, alpha=2.0)
        refused = None
    except EditError as e:
        refused = str(e)
    t = time.perf_counter()
    info = bake_additive(ck, sv, alpha=2.0, site="attn.o")
    ck.save(out / "baked")
    wall = time.perf_counter() - t
    baked = load(out / "baked")
    stored = surgeon.open(out / "baked")[info["key"]]
    texts = _neutral_task(4).neutral
    enc = rt.encode(texts)
    m = enc["attention_mask"].bool()
    with torch.no_grad():
        got = baked.model(**enc).logits[m]
        with steer(rt, stored, layer=layer, site="attn.o"):
            same_site = rt.model(**enc).logits[m]
        with steer(rt, stored, layer=layer, site="residual"):
            residual = rt.model(**enc).logits[m]
        base = rt.model(**enc).logits[m]
    del baked
    res = {"residual_site_refused": refused, "bake_attn_o_and_save_s": wall, "flag": info["flag"],
           "bias_moves_logits_max": float((got - base).abs().max()),
           "baked_vs_steer_attn_o_max": float((got - same_site).abs().max()),
           "baked_vs_steer_residual_max": float((got - residual).abs().max())}
    from surgeon.edits.steering import written_projection

    for name, kw in (("all_exact", dict(through_post_norm=True)), ("all_naive", dict(through_post_norm=False)),
                     ("6_10_exact", dict(layers=range(6, 11))),
                     ("6_10_naive", dict(layers=range(6, 11), through_post_norm=False)),
                     ("embed_only", dict(layers=[], embed=True))):
        t = time.perf_counter()
        ck = surgeon.open(src)
        ablate(ck, sv, **kw)
        ck.save(out / name)
        wall_ab = time.perf_counter() - t
        ab = load(out / name)
        proj = written_projection(ab, texts, sv, [layer])[layer]["ratio"]
        res[f"ablate_{name}"] = {"ablate_and_save_s": wall_ab, f"written_ratio_layer{layer}": proj,
                                 **_kl(rt, ab, _neutral_task(4))}
        print(f"  {name}: {res[f'ablate_{name}']}", file=sys.stderr, flush=True)
        del ab
    res[f"written_ratio_layer{layer}_before"] = written_projection(rt, texts, sv, [layer])[layer]["ratio"]
    return res


def run_phase(name: str) -> dict:
    _setup()
    with tempfile.TemporaryDirectory(prefix="bench-steer-") as tmp:
        t = time.perf_counter()
        res = globals()[f"phase_{name}"](Path(tmp))
        res["phase_wall_s"] = time.perf_counter() - t
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = ap.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(run_phase(args.phase)))
        return
    results = {}
    for name in args.phases.split(","):
        proc = subprocess.run([sys.executable, __file__, "--phase", name], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            results[name] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        else:
            results[name] = json.loads(line[len("RESULT "):])
        print(f"== {name}\n{json.dumps(results[name], indent=1, ensure_ascii=False)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
