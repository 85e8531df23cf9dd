"""A Hugging Face cache snapshot opens as it is: its links into the repository's blobs/ are the checkpoint's own.

The hub cache stores each file once, ``models--ORG--NAME/blobs/SHA``, and a
snapshot ``models--ORG--NAME/snapshots/REV/`` holds relative links
``FILE -> ../../blobs/SHA``. The tiny Llama is laid out that way by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import surgeon
from surgeon.cli import main
from surgeon.errors import CheckpointError

SCALE = "def edit(ck):\n    ck['layers.0.mlp.down'] = ck['layers.0.mlp.down'] * 1.01\n"


def hub_layout(src: Path, cache: Path, repo: str = "models--tiny--llama", rev: str = "0123abcd") -> Path:
    """Copy checkpoint ``src`` into a hub-style cache under ``cache``; returns the snapshot directory."""
    blobs, snap = cache / repo / "blobs", cache / repo / "snapshots" / rev
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blobs / sha)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", sha))
    (cache / repo / "refs").mkdir()
    (cache / repo / "refs" / "main").write_text(rev)
    return snap


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SURGEON_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "surgeon.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture
def snapshot(tiny, tmp_path):
    return hub_layout(tiny("llama"), tmp_path / "hub")


def test_a_hub_snapshot_opens_without_a_flag_and_reads_the_same_tensors(snapshot, tiny):
    assert (snapshot / "model.safetensors").is_symlink()
    ck, plain = surgeon.open(snapshot), surgeon.open(tiny("llama"))
    assert (ck["layers.1.mlp.down"] == plain["layers.1.mlp.down"]).all()


def test_apply_on_a_hub_snapshot_saves_real_files_tokenizer_included(snapshot, tmp_path):
    (tmp_path / "scale.py").write_text(SCALE)
    res = cli("apply", str(tmp_path / "scale.py"), "--model", str(snapshot), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    names = {p.name for p in snapshot.iterdir()}
    out = tmp_path / "out"
    assert names <= {p.name for p in out.iterdir()}  # config, tokenizer, ...: copied, not left out as "external"
    assert not any(p.is_symlink() for p in out.iterdir())
    assert (surgeon.open(out)["layers.0.mlp.down"] != surgeon.open(snapshot)["layers.0.mlp.down"]).any()


def test_export_adapter_reads_a_hub_snapshot_as_its_base(snapshot, tmp_path):
    (tmp_path / "scale.py").write_text("def edit(ck):\n    w = ck['layers.0.mlp.down']\n"
                                       "    ck['layers.0.mlp.down'] = w + 0.1 * w[:, :1] @ w[:1, :]\n")
    made = cli("apply", str(tmp_path / "scale.py"), "--model", str(snapshot), "--out", str(tmp_path / "ed"))
    assert made.returncode == 0, made.stderr
    res = cli("export-adapter", str(tmp_path / "ed"), "--base", str(snapshot), "--out", str(tmp_path / "adapter"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_link_into_another_repository_or_outside_the_cache_is_still_refused(tiny, tmp_path):
    snap = hub_layout(tiny("llama"), tmp_path / "hub")
    other = hub_layout(tiny("llama"), tmp_path / "hub", repo="models--other--repo")
    shard = snap / "model.safetensors"
    shard.unlink()
    blob = Path(os.readlink(other / "model.safetensors")).name
    shard.symlink_to(Path("..", "..", "..", "models--other--repo", "blobs", blob))
    assert shard.resolve() == (other / "model.safetensors").resolve()  # a blob, but of another repository
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        surgeon.open(snap)
    assert surgeon.open(snap, allow_external_links=True)["layers.0.mlp.down"].shape


def test_every_command_that_opens_a_checkpoint_takes_allow_external_links():
    opens = {"inspect", "apply", "diff", "finetune", "compare", "locate", "export-adapter"}
    for name, cmd in main.commands.items():
        takes = {p.name for p in cmd.params if isinstance(p, (click.Option, click.Argument))}
        if name in opens:
            assert "allow_external_links" in takes, name
    assert opens <= set(main.commands)


TASK = {"name": "t", "efficacy": [{"prompt": "The cat sat on the", "target": " mat"}],
        "neutral": ["The library opens at nine in the morning."]}


@pytest.mark.parametrize("layout", ["hub", "external"])
def test_compare_runs_on_a_hub_snapshot_and_with_allow_external_links_in_its_arms(tiny, tmp_path, layout):
    from surgeon.study.compare import compare

    if layout == "hub":
        model, flag = hub_layout(tiny("llama"), tmp_path / "hub"), False
    else:  # a shard that lives elsewhere: refused unless asked, and then the arm's child must accept it too
        model, flag = tmp_path / "ckpt", True
        shutil.copytree(tiny("llama"), model)
        shutil.move(model / "model.safetensors", tmp_path / "elsewhere.safetensors")
        (model / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
        with pytest.raises(CheckpointError, match="outside the checkpoint"):
            compare(task_file(tmp_path), model, ["none"], tmp_path / "refused", progress=False)
    (tmp_path / "scale.py").write_text(SCALE)
    report = compare(task_file(tmp_path), model, ["none", f"scale=edit:{tmp_path / 'scale.py'}"], tmp_path / "report",
                     progress=False, allow_external_links=flag)
    assert [r["error"] for r in report["arms"]] == [None, None]
    assert report["arms"][1]["cost"]["tensors_changed"] == 1


def task_file(tmp_path: Path) -> Path:
    p = tmp_path / "task.json"
    p.write_text(json.dumps(TASK))
    return p
