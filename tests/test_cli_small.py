"""Small things a new user meets: a cached fixture path without torch, an adapter that says why its
residual is not zero, a demo that says where its report is."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

import surgeon
import surgeon.fixtures
import surgeon.study.compare
from surgeon.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_fixture_prints_a_cached_path_without_importing_torch(smollm2):
    code = ("import sys\nfrom surgeon.cli import main\n"
            "try:\n    main(['fixture', 'smollm2'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SURGEON_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [str(smollm2), "no torch"]


def test_export_adapter_says_a_bf16_residual_is_the_edited_checkpoints_rounding(tiny, tmp_path):
    base = tiny("llama", dtype="bfloat16")
    ck = surgeon.open(base)
    w = ck["layers.0.mlp.down"]
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    dw = torch.outer(u, v) * (0.05 * w.norm() / (u.norm() * v.norm()))  # rank one, 5% of ‖W‖ (a ROME-sized edit)
    ck["layers.0.mlp.down"] = w + dw
    ck.save(tmp_path / "edited")
    res = CliRunner().invoke(main, ["export-adapter", str(tmp_path / "edited"), "--base", str(base),
                                    "--out", str(tmp_path / "adapter")])
    assert res.exit_code == 0, res.output
    print(res.output)
    line = next(ln for ln in res.output.splitlines() if "layers.0.mlp.down" in ln)
    residual = float(line.split("residual")[1].split()[0])
    assert "rank 1 " in line and 0.01 < residual < 0.1  # not zero: bf16 rounding of W + ΔW
    assert "note: 1 tensor(s) leave" in res.output and "rounding of EDITED's stored weights" in res.output
    help_text = CliRunner().invoke(main, ["export-adapter", "--help"]).output
    assert "~3% of ‖ΔW‖" in help_text and "exact for rank-one" not in help_text


def test_fact_edit_demo_prints_where_its_report_and_plot_are(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("fact_edit_run", ROOT / "examples" / "fact_edit" / "run.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    def fake_compare(task, model, arms, out, overwrite):
        out.mkdir(parents=True)
        (out / "report.md").write_text("| arm | efficacy |\n")

    monkeypatch.setattr(surgeon.study.compare, "compare", fake_compare)
    monkeypatch.setattr(surgeon.fixtures, "fixture", lambda name: tmp_path / name)
    monkeypatch.setattr(sys, "argv", ["run.py", "--out", str(tmp_path / "rep"), "--quick"])
    monkeypatch.chdir(tmp_path)  # the demo changes into the repository root; this puts the cwd back
    assert demo.main() == 0
    out = capsys.readouterr().out
    for name in ("report.md", "report.png", "report.json"):
        assert str(tmp_path / "rep" / name) in out, out
