"""The ``surgeon`` command: a thin skin over the library.

Each command parses its options, calls one public function, and prints. Any
error surgeon raises on purpose becomes one line on stderr and exit code 2;
anything else becomes one line and exit code 1. ``--debug`` (or
``SURGEON_DEBUG=1``) shows the traceback instead.

The commands live by family: :mod:`surgeon.cli.edit` (inspect, apply, diff),
:mod:`surgeon.cli.study` (finetune, compare, map, locate), :mod:`surgeon.cli.export`
(export-adapter, export gguf|control-vector|lora) and :mod:`surgeon.cli.fixture`;
:mod:`surgeon.cli.common` holds the options they share.
"""

from __future__ import annotations

import os
import sys

import click

from surgeon._threads import quiet_waits
from surgeon.cli.edit import apply, diff_cmd, inspect
from surgeon.cli.export import export_adapter_cmd, export_group
from surgeon.cli.fixture import fixture
from surgeon.cli.study import compare, finetune, locate_cmd, map_cmd
from surgeon.errors import SurgeonError
from surgeon.runtime.placement import parse_max_memory


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
            click.echo(f"surgeon: internal error: {type(e).__name__}: {msg} "
                       "(rerun with --debug for the traceback)", err=True)
            ctx.exit(1)


def _debug(ctx) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get("SURGEON_DEBUG") == "1"


def _check_max_memory(ctx, param, value):
    if value:
        try:
            parse_max_memory(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--device", default=None, metavar="DEVICE",
              help="Where models run (cpu, cuda, cuda:1); default the GPU when there is one ($SURGEON_DEVICE).")
@click.option("--max-memory", default=None, metavar="DEV=AMOUNT,...", callback=_check_max_memory,
              help="Place every model a command builds with accelerate within these limits, offloading the rest "
                   "(0=70GiB,cpu=100GiB; the fine-tune stays in memory).")
@click.option("--offload-folder", default=None, type=click.Path(file_okay=False),
              help="Where offloaded layers go (default: a temporary folder).")
@click.option("--dtype", default=None, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="dtype of the models that measure and compute edits (default float32; the fine-tune trains "
                   "in float32).")
@click.version_option(package_name="surgeon")
@click.pass_context
def main(ctx, debug, device, max_memory, offload_folder, dtype):
    """Weight surgery on transformer checkpoints: inspect, edit, fine-tune, measure."""
    ctx.ensure_object(dict)["debug"] = debug
    quiet_waits()  # before any command imports torch: OpenMP reads its wait policy once, when torch loads
    # read by surgeon.runtime (default_device, env_placement), also in compare's arm children
    for name, value in (("SURGEON_DEVICE", device), ("SURGEON_MAX_MEMORY", max_memory),
                        ("SURGEON_OFFLOAD_FOLDER", offload_folder), ("SURGEON_DTYPE", dtype)):
        if value:
            os.environ[name] = value



for _command in (inspect, apply, diff_cmd, finetune, compare, map_cmd, locate_cmd, export_adapter_cmd, export_group,
                 fixture):
    main.add_command(_command)

__all__ = ["main"]
