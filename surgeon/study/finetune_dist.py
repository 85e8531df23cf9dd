"""The fine-tune on several processes: torchrun runs :mod:`surgeon.study.train` on every rank, FSDP2 shards the model.

``finetune(..., FinetuneConfig(nproc=2))`` calls :func:`launch`, which writes
the job (checkpoint path, task, resolved config, role keys) to a temporary
folder and runs ``python -m torch.distributed.run --standalone
--nproc_per_node N -m surgeon.study.finetune_dist JOB``. Every rank then
(:func:`main`):

1. joins the process group (gloo on CPU, nccl with one GPU per rank);
2. every rank builds the model on the meta device (modules and shapes, no
   weights; the buffers the files do not hold, such as rotary tables, are
   computed as ``from_pretrained`` computes them) and wraps it in LoRA;
3. shards it with FSDP2: ``fully_shard`` on every decoder layer (the layer
   path from the role table), then on the root (embeddings, final norm, head);
   then each rank fills its shards itself (:func:`read_shards`): every tensor
   is read from the files in turn and the rank keeps its rows, and LoRA's A
   factors are drawn from the seed and the parameter's name
   (:func:`surgeon.study.train.lora_start`, as one process draws them), so
   nothing is sent. Where transformers converts tensors on loading (fused MoE
   experts), parameters are not the files' tensors one to one: rank 0 then
   loads the model and sends every tensor in turn
   (``set_model_state_dict(..., broadcast_from_rank0=True)``);
4. trains with :func:`surgeon.study.train.train`, taking rows ``rank::N`` of
   every batch;
5. unshards one FSDP unit at a time to read each trained tensor's delta
   (:func:`surgeon.study.train.deltas`); rank 0 writes each to its own
   safetensors file.

Back in the caller, :func:`surgeon.study.finetune.stage_deltas` stages each
tensor as base + delta *deferred*: the checkpoint holds the file's name, and
the streaming save makes each tensor from the input and its delta file when
it writes it, one at a time. The job folder lives until the last such value
is dropped.

No rank holds the whole model: each holds its shards plus the one tensor it is
reading (float32), so FSDP divides the weights on every rank (except on the
rank-0 fallback above; docs/scale.md says what that means for a 70B model).

On CPU every rank also hands freed heap pages back to the system every few
layers (:func:`release_heap_every`): FSDP2 gathers each layer into fresh
buffers and frees them after use, and glibc keeps those pages, so without it
each rank's RSS grew to 2.7-3.1 GB during training on SmolLM2 (one process:
1.4 GB); with it the ranks stay at or near rank 0's load peak (1.18-1.33 GB),
for 15-20 % more time. A 2-process LoRA run on SmolLM2 now peaks at 1.0-1.15 GB per
rank (one process: 1.18 GB).
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
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import fully_shard

from surgeon._heap import trimmer
from surgeon._threads import quiet_waits, thread_count
from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime import Runtime, load
from surgeon.runtime.placement import auto_class, default_device
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
    peaks_mb: list[float] = field(default_factory=list)  # each rank's, in rank order
    files: list[Path] = field(default_factory=list)
    # holds the files; finetune.stage_deltas keeps it while the checkpoint's deferred values read from them
    folder: tempfile.TemporaryDirectory | None = None


RETRIES = 1  # a launch that died outside every rank's Python (rendezvous, a signal) is run once more


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
    retried = []
    for attempt in range(1 + RETRIES):
        with open(job / "log.txt", "wb") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc == 0:
            break
        errors = sorted(job.glob("error-*.txt"))
        why = errors[0].read_text().strip() if errors else _cause(job / "log.txt")
        if errors or attempt == RETRIES:  # a rank raised (the same data would raise again), or out of tries
            folder.cleanup()
            raise FinetuneError(f"finetune with nproc {cfg.nproc} failed (torchrun exit {rc}): {why}")
        retried.append(f"torchrun failed before any rank raised (exit {rc}: {why}); ran it again")
        for f in job.glob("delta-*.safetensors"):
            f.unlink()
    doc = json.loads((job / "result.json").read_text())
    peaks = ", ".join(f"{p:,.0f}" for p in doc["peaks_mb"])
    notes = retried + doc["notes"] + [f"peak RSS per rank (MB): {peaks}"]
    return Run(doc["n_trainable"], doc["losses"], doc["tokens"], doc["train_s"], doc["peak_mb"], notes,
               doc["peaks_mb"], sorted(job.glob("delta-*.safetensors")), folder)


def _cause(log: Path) -> str:
    """One line from torchrun's log: its root-cause summary (rank, exit code, traceback or signal), else the
    last Python exception line, else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    if "Root Cause (first observed failure):" in lines:
        summary = lines[lines.index("Root Cause (first observed failure):") + 1:]
        fields = dict(re.match(r"(\w+)\s*:\s*(.*)", ln).groups() for ln in summary if re.match(r"\w+\s*:", ln))
        if fields:
            return "; ".join(f"{k} {fields[k]}" for k in ("rank", "exitcode", "traceback") if k in fields)
    raised = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|Interrupt)\b.*", ln)]
    return raised[-1] if raised else (lines[-1] if lines else "no output")


# ----------------------------------------------------------------- one rank


def work(folder: Path, rank: int, world: int, device: str) -> None:
    """One rank's share: load, shard, train, and (rank 0) write the deltas and the figures."""
    doc = json.loads((folder / "job.json").read_text())
    ck = open_checkpoint(doc["checkpoint"], allow_external_links=doc["allow_external_links"])
    task = Task.from_dict(doc["task"])
    cfg = FinetuneConfig(**doc["config"]).resolved(ck.num_layers)
    keys, notes = doc["keys"], []

    torch.manual_seed(cfg.seed)
    rt = _skeleton(ck)  # every rank: modules and shapes on the meta device, buffers real
    own_rows = _parameters_are_tensors(rt.model, ck)
    if not own_rows and rank == 0:  # a family whose parameters are not the files' tensors one to one: rank 0 loads
        rt = load(ck, device=device, from_env=False)
    rows = train.encode(rt.tokenizer, task, cfg.max_length, notes)
    job = train.prepare(rt, ck, cfg, keys, notes)
    full = job.model.state_dict() if not own_rows and rank == 0 else {}  # rank 0's whole model
    buffers = {n: b.detach().clone() for n, b in job.model.named_buffers()} if own_rows else {}  # rotary tables
    layers = [rt.layer(i) for i in range(rt.num_layers)]
    for layer in layers:
        fully_shard(layer)
    fully_shard(job.model)
    if own_rows or rank > 0:
        job.model.to_empty(device=device)  # room for this rank's shards (and the buffers), nothing more
    if own_rows:
        read_shards(job.model, ck, cfg.seed)
        with torch.no_grad():
            for n, b in job.model.named_buffers():
                b.copy_(buffers[n])
    else:
        set_model_state_dict(job.model, full,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for b in job.model.buffers():  # rotary frequencies are not in the state dict (non-persistent)
            dist.broadcast(b, src=0)
    del full, buffers
    notes.append("each rank read its own rows of every tensor from the files" if own_rows else
                 "rank 0 loaded the whole model and sent each rank its shards (this family's parameters are not "
                 "the files' tensors one to one)")
    rt.device = torch.device(device)
    if device == "cpu":
        release_heap_every(layers, TRIM_EVERY)
    job.params = [p for p in job.train_model.parameters() if p.requires_grad]  # now the sharded parameters
    losses, tokens, train_s = train.train(rt, job, rows, cfg, False, rank=rank, world=world)

    def owner(key: str):
        m = re.match(r"layers\.(\d+)\.", key)
        return layers[int(m.group(1))] if m else job.model

    train.write_deltas(train.deltas(job, keys, ck, owner), folder, write=rank == 0)
    peaks = [torch.zeros(1, device=device) for _ in range(world)]
    dist.all_gather(peaks, torch.tensor([peak_rss_mb()], device=device))
    if rank == 0:
        (folder / "result.json").write_text(json.dumps({
            "n_trainable": job.n_trainable, "losses": losses, "tokens": tokens, "train_s": train_s,
            "peak_mb": max(float(p.item()) for p in peaks), "peaks_mb": [float(p.item()) for p in peaks],
            "notes": notes}))


TRIM_EVERY = 5  # layers between two heap trims (every layer: the same peak, 30 % slower; 10: +110 MB)


def release_heap_every(layers, every: int, trim=None) -> int:
    """Return freed heap pages to the system before every ``every``-th layer's forward and backward.

    ``trim`` defaults to glibc's ``malloc_trim(0)``; where the C library has
    none, nothing is installed. Returns the number of layers given hooks.
    """
    trim = trim or trimmer()
    if trim is None:
        return 0

    def before(module, args) -> None:
        trim()

    def on_grad(grad) -> None:  # a hook that returned a value would replace the gradient
        trim()

    def after(module, args, out) -> None:
        h = out[0] if isinstance(out, tuple) else out
        if torch.is_tensor(h) and h.requires_grad:  # runs as this layer's backward starts
            h.register_hook(on_grad)

    chosen = layers[::every]
    for layer in chosen:
        layer.register_forward_pre_hook(before)
        layer.register_forward_hook(after)
    return len(chosen)


def _skeleton(ck):
    """A Runtime over the model with its parameters on the meta device (modules and shapes, no weights) and its
    buffers (rotary tables, embedding scales: computed, not stored) real, as ``from_pretrained`` computes them."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(ck.path)
    with torch.device("meta"):
        model = auto_class(config, ck.path).from_config(config, dtype=torch.float32)
    rt = Runtime(ck, model=model, tokenizer=AutoTokenizer.from_pretrained(ck.path), device="meta")
    for mod in model.modules():  # the model's own _init_weights fills a module's buffers (its meta weights stay so)
        bufs = dict(mod.named_buffers(recurse=False))
        if any(b.is_meta for b in bufs.values()):
            for name, b in bufs.items():
                mod.register_buffer(name, torch.empty_like(b, device="cpu"),
                                    persistent=name not in mod._non_persistent_buffers_set)
            model._init_weights(mod)
    return rt


def _parameters_are_tensors(model, ck) -> bool:
    """Is every parameter a tensor of the files under its own name and shape (so each rank can read its rows)?
    Not so where transformers converts tensors on loading (fused experts, renamed keys)."""
    entries = ck.entries
    return all(n in entries and tuple(entries[n].shape) == tuple(p.shape) for n, p in model.named_parameters())


@torch.no_grad()
def read_shards(model, ck, seed: int) -> None:
    """Fill each sharded parameter with this rank's rows: the checkpoint's tensors read one at a time (float32
    only for the one in hand), LoRA's A factors drawn from the seed (:func:`surgeon.study.train.lora_start`)
    and its B factors zero. Every rank reads the same files; nothing is sent."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, p in model.named_parameters():
        if ".lora_A." in name:
            full = train.lora_start(name, p.shape, seed)
        elif ".lora_B." in name:
            full = torch.zeros(p.shape)
        else:
            full = ck.stored(name.replace(".base_layer.", "."))
        full = full.to(p.device, p.dtype)
        if isinstance(p, DTensor):
            p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
        else:
            p.copy_(full)
        del full


def main(argv: list[str] | None = None) -> int:
    """torchrun's entry point: ``python -m surgeon.study.finetune_dist JOB_FOLDER`` on every rank."""
    job = Path((argv if argv is not None else sys.argv[1:])[0])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(thread_count())
    gpu = default_device().startswith("cuda") and torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu"
    if gpu:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if gpu else "gloo")
        work(job, rank, world, device)
        dist.barrier()  # no rank tears its connections down while another is still in a collective
    except Exception as e:  # the caller shows one line; torchrun stops the other ranks
        (job / f"error-{rank}.txt").write_text(f"rank {rank}: {type(e).__name__}: {e}".splitlines()[0])
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
