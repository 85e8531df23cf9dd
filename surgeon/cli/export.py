"""``surgeon export-adapter`` (PEFT LoRA) and the ``surgeon export`` group (llama.cpp / Ollama)."""

from __future__ import annotations

import json

import click

from surgeon.cli.common import links_option, open_model, threads

# -------------------------------------------------------------- export-adapter


@click.command("export-adapter")
@click.argument("edited", type=click.Path())
@click.option("--base", required=True, type=click.Path(), help="The original checkpoint the edit was made from.")
@click.option("--out", required=True, type=click.Path(),
              help="Adapter directory to write (adapter_config.json + adapter_model.safetensors).")
@click.option("--rank", type=int, help="Cap on each tensor's LoRA rank.")
@click.option("--tol", type=float, help="Per tensor, the smallest rank with ‖ΔW − BA‖/‖ΔW‖ ≤ TOL.")
@click.option("--allow-skip", is_flag=True, help="Write what LoRA can express and list the rest instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@links_option
def export_adapter_cmd(edited, base, out, rank, tol, allow_skip, overwrite, as_json, allow_external_links):
    """Export EDITED − BASE as a PEFT LoRA adapter (rank-one edits at rank one, truncated SVD otherwise).

    A rank-one edit is carried exactly as computed, but EDITED stores W + ΔW rounded to its dtype: in bf16
    that rounding is ~3% of ‖ΔW‖ (fp16 ~0.4%), so the residual against EDITED is at that level, not zero.
    """
    from surgeon.export.adapter import export_adapter

    threads()
    rep = export_adapter(open_model(edited, allow_external_links), open_model(base, allow_external_links), out,
                         rank=rank, tol=tol, allow_skip=allow_skip, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
        return
    click.echo(f"wrote {out}: {rep.parameters:,} parameters" + (", lora_bias" if rep.lora_bias else "")
               + (f", modules_to_save {len(rep.modules_to_save)}" if rep.modules_to_save else ""))
    for t in rep.tensors:
        if t.kind == "lora":
            click.echo(f"  {t.key:<28} rank {t.rank:<4} residual {t.residual:.2e}  "
                       f"(storage rounding {t.rounding or 0:.1e})")
        elif t.kind != "noop":
            click.echo(f"  {t.key:<28} {t.kind}" + (f": {t.reason}" if t.reason else ""))
    _adapter_notes(rep)


def _adapter_notes(rep) -> None:
    """The export report's closing notes: no-op biases, storage rounding, lossy tensors."""
    noop = sum(t.kind == "noop" for t in rep.tensors)
    if noop:
        click.echo(f"  ({noop} zero biases added for a config flag: nothing to carry)")
    rounded = [t for t in rep.tensors
               if t.kind == "lora" and t.rounding and 0.005 < (t.residual or 0) <= 2 * t.rounding]
    if rounded:
        lo, hi = min(t.residual for t in rounded), max(t.residual for t in rounded)
        share = f"{lo:.1%}" if f"{lo:.1%}" == f"{hi:.1%}" else f"{lo:.1%}–{hi:.1%}"
        click.echo(f"  note: {len(rounded)} tensor(s) leave {share} of ΔW out: the rounding of EDITED's stored weights "
                   f"(W + ΔW cast to its dtype), not part of the edit; base + adapter is the edit as computed")
    lossy = [t.residual for t in rep.tensors if t.kind == "lora" and (t.residual or 0) > 0.05]
    if lossy:
        click.echo(f"  note: {len(lossy)} tensor(s) leave more than 5% of ΔW out (up to {max(lossy):.0%}): the adapter "
                   f"approximates the edit. Where ΔW is mostly bf16 rounding (a merged fine-tune) the rest is noise; "
                   f"--tol or --rank trade size for fidelity")


# ---------------------------------------------------------- export (llama.cpp)


@click.group("export")
def export_group():
    """Ship an edit to llama.cpp / Ollama: a verified GGUF, a control vector, a LoRA GGUF."""


@export_group.command("gguf")
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="GGUF file to write.")
@click.option("--type", "outtype", type=click.Choice(["f16", "bf16", "q8_0"]), default="f16", show_default=True)
@click.option("--converter", type=click.Path(), help="convert_hf_to_gguf.py or a llama.cpp checkout "
              "(else $SURGEON_LLAMA_CPP, else the installed llama-cpp-python's own sdist).")
@click.option("--prompt", "prompts", multiple=True, help="Also verify this prompt (repeatable).")
@click.option("--task", type=click.Path(exists=True, dir_okay=False), help="Also verify this task file's probes.")
@click.option("--tokens", type=int, default=12, show_default=True, help="Greedy tokens compared per prompt.")
@click.option("--no-verify", is_flag=True, help="Convert only; do not compare llama.cpp with transformers.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@links_option
def export_gguf_cmd(checkpoint, out, outtype, converter, prompts, task, tokens, no_verify, overwrite, as_json,
                    allow_external_links):
    """Convert CHECKPOINT with llama.cpp's own converter, then check llama.cpp's greedy tokens against transformers."""
    from surgeon.export.gguf import export_gguf

    threads()
    rep = export_gguf(open_model(checkpoint, allow_external_links), out, outtype=outtype, converter=converter,
                      verify_with=not no_verify, prompts=prompts, task=task, max_new_tokens=tokens,
                      overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
        return
    click.echo(f"wrote {out} ({outtype}, {(rep.architecture or '?').lower()}) with {rep.converter}: "
               f"converter {rep.convert_seconds:.1f} s, total {rep.seconds:.1f} s")
    v = rep.verification
    if v is not None:
        top1 = (f"; top-1 agreement {v.top1_decided:.3f} where decided, {v.top1:.3f} overall ({v.top1_tokens} tokens)"
                if v.top1 is not None else "")
        click.echo(f"verified in llama.cpp: {len(v.prompts)} prompts give transformers' greedy tokens{top1}")
        for p in v.prompts:
            ties = f"  (ties at step {', '.join(map(str, p.ties))})" if p.ties else ""
            click.echo(f"  {p.prompt!r} -> {p.llama!r}{ties}")


@export_group.command("control-vector")
@click.argument("vector", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Control-vector GGUF to write.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Multiple of the vector, as in steer().")
@click.option("--layer", type=int, help="Steer this layer instead of the one the vector was extracted at.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export_control_vector_cmd(vector, out, alpha, layer, overwrite):
    """Write a saved steering VECTOR as a llama.cpp control vector (llama-cli --control-vector FILE)."""
    from surgeon.edits.steering import SteeringVector
    from surgeon.export.control_vector import export_control_vector

    info = export_control_vector(SteeringVector.load(vector), out, alpha=alpha, layer=layer, overwrite=overwrite)
    click.echo(f"wrote {out}: direction.{info['layer']} = surgeon's layers.{info['layer']} (the residual after that "
               f"decoder layer), |v| {info['norm']:.2f}; use: llama-cli -m MODEL.gguf --control-vector {out}")


@export_group.command("lora")
@click.argument("adapter", type=click.Path(exists=True, file_okay=False))
@click.option("--base", required=True, type=click.Path(), help="The checkpoint the adapter was exported against.")
@click.option("--out", required=True, type=click.Path(),
              help="LoRA GGUF to write (an Ollama Modelfile goes beside it).")
@click.option("--base-gguf", type=click.Path(), help="The base model's GGUF, for the Modelfile's FROM line.")
@click.option("--converter", type=click.Path(), help="A llama.cpp checkout (same order as export gguf).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export_lora_cmd(adapter, base, out, base_gguf, converter, overwrite):
    """Convert a PEFT ADAPTER (surgeon export-adapter) to llama.cpp's LoRA GGUF, plus an Ollama Modelfile."""
    from surgeon.export.lora_gguf import export_lora_gguf

    threads()
    res = export_lora_gguf(adapter, base, out, base_gguf=base_gguf, converter=converter, overwrite=overwrite)
    click.echo(f"wrote {res['out']} ({res['pairs']} LoRA pairs, {res['seconds']:.1f} s) and {res['modelfile']}; "
               f"use: llama-cli -m BASE.gguf --lora {res['out']}")
