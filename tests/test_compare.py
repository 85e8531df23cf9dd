"""compare: arm specs parse, every arm starts from the original, the report has one row per arm."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from surgeon.study import arms as cmp
from surgeon.study.arms import CompareError, Stage, expand_arm, parse_arm
from surgeon.study.report import reading
from surgeon.study.task import Task

TASK = {
    "name": "eiffel",
    "train": [{"prompt": "The Eiffel Tower is located in the city of", "completion": " Rome"}],
    "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"}],
    "generalisation": [{"prompt": "The Eiffel Tower stands in the city of", "target": " Rome"}],
    "specificity": ["The capital of Germany is",
                    {"prompt": "The Louvre is located in the city of", "target": " Rome", "original": " Paris"}],
    "neutral": ["The library opens at nine in the morning and closes at six in the evening on weekdays."],
}

SCALE = '''
from surgeon.study.task import Task


def edit(ck, task, factor=1.0):
    assert Task.load(task).name == "eiffel"  # compare hands edit scripts the task file
    ck["layers.5.mlp.down"] = ck["layers.5.mlp.down"] * factor
    ck.record("scale", factor=factor)
'''

BROKEN = "def edit(ck):\n    raise ValueError('this arm is broken on purpose')\n"


def test_arm_specs_parse_into_stages():
    a = parse_arm("ftl=full layers=6 roles=mlp.down steps=20 lr=5e-4 max_delta=5e-3")
    assert a.stages == [Stage("full", None, {"layers": "6", "roles": "mlp.down", "steps": 20, "lr": 5e-4,
                                             "max_delta": 5e-3})]
    combo = parse_arm("both=edit:rome.py layer=6 + lora layers=0-6 roles=attn+mlp rank=8")
    assert [s.kind for s in combo.stages] == ["edit", "lora"]
    assert combo.stages[0].script == "rome.py" and combo.stages[0].params == {"layer": 6}
    assert combo.stages[1].params == {"layers": "0-6", "roles": "attn+mlp", "rank": 8}
    assert parse_arm("none").stages == [Stage("none")]
    for bad, msg in [("lora layers=0-6", "expected NAME=SPEC"), ("x=lora depth=3", "unknown lora option(s) depth"),
                     ("x=sgd lr=1", "is not none, edit:PATH, lora or full"), ("x=none + lora", "stands alone"),
                     ("a/b=none", "expected NAME=SPEC")]:
        with pytest.raises(CompareError, match=re.escape(msg)):
            parse_arm(bad)


def test_layers_auto_goes_through_the_resolver_hook(monkeypatch):
    calls = []
    monkeypatch.setitem(cmp.LAYER_RESOLVERS, "auto",
                        lambda model, task, method: calls.append(method) or [4, 5])
    a = expand_arm(parse_arm("located=lora layers=auto:gradient roles=mlp"), task=Task.from_dict(TASK), model="m")
    assert a.stages[0].params["layers"] == [4, 5] and a.stages[0].params["layers_from"] == "auto:gradient"
    assert calls == ["gradient"]
    plain = parse_arm("early=lora layers=0-6")
    assert expand_arm(plain, task=Task.from_dict(TASK), model="m").stages == plain.stages


def test_compare_writes_one_row_per_arm_with_metrics_and_cost(smollm2, tmp_path):
    from surgeon.cli import main

    (tmp_path / "task.json").write_text(json.dumps(TASK))
    (tmp_path / "scale.py").write_text(SCALE)
    (tmp_path / "broken.py").write_text(BROKEN)
    out = tmp_path / "report"
    res = CliRunner().invoke(main, [
        "compare", str(tmp_path / "task.json"), "--model", str(smollm2), "--out", str(out), "--keep-checkpoints",
        "--arm", "none",
        "--arm", "lora=lora layers=0-1 roles=attn steps=4 lr=5e-3",
        "--arm", f"scaled_then_ft=edit:{tmp_path / 'scale.py'} factor=1.05 + full layers=1 roles=mlp.down steps=2",
        "--arm", f"broken=edit:{tmp_path / 'broken.py'}",
    ])
    assert res.exit_code == 1, res.output  # one arm failed: the exit code says so, the report is still written
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["arms"]}
    assert list(rows) == ["none", "lora", "scaled_then_ft", "broken"]

    none, lora, combo = rows["none"], rows["lora"], rows["scaled_then_ft"]
    assert none["metrics"]["kl"] == 0.0 and none["metrics"]["specificity"] == 1.0 and none["metrics"]["efficacy"] == 0
    assert lora["metrics"]["efficacy_p"] > 10 * none["metrics"]["efficacy_p"]
    assert lora["metrics"]["kl"] > 0 and combo["metrics"]["kl"] > 0
    for r in (lora, combo):
        c = r["cost"]
        assert c["wall_s"] > 0 and c["peak_rss_mb"] > 200 and c["bytes_written"] > 1e8
    assert lora["cost"]["tensors_changed"] == 8 and lora["cost"]["params_changed"] > 1e5
    # the combination: the script's edit and the fine-tune in one checkpoint, both recorded
    manifest = json.loads((out / "arms" / "scaled_then_ft" / "surgeon.json").read_text())
    assert sorted(t["key"] for t in manifest["tensors"]) == ["layers.1.mlp.down", "layers.5.mlp.down"]
    assert [s["kind"] for s in manifest["source"]["stages"]] == ["script", "finetune"]
    assert manifest["source"]["stages"][0]["params"]["factor"] == 1.05
    assert combo["cost"]["params_changed"] > 576 * 1536  # all of the scaled tensor, part of the fine-tuned one
    assert "this arm is broken on purpose" in rows["broken"]["error"]

    md = (out / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + 4  # header + one row per arm
    assert "failed: " in md and "Best efficacy: lora" in md
    assert md.split("\n\n")[1] in res.output  # the CLI prints the table
    png = (out / "report.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000


def test_report_reading_names_winners_and_losses():
    def row(name, eff, gen, kl, spec, wall, changed=10):
        return {"name": name, "spec": "", "error": None,
                "metrics": {"efficacy": eff, "efficacy_p": eff, "generalisation": gen, "generalisation_p": gen,
                            "specificity": spec, "kl": kl},
                "cost": {"wall_s": wall, "params_changed": changed, "peak_rss_mb": 1, "bytes_written": 0, "notes": []}}

    report = {"arms": [row("none", 0, 0, 0, 1, 0, changed=0), row("rome", 1, 1, 0.002, 1, 30),
                       row("lora", 1, 0.5, 0.03, 0.8, 6), row("late", 1, 1, 0.1, 0.0, 9)],
              "counts": {"specificity": 5}}
    text = reading(report)
    assert "Best efficacy: rome, lora, late" in text
    assert "Best generalisation (held-out prompts): rome, late (1.00" in text
    assert "Least collateral damage on neutral text: rome (KL 0.0020); most: late (KL 0.1000)" in text
    # counts, not a bare share that reads like a damage rate: 0.00 kept is 5 of 5 changed
    assert "Changed the top-1 answer on specificity prompts: lora (changed 1/5 (kept 0.80)), " \
           "late (changed 5/5 (kept 0.00))" in text
    assert "Cheapest: lora (6.0 s" in text


@pytest.mark.parametrize("cmd", ["compare", "locate"])
def test_report_inside_the_input_checkpoint_is_refused(tiny, tmp_path, cmd):
    """compare/locate write reports, never into the model they read."""
    import hashlib
    import shutil

    from surgeon.cli import main

    model = tmp_path / "ckpt"
    shutil.copytree(tiny("llama"), model)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()}
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    out = model / ("report" if cmd == "compare" else "map.png")
    args = [cmd, str(task), "--model", str(model), "--out", str(out)] + (["--arm", "none"] if cmd == "compare" else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0
    assert "must not be the input checkpoint or inside it" in res.output, res.output
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()} == before


@pytest.mark.parametrize("change, arm, message", [
    ({}, "x=lora layers=99", "arm x: layers '99': layer 99 does not exist"),
    ({}, "x=full roles=nonsense", "arm x: role 'nonsense': not a role of llama"),
    ({}, "x=lora lr=-1", "arm x: lr -1"),
    ({"efficacy": [], "generalisation": [], "specificity": [], "neutral": []}, "x=lora steps=1", "nothing to measure"),
])
def test_bad_arms_and_empty_tasks_are_refused_before_anything_runs(tiny, tmp_path, change, arm, message):
    from surgeon.cli import main

    task = tmp_path / "task.json"
    task.write_text(json.dumps({**TASK, **change}))
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["compare", str(task), "--model", str(tiny("llama")), "--out", str(out),
                                    "--arm", "none", "--arm", arm])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not out.exists()


NOOP = '''
import time


def edit(ck, seconds=0.0):
    time.sleep(seconds)
    print("noop edit done", flush=True)
'''


def test_a_trivial_arm_reports_its_own_peak_memory_not_the_parents(tiny, tmp_path):
    """Each arm's peak RSS is the child's own (VmHWM), not the high-water mark it inherits from a big parent."""
    from surgeon.study.compare import compare

    ballast = bytearray(1_200_000_000)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: the parent is now > 1.2 GB resident
    (tmp_path / "task.json").write_text(json.dumps(TASK))
    (tmp_path / "noop.py").write_text(NOOP)
    report = compare(tmp_path / "task.json", tiny("llama"), [f"noop=edit:{tmp_path / 'noop.py'}"],
                     tmp_path / "report", progress=False)
    peak = report["arms"][0]["cost"]["peak_rss_mb"]
    assert 50 < peak < 800, peak  # torch + transformers + a tiny model; the inherited value would be > 1200
    del ballast


def test_compare_streams_each_arms_progress_and_a_heartbeat_with_the_log_path(tiny, tmp_path, monkeypatch, capsys):
    from surgeon.study import compare as cmp_mod

    monkeypatch.setattr(cmp_mod, "HEARTBEAT_S", 0.5)
    (tmp_path / "task.json").write_text(json.dumps(TASK))
    (tmp_path / "noop.py").write_text(NOOP)
    cmp_mod.compare(tmp_path / "task.json", tiny("llama"), [f"slow=edit:{tmp_path / 'noop.py'} seconds=6"],
                    tmp_path / "report")
    err = capsys.readouterr().err
    assert "compare: arm 1/1 slow:" in err
    assert "slow | noop edit done" in err  # the child's own output, as it happens
    log = tmp_path / "report" / "arms" / "slow.log"
    assert "slow | still running" in err and str(log) in err  # a quiet child is reported, with where to look
    assert "compare: arm slow: made in" in err


def test_report_md_names_the_layers_that_layers_auto_resolved_to():
    from surgeon.study.report import markdown

    row = {"name": "located", "spec": "lora layers=auto", "error": None,
           "stages": [{"kind": "lora", "script": None, "params": {"layers": [11, 12, 13, 17], "layers_from": "auto"}}],
           "metrics": {"efficacy": 1.0}, "cost": {"wall_s": 1.0, "peak_rss_mb": 300, "params_changed": 5,
                                                  "bytes_written": 0, "notes": []}}
    md = markdown({"task": "t", "model": "/m", "arms": [row], "reading": "", "threads": 1,
                   "counts": {"efficacy": 1, "generalisation": 0, "specificity": 0, "neutral": 0, "train": 1}})
    assert "- `located`: `lora layers=auto` (layers=auto resolved to 11-13,17)" in md
