"""Budgeted tuning: knobs declared once, Optuna on validation only, fronts and matched-KL picks, report on test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from surgeon.study import measure
from surgeon.study.arms import CompareError, parse_arm
from surgeon.study.map import entry, markdown
from surgeon.study.search import KNOBS, Trial, front, knobs_of, matched, script_knobs, spec_text, suggest, with_params
from surgeon.study.task import Task
from surgeon.study.tuned import compare_tuned

TASK = {
    "name": "eiffel",
    "train": [{"prompt": "The Eiffel Tower is located in the city of", "completion": " Rome",
               "subject": "The Eiffel Tower"}],
    "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"}],
    "generalisation": [{"prompt": "Where is the Eiffel Tower? It is in", "target": " Rome", "original": " Paris"}],
    "specificity": [{"prompt": "The Louvre is located in the city of", "target": " Rome", "original": " Paris"}],
    "neutral": ["The library opens at nine in the morning and closes at six in the evening on weekdays."],
    "validation": {
        "generalisation": [{"prompt": "The Eiffel Tower can be found in the city of", "target": " Rome",
                            "original": " Paris"}],
        "specificity": ["The capital of Spain is"],
        "neutral": ["Rain is expected across the north of the country tomorrow, clearing by the afternoon."],
    },
}


def test_pinned_parameters_are_not_searched_and_edit_scripts_declare_their_knobs(tmp_path):
    assert set(knobs_of(parse_arm("l=lora"))) == set(KNOBS["lora"])
    assert set(knobs_of(parse_arm("l=lora layers=0-6 rank=8"))) == {"lr", "steps"}
    # the head and the embedding sit in no layer: a layer range would be a knob that changes nothing
    assert set(knobs_of(parse_arm("h=lora roles=lm_head"))) == set(KNOBS["lora"]) - {"layers"}
    assert "layers" not in knobs_of(parse_arm("e=full roles=embed+final_norm"))
    assert "layers" in knobs_of(parse_arm("m=lora roles=attn+lm_head"))
    script = tmp_path / "arm.py"
    script.write_text('KNOBS = {"layer": ["int", 1, 15], "clamp": ["log", 0.5, 8.0]}\n\n'
                      'def edit(ck, layer=6):\n    pass\n')
    assert script_knobs(script) == {"layer": ["int", 1, 15], "clamp": ["log", 0.5, 8.0]}
    both = knobs_of(parse_arm(f"x=edit:{script} clamp=2 + full roles=mlp.down"))
    assert set(both) == {"s0.layer", "s1.layers", "s1.lr", "s1.max_delta", "s1.steps"}
    script.write_text('KNOBS = {"layer": ["int", 9]}\n')
    with pytest.raises(CompareError, match=re.escape("knob layer spec ['int', 9]")):
        knobs_of(parse_arm(f"x=edit:{script}"))


def test_suggested_values_fit_the_model_and_the_spec_parses_back():
    arm = parse_arm("l=lora roles=attn")
    knobs = knobs_of(arm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        v = suggest(study.ask(), knobs, num_layers=30)
        a, _, b = v["layers"].partition("-")
        first, last = int(a), int(b or a)
        assert 0 <= first <= last < 30 and 1 <= last - first + 1 <= 8
        assert 1e-4 <= v["lr"] <= 3e-3 and v["rank"] in (2, 4, 8, 16) and v["steps"] % 10 == 0
        made = with_params(arm, knobs, v, "l.t0")
        assert parse_arm(f"l.t0={made.spec}").stages == made.stages  # the spec says exactly what runs
    assert spec_text(parse_arm("x=full layers=6 lr=5e-4").stages) == "full layers=6 lr=0.0005"


def test_front_and_matched_picks_use_validation_numbers_only():
    trials = [Trial(0, "", {}, 0.9, 0.30), Trial(1, "", {}, 0.8, 0.04), Trial(2, "", {}, 0.5, 0.005),
              Trial(3, "", {}, 0.4, 0.04), Trial(4, "", {}, 0.5, 0.009), Trial(5, "", {}, error="boom")]
    assert [t.number for t in front(trials)] == [2, 1, 0]  # 3 and 4 are dominated, 5 failed
    picks = matched(trials)
    assert {lvl: t.number for lvl, t in picks.items()} == {0.01: 2, 0.05: 1, 0.2: 1}
    assert matched(trials[:1])[0.05] is None  # nothing that low: the table says so


def test_budgeted_compare_refuses_a_task_without_validation(tmp_path):
    old = {k: v for k, v in TASK.items() if k != "validation"}
    with pytest.raises(CompareError, match="never on test.*no validation split"):
        compare_tuned(Task.from_dict(old), tmp_path / "model", ["l=lora"], tmp_path / "out", budget=2)


def test_two_trial_search_tunes_on_validation_and_reports_on_test(smollm2, tmp_path, monkeypatch):
    """End to end on SmolLM2; every measurement before the search's last result is on validation probes."""
    task = Task.from_dict(TASK)
    test_prompts = task.split("test").prompts()
    events = []
    real_measure, real_reference, real_tell = measure.measure, measure.reference, optuna.study.Study.tell

    def spy_measure(changed, t, ref, **kw):
        events.append(("measure", t.prompts()))
        return real_measure(changed, t, ref, **kw)

    def spy_reference(original, t, **kw):
        events.append(("reference", t.prompts()))
        return real_reference(original, t, **kw)

    def spy_tell(self, *a, **kw):
        events.append(("tell", set()))
        return real_tell(self, *a, **kw)

    monkeypatch.setattr(measure, "measure", spy_measure)
    monkeypatch.setattr(measure, "reference", spy_reference)
    monkeypatch.setattr(optuna.study.Study, "tell", spy_tell)
    out = tmp_path / "report"
    report = compare_tuned(task, smollm2, ["none", "lora=lora layers=3 roles=attn.q+attn.v rank=2 steps=3"], out,
                           budget=2, seeds=1)

    last_tell = max(i for i, (e, _) in enumerate(events) if e == "tell")
    assert sum(e == "tell" for e, _ in events) == 2
    assert all(not (p & test_prompts) for _, p in events[:last_tell])  # the tuned knob never saw a test probe
    assert any(p & test_prompts for _, p in events[last_tell:])  # the test split is measured afterwards
    jobs = {j.name: json.loads(j.read_text())["task"] for j in (out / "arms").glob("*.job.json")}
    trials = {n for n in jobs if re.fullmatch(r"lora\.t\d\.job\.json", n)}
    assert len(trials) == 2 and all(jobs[n].endswith("task.validation.json") for n in trials)
    assert all(jobs[n].endswith("task.test.json") for n in set(jobs) - trials)  # the test phase's remakes
    assert not any(p in (out / "task.validation.json").read_text() for p in test_prompts)  # what trials read

    fam = report["search"]["lora"]
    assert len(fam["trials"]) == 2 and set(fam["knobs"]) == {"lr"}
    assert all(t["error"] is None and t["metrics"]["kl"] > 0 for t in fam["trials"])
    assert fam["wall_s"] > 0 and fam["peak_rss_mb"] > 200
    assert set(fam["test"]) >= {str(n) for n in fam["front"]}
    rows = [r for r in report["arms"] if r["name"] != "none"]
    assert rows and all(r["family"] == "lora" and r["chosen_for"] for r in rows)
    assert all(r["metrics"]["generalisation_gen"] is not None for r in report["arms"])
    md = (out / "report.md").read_text()
    assert "Matched damage" in md and "| lora |" in md and "Wilson" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_families_tuned_side_by_side_give_the_numbers_of_one_at_a_time(smollm2, tmp_path, monkeypatch):
    """``jobs=2``: two families in two worker processes of one thread each; trials, test points and the
    unedited row are those of the same comparison run one family after the other on one thread."""
    import torch

    arms = ["none", "q=lora layers=3 roles=attn.q rank=2 steps=2 lr=0.003",
            "v=lora layers=5 roles=attn.v rank=2 steps=2 lr=0.003"]
    task = Task.from_dict(TASK)
    monkeypatch.setenv("SURGEON_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = compare_tuned(task, smollm2, arms, tmp_path / "one", budget=1, seeds=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("SURGEON_THREADS", "2")
    two = compare_tuned(task, smollm2, arms, tmp_path / "two", budget=1, seeds=1, progress=False, jobs=2)
    assert (one["jobs"], two["jobs"]) == (1, 2) and two["threads"] == 2
    for rep in (one, two):
        assert [r["name"] for r in rep["arms"]] == ["none", "q.t0", "v.t0"]
        assert all(r["error"] is None for r in rep["arms"])
    for fam in ("q", "v"):
        a, b = one["search"][fam], two["search"][fam]
        assert [t["metrics"] for t in a["trials"]] == [t["metrics"] for t in b["trials"]]
        assert a["test"] == b["test"] and a["matched"] == b["matched"]
    assert one["arms"][0]["metrics"] == two["arms"][0]["metrics"]
    # each worker's arm children ran on SURGEON_THREADS // jobs threads
    made = [t["cost"] for f in two["search"].values() for t in f["trials"]]
    assert [c["threads"] for c in made] == [1, 1]


def _family(success_at: dict, spec: str) -> dict:
    """A tuned report's family with one chosen trial per KL level (test means as given)."""
    trials = [{"number": i, "spec": f"{spec} t{i}"} for i in range(len(success_at))]
    return {"trials": trials, "matched": {str(lvl): i for i, lvl in enumerate(success_at)},
            "seeds": {str(i): {"success_mean": v, "success_sd": 0.0, "kl_mean": lvl / 2}
                      for i, (lvl, v) in enumerate(success_at.items())}}


def test_map_row_names_the_best_site_the_runner_up_and_judges_the_advice():
    report = {"search": {"rome": _family({0.01: 0.9, 0.05: 0.95}, "edit:rome.py layer=5"),
                         "lora": _family({0.05: 0.6}, "lora layers=0-6")}}
    task = Task.from_dict({**TASK, "map": {"behaviour": "facts", "advice": "mid-layer MLPs", "advice_arm": "rome"}})
    row = entry(report, task)
    assert row["best"]["family"] == "rome" and row["best"]["site"] == "edit:rome.py layer=5 t1"
    assert row["runner_up"]["family"] == "lora" and row["verdict"].startswith("advice holds")
    wrong = Task.from_dict({**TASK, "map": {"behaviour": "facts", "advice": "LoRA early", "advice_arm": "lora"}})
    assert entry(report, wrong)["verdict"] == "advice fails by 0.35 (lora 0.60, rome 0.95)"
    md = markdown([row])
    assert "| facts | – | mid-layer MLPs | `edit:rome.py layer=5 t1` | 0.95 | lora 0.60 | advice holds" in md
    at_chance = {**report, "arms": [{"name": "none", "metrics": {"generalisation_gen": 0.93}}]}
    assert entry(at_chance, task)["verdict"].startswith("nothing beats the unedited model (0.93; best rome 0.95)")
    # nothing works at the map's level, a row edit does at a looser one: the verdict says so
    swap = {"search": {"head": _family({0.05: 0.01}, "lora roles=lm_head"), "rows": _family({0.2: 1.0}, "edit:rows")},
            "arms": [{"name": "none", "metrics": {"generalisation_gen": 0.0}}]}
    said = entry(swap, task)["verdict"]
    assert said == ("nothing beats the unedited model (0.00; best head 0.01): the advice is not tested; "
                    "at KL ≤ 0.2: rows 1.00 (KL 0.100)")
    assert "at KL ≤" not in entry(at_chance, task)["verdict"]  # no looser level beats 0.93 by more than the tie
    with pytest.raises(Exception, match="map: unknown key"):
        Task.from_dict({**TASK, "map": {"advise": "x"}})


def test_map_reads_back_finished_reports_and_runs_each_task_on_its_own_model(tmp_path, smollm2, monkeypatch):
    """A map that stopped resumes: a task whose report exists for the same model, budget and seeds is read,
    not run; a task's map entry picks its model (a fixture name) over --model."""
    from surgeon.study import map as map_mod

    task = Task.from_dict({**TASK, "name": "facts", "map": {"behaviour": "facts", "advice": "mid-layer MLPs",
                                                            "advice_arm": "rome", "model": "smollm2"}})
    assert map_mod.task_model(task, "/elsewhere") == Path(smollm2)
    bare = Task.from_dict({**TASK, "name": "bare"})
    assert map_mod.task_model(bare, tmp_path) == tmp_path.absolute()
    with pytest.raises(Exception, match="names no model and no --model"):
        map_mod.task_model(bare, None)
    report = {"model": str(Path(smollm2)), "budget": 2, "seeds": 1,
              "search": {"rome": _family({0.05: 0.9}, "edit:rome.py layer=5")}}
    (tmp_path / "facts").mkdir()
    (tmp_path / "facts" / "report.json").write_text(json.dumps(report))
    ran = []
    monkeypatch.setattr(map_mod, "compare_tuned", lambda *a, **k: ran.append((a, k)) or report)
    rows = map_mod.run_map(None, [task], tmp_path, budget=2, seeds=1, progress=False)
    assert not ran and rows[0]["best"]["family"] == "rome" and rows[0]["model"] == Path(smollm2).name
    map_mod.run_map(None, [task], tmp_path, budget=3, seeds=1, progress=False, jobs=2)  # another budget: run again
    assert len(ran) == 1 and ran[0][0][1] == Path(smollm2) and ran[0][1]["jobs"] == 2
    assert "| facts | " + Path(smollm2).name + " |" in (tmp_path / "map.md").read_text()


def test_jobs_is_for_the_budgeted_comparison_only(tmp_path):
    from click.testing import CliRunner

    from surgeon.cli import main

    (tmp_path / "task.json").write_text(json.dumps(TASK))
    args = ["compare", str(tmp_path / "task.json"), "--model", str(tmp_path), "--arm", "none", "--out",
            str(tmp_path / "out")]
    res = CliRunner().invoke(main, args + ["--jobs", "2"])
    assert res.exit_code == 2 and "--jobs tunes families side by side: it needs --budget" in res.output
    res = CliRunner().invoke(main, args + ["--budget", "2", "--jobs", "0"])
    assert res.exit_code == 2 and "--jobs" in res.output
    with pytest.raises(CompareError, match=r"jobs \(0\) must be at least 1"):
        compare_tuned(Task.from_dict(TASK), tmp_path, ["l=lora"], tmp_path / "out", budget=2, jobs=0)
    assert not (tmp_path / "out").exists()
