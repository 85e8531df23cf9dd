"""Torch on a shared machine: every process surgeon starts waits passively in OpenMP.

Each check starts a real child process with the wait variables removed from its
environment and ``OMP_DISPLAY_ENV=VERBOSE``, so the OpenMP runtime prints, when
torch loads it, the settings it actually took: GNU OpenMP's spin count is 0
only if ``OMP_WAIT_POLICY=PASSIVE`` was in the environment before torch was
imported. The slowdown itself is measured by benches/bench_busy.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from surgeon._threads import WAIT_ENV, configure, quiet_waits, thread_count
from surgeon.study import compare


def bare_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_ENV}
    return {**env, "OMP_DISPLAY_ENV": "VERBOSE", "SURGEON_THREADS": "1", **extra}


def assert_passive(res: subprocess.CompletedProcess, seen: str) -> None:
    assert res.returncode == 0, res.stdout + res.stderr
    assert seen == "PASSIVE", seen
    if "GOMP_SPINCOUNT" in res.stderr:  # GNU OpenMP (torch's Linux wheels) says what it took at load
        assert "GOMP_SPINCOUNT = '0'" in res.stderr, [ln for ln in res.stderr.splitlines() if "SPIN" in ln]


def test_bare_environment_spins_so_the_checks_below_can_fail():
    res = subprocess.run([sys.executable, "-c", "import torch"], env=bare_env(), capture_output=True, text=True,
                         timeout=300)
    if "GOMP_SPINCOUNT" not in res.stderr:
        pytest.skip("torch's OpenMP runtime is not GNU OpenMP: it does not print its spin count")
    assert "GOMP_SPINCOUNT = '0'" not in res.stderr


def test_surgeon_apply_runs_its_script_with_passive_openmp_waits(tiny, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os\nfrom pathlib import Path\n\n\ndef edit(ck, path):\n"
                      "    ck['layers.0.mlp.down'] = ck['layers.0.mlp.down'] * 1.01  # torch is loaded by now\n"
                      "    Path(path).write_text(os.environ.get('OMP_WAIT_POLICY', 'unset'))\n")
    seen = tmp_path / "seen.txt"
    res = subprocess.run([sys.executable, "-m", "surgeon.cli", "apply", str(script), "--model", str(tiny("llama")),
                          "--dry-run", "--param", f"path={seen}"], env=bare_env(), capture_output=True, text=True,
                         timeout=300)
    assert_passive(res, seen.read_text() if seen.exists() else "no script run")


def test_compare_children_start_with_passive_openmp_waits(monkeypatch):
    for k in WAIT_ENV:
        monkeypatch.delenv(k, raising=False)
    env = {**compare._child_env(), "OMP_DISPLAY_ENV": "VERBOSE"}
    code = "import os, surgeon.study.arms; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"  # arms imports torch
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert_passive(res, res.stdout.strip())


def test_a_wait_policy_the_user_chose_is_kept_and_threads_follow_surgeon_threads(monkeypatch):
    env = {"OMP_WAIT_POLICY": "ACTIVE", "SURGEON_THREADS": "1"}
    assert quiet_waits(env)["OMP_WAIT_POLICY"] == "ACTIVE" and env["KMP_BLOCKTIME"] == "0"
    assert thread_count(env) == 1 and thread_count({}) == (os.cpu_count() or 1)
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("SURGEON_THREADS", "1")
    try:
        assert configure() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
