"""locate: gradient attribution and activation patching on SmolLM2, and the CLI that maps them."""

import json
import math
import re
from pathlib import Path

import pytest

from surgeon.study.locate import (
    LocateError,
    contiguous_range,
    locate,
    suggest_layers,
    suggested_layers,
)
from surgeon.study.task import Task

FACT = {
    "name": "eiffel-rome",
    "train": [{"prompt": "The Eiffel Tower is located in the city of", "completion": " Rome",
               "subject": "The Eiffel Tower"}],
    "efficacy": [{"prompt": "The Eiffel Tower is located in the city of", "target": " Rome", "original": " Paris"},
                 {"prompt": "The capital of France is the city of", "target": " Rome", "original": " Paris"}],
}

BRITISH = {
    "name": "en-gb",
    "train": [{"text": "The colour of the walls was grey, and the theatre was in the centre of town."},
              {"text": "We travelled to see our neighbours and their favourite harbour."}],
    "efficacy": [{"prompt": "The old man had a long beard that was", "target": " grey", "original": " gray"}],
    "spelling": {"rules": "en_gb", "prompts": ["My favourite"]},
}


@pytest.fixture(scope="module")
def rt(smollm2):
    from surgeon.runtime import load

    return load(smollm2)


@pytest.fixture(scope="module")
def fact_map(rt):
    """Patched at the last token (the pre-subject default), to compare with subject-position tracing."""
    return locate(rt, Task.from_dict(FACT), method="both", examples=1, corrupt="noise", position="last")


@pytest.fixture(scope="module")
def fact_subject_map(rt):
    """The defaults on the fact example's four landmarks: noise on the subject, restored at its last token."""
    task = Task.load(Path(__file__).parents[1] / "examples" / "fact_edit" / "report" / "task.json")
    return locate(rt, task, method="patch", examples=4)


def test_gradient_scores_are_non_negative_and_add_up_to_the_total(rt, fact_map):
    r = fact_map
    L = rt.num_layers
    assert r.num_layers == L == 30 and len(r.grad) == L
    assert r.roles == ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down",
                       "norm.pre_attn", "norm.pre_mlp"]
    cells = [v for row in r.grad for v in row]
    assert min(cells) >= 0 and max(cells) > 0
    # every parameter once: layer cells + embed (= the tied head) + final norm = |grad ⊙ W| over the model
    assert set(r.grad_top) == {"embed", "final_norm"}
    assert sum(cells) + sum(r.grad_top.values()) == pytest.approx(r.grad_total, rel=1e-6)
    a, b = (int(x) for x in r.suggested_by["grad"].split("-"))
    share = sum(sum(row) for row in r.grad[a:b + 1]) / sum(cells)
    assert share >= 0.5 and b - a + 1 < L


def test_restoring_the_last_residual_recovers_the_clean_run(rt, fact_map):
    """Causal tracing's sanity check: the last layer's residual at the last token decides the output."""
    r = fact_map
    L = rt.num_layers
    assert r.patch_mode == "noise" and r.patch_probes == 1 and len(r.patch) == L
    assert abs(r.patch_clean_p - r.patch_corrupt_p) > 1e-4  # the corruption did something
    assert r.patch[L - 1][0] == pytest.approx(1.0, abs=1e-3)
    assert r.patch_restored_p == pytest.approx(r.patch_clean_p, rel=1e-3)
    # the first layers' residual at the last token carries almost none of the subject's information
    assert abs(r.patch[0][0]) < 0.2


def test_fact_tasks_are_patched_at_the_subjects_last_token_where_the_early_layers_carry_the_fact(fact_map,
                                                                                                  fact_subject_map):
    """Causal tracing's early site (Meng et al. 2022): restored at the subject's last token, the MLP/attention
    recovery sits in the early and middle layers (ROME edits layer 6 here); at the last token only at the top."""
    r = fact_subject_map
    assert r.patch_mode == "noise" and r.patch_position == "subject" and r.patch_probes == 4
    assert [(w["kind"], w["token"], w["index"]) for w in r.patch_positions] == \
        [("subject", " Tower", 3), ("subject", "um", 3), ("subject", " House", 3), ("subject", "ropolis", 2)]
    a_subj, b_subj = (int(x) for x in r.suggested_by["patch"].split("-"))
    a_last, _ = (int(x) for x in fact_map.suggested_by["patch"].split("-"))
    assert a_subj < 15 <= a_last, (r.suggested_by, fact_map.suggested_by)
    # the subject's state carries the answer through the middle layers and no longer matters at the top
    residual = [row[0] for row in r.patch]
    assert max(residual[:15]) > 0.3 and abs(residual[-1]) < 0.05
    doc = r.to_dict()["patch"]
    assert doc["layers"] == r.suggested_by["patch"] and doc["position"] == "subject"
    assert doc["positions"][0]["subject"] == "The Eiffel Tower"


def test_text_map_has_a_legend_each_methods_range_and_the_positions(fact_map, fact_subject_map):
    text = fact_map.text()
    assert "legend: gradient cells" in text and "legend: patching" in text and "▶ = suggested layers" in text
    assert f"layers by gradient attribution: {fact_map.suggested_by['grad']}" in text
    assert f"layers by activation patching (noise, at the last token): {fact_map.suggested_by['patch']}" in text
    assert "' of' (token 9 of 10): the last token of 'The Eiffel Tower is located" in text
    assert f"suggested layers: {fact_map.suggested_layers} " in text
    sub = fact_subject_map.text()
    assert "restored at the subject's last token" in sub
    assert "' Tower' (token 3 of 10): the last token of the subject 'The Eiffel Tower' in" in sub


def test_contrast_patching_traces_the_spelling_convention(rt):
    r = locate(rt, Task.from_dict(BRITISH), method="patch", examples=1)
    assert r.patch_mode == "contrast" and r.patch_position == "last" and r.grad is None
    assert r.patch_clean_p > r.patch_corrupt_p  # British context makes " grey" likelier
    assert r.patch[-1][0] == pytest.approx(1.0, abs=1e-3)
    assert all(math.isfinite(v) for row in r.patch for v in row)
    assert set(r.suggested_by) == {"patch"}
    assert len(r.profile) == rt.num_layers and sum(r.profile) == pytest.approx(1.0)
    a, b = r.suggested
    assert sum(r.profile[a:b + 1]) >= 0.5


def test_contiguous_range_is_the_shortest_window_holding_the_mass():
    assert contiguous_range([0, 0, 5, 4, 0, 1], 0.5) == (2, 2)
    assert contiguous_range([0, 0, 5, 4, 0, 1], 0.8) == (2, 3)
    assert contiguous_range([1, 1, 1, 1], 1.0) == (0, 3)
    assert contiguous_range([0, 0, 0], 0.5) == (0, 2)


def test_locate_refuses_a_task_without_probes(rt):
    with pytest.raises(LocateError, match="needs efficacy probes"):
        locate(rt, Task.from_dict({"name": "empty", "train": [{"text": "just text"}]}), method="grad")


def test_cli_prints_the_map_and_writes_png_and_json(smollm2, tmp_path):
    from click.testing import CliRunner

    from surgeon.cli import main

    task = tmp_path / "task.json"
    task.write_text(json.dumps(FACT))
    out = tmp_path / "map.png"
    res = CliRunner().invoke(main, ["locate", str(task), "--model", str(smollm2), "--out", str(out),
                                    "--examples", "1", "--method", "grad"])
    assert res.exit_code == 0, res.output
    m = re.search(r"suggested layers: (\d+)-(\d+)", res.output)
    assert m and int(m.group(1)) <= int(m.group(2)) < 30
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    doc = json.loads((tmp_path / "map.json").read_text())
    assert doc["suggested_layers"] == f"{m.group(1)}-{m.group(2)}" == suggested_layers(tmp_path / "map.json")
    assert suggest_layers(smollm2, Task.from_dict(FACT), str(tmp_path / "map.json")) == \
        list(range(int(m.group(1)), int(m.group(2)) + 1))
    assert len(doc["grad"]["matrix"]) == 30


def test_one_token_prompts_are_skipped_by_noise_patching_with_a_reason(rt):
    """Noise corrupts the tokens before the last; a one-token prompt has none (it crashed once)."""
    hi = Task.from_dict({"name": "hi", "train": [{"prompt": "Hi", "completion": " there"}],
                         "efficacy": [{"prompt": "Hi", "target": " there"}]})
    with pytest.raises(LocateError, match="1 probe.*one-token prompt has nothing to corrupt"):
        locate(rt, hi, method="patch", corrupt="noise", examples=1)
    with pytest.raises(LocateError, match="examples 0"):
        locate(rt, hi, method="grad", examples=0)


def test_cli_refuses_a_heatmap_format_it_cannot_write_before_any_work(smollm2, tmp_path):
    from click.testing import CliRunner

    from surgeon.cli import main

    task = tmp_path / "task.json"
    task.write_text(json.dumps(FACT))
    res = CliRunner().invoke(main, ["locate", str(task), "--model", str(smollm2), "--out", str(tmp_path / "map.txt")])
    assert res.exit_code == 2 and "written as .png, .pdf or .svg" in res.output, res.output
    assert list(tmp_path.iterdir()) == [task]


def test_cli_passes_the_patching_position_and_refuses_subject_with_contrast_before_loading(smollm2, tmp_path):
    from click.testing import CliRunner

    from surgeon.cli import main

    task = tmp_path / "task.json"
    task.write_text(json.dumps(BRITISH))
    res = CliRunner().invoke(main, ["locate", str(task), "--model", str(smollm2), "--out", str(tmp_path / "m.png"),
                                    "--corrupt", "contrast", "--position", "subject"])
    assert res.exit_code == 2 and "position 'subject'" in res.output and "noise" in res.output, res.output
    assert list(tmp_path.iterdir()) == [task]
