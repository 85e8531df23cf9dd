"""Layer kinds on the layer axis: locate's heatmap and text map, and compare reports' layer ranges.

Gemma-3-270M's config makes layers 5, 11 and 17 full attention and the other fifteen sliding-window
attention; SmolLM2's thirty layers are alike, so nothing is marked there. The locate result below is
synthetic (no locate run): the marks depend only on the model's config.
"""

from __future__ import annotations

import surgeon
from surgeon.roles.layers import checkpoint_kinds, span_label, tags
from surgeon.study.locate.plot import axis_labels
from surgeon.study.locate.result import LocateResult
from surgeon.study.report import _kinds, markdown


def _gemma_tags(gemma3) -> list[str]:
    return tags(checkpoint_kinds(surgeon.open(gemma3)))


def test_gemma3_tags_mark_layers_5_11_17_full_and_the_rest_sliding(gemma3, smollm2):
    t = _gemma_tags(gemma3)
    assert len(t) == 18
    assert [i for i, k in enumerate(t) if k == "full"] == [5, 11, 17]
    assert {k for i, k in enumerate(t) if i not in (5, 11, 17)} == {"sliding"}
    kinds = checkpoint_kinds(surgeon.open(gemma3))
    assert span_label(kinds, list(range(7))) == "sliding ×6, full ×1"
    assert span_label(kinds, list(range(11, 18))) == "full ×2, sliding ×5"
    assert set(tags(checkpoint_kinds(surgeon.open(smollm2)))) == {""}  # every layer alike: no marks
    assert span_label(checkpoint_kinds(surgeon.open(smollm2)), list(range(7))) == ""


def _result(layer_kinds) -> LocateResult:
    n = 18
    grad = [[float((L * 7 + j) % 5) for j in range(3)] for L in range(n)]
    return LocateResult(task="t", model="gemma3-270m", num_layers=n, roles=["attn.q", "mlp.up", "mlp.down"],
                        grad=grad, grad_total=sum(map(sum, grad)), suggested=(11, 17),
                        suggested_by={"grad": "11-17"}, layer_kinds=layer_kinds)


def test_locate_heatmap_axis_and_text_map_name_the_kinds(gemma3, tmp_path):
    r = _result(_gemma_tags(gemma3))
    labels = axis_labels(r)
    assert labels[5] == "5 full" and labels[4] == "4 sliding" and labels[17] == "17 full"
    text = r.text()
    assert "suggested layers: 11-17 (full ×2, sliding ×5)" in text
    assert "layers by gradient attribution: 11-17 (full ×2, sliding ×5)" in text
    rows = {line.split()[-1] for line in text.splitlines() if line[1:5].strip() in ("5", "11", "17")}
    assert rows == {"full"}
    assert r.to_dict()["layer_kinds"][5] == "full"
    png = r.save_png(tmp_path / "map.png")
    assert png.stat().st_size > 1000
    plain = _result([""] * 18)  # layers alike: plain numbers, no kind words
    assert axis_labels(plain)[5] == "5" and "(full" not in plain.text()


def test_report_names_the_kinds_an_arms_layer_range_covers(gemma3):
    t = _gemma_tags(gemma3)
    lora = {"name": "lora_0-6", "spec": "lora layers=0-6", "stages": [{"params": {"layers": "0-6"}}]}
    located = {"name": "lora_auto", "spec": "lora layers=auto", "stages": [
        {"params": {"layers": [11, 12, 13, 14, 15, 16, 17], "layers_from": "auto"}}]}
    rome = {"name": "rome", "spec": "edit layer=5", "stages": [{"params": {"layer": 5}}]}
    head = {"name": "head", "spec": "lora roles=lm_head", "stages": [{"params": {"roles": "lm_head"}}]}
    assert _kinds(lora, t) == " — layers 0-6: sliding ×6, full ×1"
    assert _kinds(located, t) == " — layers 11-17: full ×2, sliding ×5"
    assert _kinds(rome, t) == " — layer 5: full ×1"
    assert _kinds(head, t) == "" and _kinds(lora, [""] * 18) == ""
    report = {"task": "t", "model": str(gemma3), "arms": [], "reading": "", "threads": 1,
              "counts": dict.fromkeys(("efficacy", "generalisation", "specificity", "neutral", "train"), 0)}
    none = {"name": "none", "spec": "none", "error": None, "stages": [],
            "metrics": {}, "cost": {"wall_s": 0.0, "peak_rss_mb": None, "params_changed": 0, "bytes_written": 0}}
    report["arms"] = [none, {**none, **lora}]
    assert "- `lora_0-6`: `lora layers=0-6` — layers 0-6: sliding ×6, full ×1" in markdown(report)
