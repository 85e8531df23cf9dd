"""SIGKILL at random moments during ``surgeon apply``: the output is absent or complete, never torn.

SmolLM2 re-sharded into 4 shards; the edit scales ``mlp.down`` in three
layers (three shards patched in a kernel copy) and adds a bias (one shard
rewritten with a new layout), saved over the previous output with
``--overwrite`` (every other run starts without one). A launcher process
imports surgeon once and forks one run per save, so the 50 kills land in the edit and the save rather than in Python's
start-up; it kills its own (unreaped) child, so no pid can be reused in between.

After every kill the output directory must be absent or complete: it opens,
every tensor's sha256 matches the input or the manifest, and (a few times)
transformers loads it. Temporary directories left by killed runs must not
break the next run, which removes them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reshard import reshard

import surgeon
from surgeon.io.atomic import TMP_MARK
from surgeon.io.shards import sha256_range

RUNS = 50
SEED = 20261129
LAYERS = (3, 14, 27)

EDIT = f"""
import torch

def edit(ck):
    for layer in {LAYERS}:
        key = f"layers.{{layer}}.mlp.down"
        ck[key] = ck[key] * 1.01
    ck.add("layers.20.attn.o.bias", torch.full((ck.shape("layers.20.attn.o")[0],), 0.01))
"""

LAUNCHER = r"""
import json, os, signal, sys, time
from surgeon.cli import main
import surgeon.edits.apply, surgeon.io.save, surgeon.io.diff, surgeon.roles.summary  # imported once, before the forks
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the pipe carries the launcher's reports only
        code = 0
        try:
            main(job["args"], prog_name="surgeon")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        os._exit(code)
    if job["kill_after"] is not None:
        time.sleep(job["kill_after"])
        os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid cannot belong to anyone else
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status, "elapsed": time.perf_counter() - t0}), flush=True)
"""


class Launcher:
    def __init__(self):
        env = {**os.environ, "SURGEON_THREADS": "1"}
        env.pop("SURGEON_DEBUG", None)
        self.p = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=env)

    def run(self, args: list[str], kill_after: float | None) -> tuple[bool, float]:
        """(was killed, seconds since the fork)."""
        self.p.stdin.write(json.dumps({"args": args, "kill_after": kill_after}) + "\n")
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        killed = os.WIFSIGNALED(r["status"]) and os.WTERMSIG(r["status"]) == signal.SIGKILL
        if not killed:
            assert os.WIFEXITED(r["status"]) and os.WEXITSTATUS(r["status"]) == 0, r
        return killed, r["elapsed"]

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, smollm2):
    return reshard(smollm2, tmp_path_factory.mktemp("torn") / "smollm2-4", 4)


def expected_hashes(src: Path, manifest: dict) -> dict[str, str]:
    """sha256 of every tensor a complete output must hold: the input's, or the manifest's new one."""
    ck = surgeon.open(src)
    want = {name: sha256_range(str(src / e.file), e.start, e.end) for name, e in ck.entries.items()}
    for t in manifest["tensors"]:
        want[t["name"]] = t["new_sha256"]
    return want


def check_complete(out: Path, want: dict[str, str], changed: set[str]) -> None:
    """The output opens and holds exactly the expected tensors, byte for byte, and says what changed."""
    ck = surgeon.open(out)
    got = {name: sha256_range(str(out / e.file), e.start, e.end) for name, e in ck.entries.items()}
    assert got == want
    manifest = json.loads((out / "surgeon.json").read_text())
    assert {t["name"] for t in manifest["tensors"]} == changed


def load_with_transformers(out: Path) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()  # the added o_proj.bias is reported as unexpected: Llama has no slot for it
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    ck = surgeon.open(out)
    assert torch.equal(model.model.layers[14].mlp.down_proj.weight, ck.get("layers.14.mlp.down", dtype=None))
    del model


def test_sigkill_during_apply_leaves_the_output_absent_or_complete(sharded, tmp_path):
    script = tmp_path / "edit.py"
    script.write_text(EDIT)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "edited"
    args = ["apply", str(script), "--model", str(sharded), "--out", str(out), "--overwrite"]
    launcher = Launcher()
    try:
        # a clean run: the reference hashes, and how long a run takes from the fork
        durations = [launcher.run(args, None)[1]]
        manifest = json.loads((out / "surgeon.json").read_text())
        assert manifest["files"]["patched"] and manifest["files"]["rewritten"]
        want = expected_hashes(sharded, manifest)
        changed = {t["name"] for t in manifest["tensors"]}
        assert len(changed) == len(LAYERS) + 1
        check_complete(out, want, changed)

        rng = random.Random(SEED)
        outcomes = {"absent": 0, "complete (old)": 0, "complete (new)": 0}
        left_tmp = tmp_seen_cleaned = loads = 0
        verified = os.stat(out).st_ino
        for i in range(RUNS):
            if i % 5 == 4:  # re-time a clean run now and then: the machine's load changes, the kills follow it
                killed, took = launcher.run(args, None)
                durations.append(took)
                check_complete(out, want, changed)
                verified = os.stat(out).st_ino
            if i % 2:  # odd runs start without an output, even runs replace the one there
                shutil.rmtree(out, ignore_errors=True)
            span = statistics.median(durations[-3:])
            stale_before = {p for p in work.iterdir() if TMP_MARK in p.name}
            launcher.run(args, rng.uniform(0.02, span * 1.1))
            stale_after = {p for p in work.iterdir() if TMP_MARK in p.name}
            left_tmp += bool(stale_after - stale_before)
            tmp_seen_cleaned += bool(stale_before - stale_after)
            assert len(stale_after) <= 2, stale_after  # leftovers are removed, they do not pile up
            if not out.exists():
                outcomes["absent"] += 1
                continue
            ino = os.stat(out).st_ino
            outcomes["complete (old)" if ino == verified else "complete (new)"] += 1
            if ino != verified:
                check_complete(out, want, changed)
                verified = ino
            if loads < 3 and i >= 12 * loads:
                load_with_transformers(out)
                loads += 1
        # a last run, never killed, succeeds beside whatever the kills left and cleans it up
        assert not launcher.run(args, None)[0]
        check_complete(out, want, changed)
        assert [p for p in work.iterdir() if TMP_MARK in p.name] == []
    finally:
        launcher.close()
    print(f"\n{RUNS} kills (seed {SEED}, uniform over 0.02 s .. 1.1 x a clean run's {span:.2f} s): {outcomes}; "
          f"{left_tmp} left a temporary directory, {tmp_seen_cleaned} runs removed earlier leftovers, "
          f"{loads} outputs present after a kill loaded with transformers")
    assert sum(outcomes.values()) == RUNS
    assert left_tmp >= 10, "too few kills landed inside the save to mean anything"
    assert tmp_seen_cleaned >= 1 and loads >= 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_overwrite_exchanges_the_directories_in_one_step(tiny, tmp_path, monkeypatch):
    """--overwrite never renames the old output away first (the window where it would be absent)."""
    import surgeon.io.atomic as save_mod

    out = tmp_path / "out"
    ck = surgeon.open(tiny("llama"))
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 2
    ck.save(out)
    first = os.stat(out).st_ino
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(save_mod.os, "rename", lambda a, b: (renames.append((a, b)), real_rename(a, b)))
    ck["layers.0.mlp.down"] = ck["layers.0.mlp.down"] * 2
    ck.save(out, overwrite=True)
    assert renames == [] and os.stat(out).st_ino != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old output, swapped out, is deleted
    assert torch.equal(surgeon.open(out)["layers.0.mlp.down"], ck["layers.0.mlp.down"])
