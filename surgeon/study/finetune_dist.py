"""The fine-tune on several processes: torchrun runs :mod:`surgeon.study.train` on every rank, FSDP2 shards the model.

``finetune(..., FinetuneConfig(nproc=2))`` calls :func:`launch`, which writes
the job (checkpoint path, task, resolved config, role keys) to a temporary
folder and runs ``python -m torch.distributed.run --standalone
--nproc_per_node N -m surgeon.study.finetune_dist JOB``. Every rank then
(:func:`main`):

1. joins the process group (gloo on CPU, nccl with one GPU per rank);
2. builds the same model, LoRA initialisation and batch order from the same seed;
3. shards it with FSDP2: ``fully_shard`` on every decoder layer (the layer
   path from the role table), then on the root (embeddings, final norm, head);
4. trains with :func:`surgeon.study.train.train`, taking rows ``rank::N`` of
   every batch;
5. unshards one FSDP unit at a time to read each trained tensor's delta
   (:func:`surgeon.study.train.deltas`); rank 0 writes each to its own
   safetensors file.

Back in the caller, :meth:`Run.deltas` memory-maps those files one at a time
for :func:`surgeon.study.finetune.stage_deltas`, which adds them to the
checkpoint through the usual staging and streaming save.

Each rank builds the whole model before sharding it, so FSDP here divides the
gradients, optimiser state and activations, not the weights at load
(docs/scale.md says what that means for a 70B model).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from surgeon._threads import quiet_waits, thread_count
from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime import load
from surgeon.runtime_placement import default_device
from surgeon.study import train
from surgeon.study.config import FinetuneConfig, FinetuneError
from surgeon.study.cost import peak_rss_mb
from surgeon.study.task import Task


@dataclass
class Run:
    """What the ranks report back: the training figures and rank 0's delta files."""

    n_trainable: int
    losses: list[float]
    tokens: int
    train_s: float
    peak_mb: float  # the largest rank's own peak
    notes: list[str]
    files: list[Path] = field(default_factory=list)
    folder: tempfile.TemporaryDirectory | None = None

    def deltas(self):
        """(key, float32 delta) per trained tensor, read one file at a time; the folder goes at the end."""
        try:
            for f in self.files:
                with safe_open(f, "pt") as fh:
                    for k in fh.keys():
                        yield k, fh.get_tensor(k)
        finally:
            if self.folder is not None:
                self.folder.cleanup()


def launch(ck, task: Task, cfg: FinetuneConfig, keys: list[str], *, progress: bool = True) -> Run:
    """Run the fine-tune under torchrun with ``cfg.nproc`` processes; returns their :class:`Run`."""
    if ck.changed:
        raise FinetuneError(f"{ck.path}: nproc {cfg.nproc} trains from the files on disk, and this checkpoint has "
                            f"staged changes ({', '.join(ck.changed[:3])}); save them first and fine-tune the result")
    if min(cfg.batch, len(task.train)) < cfg.nproc:
        raise FinetuneError(f"task {task.name}: {len(task.train)} training examples, batch {cfg.batch}: fewer rows "
                            f"per step than the {cfg.nproc} processes that share them")
    folder = tempfile.TemporaryDirectory(prefix="surgeon-fsdp-")
    job = Path(folder.name)
    (job / "job.json").write_text(json.dumps({
        "checkpoint": str(ck.path), "allow_external_links": ck.allow_external_links,
        "task": task.to_dict(), "config": asdict(cfg), "keys": keys}))
    env = quiet_waits(dict(os.environ))
    each = str(max(1, thread_count(env) // cfg.nproc))  # the processes share the cores
    env.update(SURGEON_THREADS=each, OMP_NUM_THREADS=each)
    if progress:
        print(f"finetune: {cfg.nproc} processes under torchrun (FSDP2), {each} thread(s) each", file=sys.stderr)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
           "-m", "surgeon.study.finetune_dist", str(job)]
    with open(job / "log.txt", "wb") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        errors = sorted(job.glob("error-*.txt"))
        why = errors[0].read_text().strip() if errors else _last_line(job / "log.txt")
        folder.cleanup()
        raise FinetuneError(f"finetune with nproc {cfg.nproc} failed (torchrun exit {rc}): {why}")
    doc = json.loads((job / "result.json").read_text())
    return Run(doc["n_trainable"], doc["losses"], doc["tokens"], doc["train_s"], doc["peak_mb"], doc["notes"],
               sorted(job.glob("delta-*.safetensors")), folder)


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


# ----------------------------------------------------------------- one rank


def work(folder: Path, rank: int, world: int, device: str) -> None:
    """One rank's share: load, shard, train, and (rank 0) write the deltas and the figures."""
    doc = json.loads((folder / "job.json").read_text())
    ck = open_checkpoint(doc["checkpoint"], allow_external_links=doc["allow_external_links"])
    task = Task.from_dict(doc["task"])
    cfg = FinetuneConfig(**doc["config"]).resolved(ck.num_layers)
    keys, notes = doc["keys"], []

    torch.manual_seed(cfg.seed)  # the same model, LoRA initialisation and batches on every rank
    rt = load(ck, device=device, from_env=False)
    rows = train.encode(rt.tokenizer, task, cfg.max_length, notes)
    job = train.prepare(rt, ck, cfg, keys, notes)
    layers = [rt.layer(i) for i in range(rt.num_layers)]
    for layer in layers:
        fully_shard(layer)
    fully_shard(job.model)
    job.params = [p for p in job.train_model.parameters() if p.requires_grad]  # now the sharded parameters
    losses, tokens, train_s = train.train(rt, job, rows, cfg, False, rank=rank, world=world)

    def owner(key: str):
        m = re.match(r"layers\.(\d+)\.", key)
        return layers[int(m.group(1))] if m else job.model

    for n, (pkey, delta) in enumerate(train.deltas(job, keys, ck, owner)):
        if rank == 0:
            save_file({pkey: delta.contiguous()}, str(folder / f"delta-{n:05d}.safetensors"))
    peak = torch.tensor([peak_rss_mb()], device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        (folder / "result.json").write_text(json.dumps({
            "n_trainable": job.n_trainable, "losses": losses, "tokens": tokens, "train_s": train_s,
            "peak_mb": float(peak.item()), "notes": notes}))


def main(argv: list[str] | None = None) -> int:
    """torchrun's entry point: ``python -m surgeon.study.finetune_dist JOB_FOLDER`` on every rank."""
    job = Path((argv if argv is not None else sys.argv[1:])[0])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(thread_count())
    gpu = default_device().startswith("cuda") and torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu"
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if gpu else "gloo")
    try:
        work(job, rank, world, device)
    except Exception as e:  # the caller shows one line; torchrun stops the other ranks
        (job / f"error-{rank}.txt").write_text(f"rank {rank}: {type(e).__name__}: {e}".splitlines()[0])
        raise
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
