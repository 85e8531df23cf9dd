"""``surgeon inspect``, ``surgeon apply`` and ``surgeon diff``: read a checkpoint, edit it, compare two."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from surgeon.cli.common import links_option, threads

# --------------------------------------------------------------------- inspect


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Emit the full machine-readable description.")
@click.option("--raw", is_flag=True, hidden=True, help="Kept for old scripts: every checkpoint is listed now.")
@click.option("--write-table", type=click.Path(),
              help="Write the family's role table (inferred or bundled) as JSON here.")
@links_option
def inspect(checkpoint, as_json, raw, write_table, allow_external_links):
    """Architecture, sizes and every tensor by role (headers only; roles inferred for families without a table)."""
    from surgeon.io.checkpoint import open_checkpoint
    from surgeon.roles.infer import table_json
    from surgeon.roles.summary import format_text, summarize

    ck = open_checkpoint(checkpoint, allow_external_links=allow_external_links)
    doc = summarize(ck)
    if doc["warning"]:
        click.echo(f"warning: {doc['warning']}", err=True)
    if write_table:
        if ck.architecture is None:
            raise click.UsageError("--write-table: this checkpoint has no role table to write (see the warning)")
        Path(write_table).write_text(json.dumps(table_json(ck.architecture), indent=2) + "\n")
    click.echo(json.dumps(doc, indent=1) if as_json else format_text(doc))


# ----------------------------------------------------------------------- apply


@click.command()
@click.argument("script", type=click.Path())
@click.option("--model", required=True, type=click.Path(), help="Input checkpoint directory (never modified).")
@click.option("--out", type=click.Path(), help="Output directory (written atomically).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Passed to edit(ck, **params); JSON values parse (a value starting with [ { \" must).")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option("--copy", is_flag=True, help="Copy untouched shards instead of hard-linking them.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest / plan as JSON.")
@links_option
def apply(script, model, out, params, dry_run, copy, overwrite, as_json, allow_external_links):
    """Run EDIT.py's edit(ck, **params) on a checkpoint and save the result."""
    from surgeon.edits.apply import apply as run
    from surgeon.edits.apply import parse_params
    from surgeon.io.changes import added_zeros, listing

    threads(lazy=True)
    if not dry_run and not out:
        raise click.UsageError("--out is required unless --dry-run")
    doc = run(script, model, out, params=parse_params(list(params)), dry_run=dry_run, copy=copy,
              overwrite=overwrite, allow_external_links=allow_external_links)
    if as_json:
        click.echo(json.dumps(doc, indent=1, default=str))
    elif dry_run:
        rows = doc["tensors"]
        click.echo(f"dry run: {len(rows)} tensor(s) would change; nothing written")
        for line in listing(rows, _planned, zero=lambda r: r.get("delta_norm") == 0):
            click.echo(line)
        for k, (a, b) in doc["config_changes"].items():
            click.echo(f"  config {k}: {a} -> {b}")
        for f in doc["files"]:
            click.echo(f"  file {f}")
    else:
        t = doc["tensors"]
        files = ", ".join(f"{k} {len(v)}" for k, v in doc["files"].items() if v)
        click.echo(f"wrote {out}: {len(t)} tensor(s) changed; files {files}")
        for line in listing(t, lambda c: f"  {c['key'] or c['name']}  ({c['name']}, {c['file']})", zero=added_zeros):
            click.echo(line)


def _planned(r: dict) -> str:
    rel = f"{r['relative']:.3e}" if r.get("relative") is not None else "new"
    extra = f" +{r['rows_added']} rows" if r.get("rows_added") else ""
    rank = f" rank {r['rank']}" if r.get("rank") is not None else ""
    shape = "×".join(map(str, r["shape"]))
    return f"  {r['key'] or r['name']:<28} {shape:>12}  ‖ΔW‖ {r['delta_norm'] or 0:.4g}  rel {rel}{rank}{extra}"


# ------------------------------------------------------------------------ diff


@click.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON record per tensor (all of them).")
@click.option("--all", "all_tensors", is_flag=True, help="List unchanged tensors too.")
@click.option("--plot", "plot_path", type=click.Path(), help="Write a layers × roles heatmap (PNG) here.")
@click.option("--no-rank", is_flag=True, help="Skip the SVDs (effective rank); faster on big dense changes.")
@links_option
@click.option("--unrelated", is_flag=True, help="Diff checkpoints of different families or tensor sets anyway.")
def diff_cmd(a, b, as_json, all_tensors, plot_path, no_rank, allow_external_links, unrelated):
    """Tensor by tensor: ‖ΔW‖, relative change, effective rank, rows added (A -> B)."""
    from surgeon.io.checkpoint import open_checkpoint
    from surgeon.io.diff import config_changes, diff
    from surgeon.io.diff_render import format_table, plot

    threads()
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
