"""What the commands share: thread set-up, the links option, config-generated options, opening a checkpoint."""

from __future__ import annotations

from dataclasses import fields

import click

from surgeon._threads import configure as configure_threads


def threads(lazy: bool = False):
    """``SURGEON_THREADS`` torch threads (default one per core) with passive OpenMP waits (:mod:`surgeon._threads`)."""
    configure_threads(lazy=lazy)


def links_option(fn):
    """``--allow-external-links``, the same on every command that opens a checkpoint."""
    return click.option("--allow-external-links", is_flag=True,
                        help="Accept shards that link outside the checkpoint directory (links of a Hugging Face "
                             "cache snapshot into its repository's blobs/ are accepted without it).")(fn)


def open_model(path, allow_external_links: bool):
    """The checkpoint at ``path`` (headers only; :func:`surgeon.io.checkpoint.open_checkpoint`)."""
    from surgeon.io.checkpoint import open_checkpoint

    return open_checkpoint(path, allow_external_links=allow_external_links)


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
