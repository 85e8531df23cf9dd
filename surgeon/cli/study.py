"""``surgeon finetune``, ``compare``, ``map`` and ``locate``: train, measure and map behaviour."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from surgeon.cli.common import config_options, links_option, open_model, threads
from surgeon.study.config import FinetuneConfig

# -------------------------------------------------------------------- finetune


@click.command()
@click.argument("task", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, type=click.Path(), help="Input checkpoint directory (never modified).")
@click.option("--out", required=True, type=click.Path(), help="Output directory (written atomically, with manifest).")
@config_options(FinetuneConfig)
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--copy", is_flag=True, help="Copy untouched shards instead of hard-linking them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@links_option
def finetune(task, model, out, overwrite, copy, as_json, allow_external_links, **config):
    """Fine-tune chosen layers × roles on TASK and save like an edit."""
    from surgeon.study.finetune import finetune as run

    threads()
    r = run(open_model(model, allow_external_links), task, FinetuneConfig(**config), out=out, overwrite=overwrite,
            copy=copy, progress=not as_json)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(f"wrote {out}: {len(r.manifest['tensors'])} tensor(s) changed, {r.params_changed:,} parameters; "
               f"{r.trainable_params:,} trained ({config['method']}) over {r.steps} steps")
    click.echo(f"  loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f}; {r.tokens_per_s:.0f} tokens/s; "
               f"wall {r.wall_s:.1f} s; peak RSS {r.peak_rss_mb:.0f} MB; update kept after cast {r.update_kept:.0%}")
    for n in r.notes:
        click.echo(f"  note: {n}")


# --------------------------------------------------------------- compare, map


jobs_option = click.option(
    "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
    help="Arm families tuned side by side, each in a process with SURGEON_THREADS / JOBS threads "
         "(on 2 cores, --jobs 2 nearly halves the wall time).")


@click.command()
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
@jobs_option
@links_option
def compare(task, model, arms, out, keep_checkpoints, overwrite, timeout, budget, seeds, jobs, allow_external_links):
    """Make each arm from MODEL, measure all on TASK, print the table."""
    from surgeon.study.compare import compare as run
    from surgeon.study.tuned import compare_tuned

    threads()
    if budget is not None and allow_external_links:
        raise click.UsageError("--allow-external-links does not work with --budget yet")
    if budget is None and jobs != 1:
        raise click.UsageError("--jobs tunes families side by side: it needs --budget")
    if budget is not None:
        report = compare_tuned(task, model, list(arms), out, budget=budget, seeds=seeds, overwrite=overwrite,
                               timeout_s=timeout, jobs=jobs)
    else:
        report = run(task, model, list(arms), out, keep_checkpoints=keep_checkpoints, overwrite=overwrite,
                     timeout_s=timeout, allow_external_links=allow_external_links)
    md = (Path(out) / "report.md").read_text(encoding="utf-8")
    click.echo(md)
    click.echo(f"wrote {out}/report.json, report.md, report.png")
    if any(r["error"] for r in report["arms"]):
        sys.exit(1)


@click.command("map")
@click.option("--model", default=None, type=click.Path(),
              help="The checkpoint for tasks whose map entry names no model of its own.")
@click.option("--tasks", "tasks", multiple=True, required=True, help="Task files (repeat, or comma-separated).")
@click.option("--out", required=True, type=click.Path(),
              help="Directory: map.md, map.json, map.png, one report per task.")
@click.option("--budget", type=int, default=6, show_default=True, help="Trials per arm family and task.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Seeds per chosen point.")
@click.option("--overwrite", is_flag=True, help="Reuse non-empty report directories.")
@jobs_option
def map_cmd(model, tasks, out, budget, seeds, overwrite, jobs):
    """The map of intervention: per behaviour, the best site and method at KL <= 0.05, measured."""
    from surgeon.study.map import run_map

    threads()
    paths = [t for group in tasks for t in group.split(",") if t]
    run_map(model, paths, out, budget=budget, seeds=seeds, overwrite=overwrite, jobs=jobs)
    click.echo((Path(out) / "map.md").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------- locate


@click.command("locate")
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
@click.option("--position", type=click.Choice(["auto", "subject", "last"]), default="auto", show_default=True,
              help="Where patching restores activations: the subject's last token (noise on a subject, as causal "
                   "tracing does), the last token, or auto (subject where the probes name one).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the text heatmap.")
@links_option
def locate_cmd(task, model, png, method, examples, mass, corrupt, position, seed, as_json, allow_external_links):
    """Map where TASK's behaviour lives (layers × roles) and suggest a layer range."""
    from surgeon.io.atomic import check_outside
    from surgeon.study.locate import locate as run

    threads()
    check_outside(model, png)  # the map and its .json never land inside the input
    if Path(png).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise click.BadParameter(f"{png}: the heatmap is written as .png, .pdf or .svg", param_hint="--out")
    r = run(open_model(model, allow_external_links), task, method=method, examples=examples, mass=mass,
            corrupt=corrupt, position=position, seed=seed, progress=not as_json)
    png = r.save_png(png)
    js = r.save_json(Path(png).with_suffix(".json") if Path(png).suffix == ".png" else Path(str(png) + ".json"))
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(r.text())
    click.echo(f"wrote {png} and {js}; use it in compare as: --arm 'located=lora layers={r.suggested_layers}'")
