"""Run an edit script against a checkpoint: the engine behind ``surgeon apply``.

An edit script is plain Python that defines ``edit(ck, **params)`` and changes
``ck`` through the library (``ck[key] = ...``, :mod:`surgeon.edits`). The
script runs with the checkpoint opened lazily; nothing reaches disk unless the
whole script succeeds, and then only through :func:`surgeon.io.save.save`. The
manifest keeps the script's text, sha256 and parameters, so an output
directory says how to remake it.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.io.changes import config_changes, oriented, whole_ref
from surgeon.io.checkpoint import open_checkpoint
from surgeon.io.diff import delta_stats
from surgeon.io.prefetch import Prefetch


class ScriptError(SurgeonError):
    """The edit script raised, or does not define ``edit``."""


def parse_params(pairs: list[str]) -> dict:
    """``["alpha=0.5", "layers=[3,4]", "name=Rome"]`` -> typed dict (JSON where it parses).

    A value that does not parse stays a string, unless it starts like JSON
    (``[``, ``{``, ``"``): ``heads=[0,`` is a typo, not the string "[0,".
    """
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ScriptError(f"--param {pair!r}: expected NAME=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError as e:
            if raw.lstrip()[:1] in ("[", "{", '"'):
                raise ScriptError(f"--param {key}={raw}: starts like JSON but does not parse ({e.msg} at column "
                                  f"{e.colno}); fix the JSON, or write a plain string without the leading "
                                  f"{raw.lstrip()[0]!r}") from None
            out[key] = raw
    return out


def describe_params(params: dict) -> str:
    """``factor='abc' (str), heads=[0, 1] (list)``: what a script was given, for its error messages."""
    def brief(v) -> str:
        r = repr(v)
        return r if len(r) <= 40 else r[:37] + "..."

    return ", ".join(f"{k}={brief(v)} ({type(v).__name__})" for k, v in params.items())


def run_script(ck, script: str | Path, params: dict | None = None) -> dict:
    """Execute ``script``'s ``edit(ck, **params)``; returns the manifest's ``source`` record."""
    script = Path(script)
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as e:
        raise ScriptError(f"{script}: cannot read edit script ({e.strerror})") from None
    params = dict(params or {})
    namespace = {"__name__": "surgeon_edit", "__file__": str(script.absolute())}
    try:
        exec(compile(text, str(script), "exec"), namespace)  # the user's own script, by design
        fn = namespace.get("edit")
        if not callable(fn):
            raise ScriptError(f"{script}: defines no function edit(ck, **params)")
        fn(ck, **params)
    except ScriptError:
        raise
    except SurgeonError as e:
        raise type(e)(f"{script}: {e}") from e
    except SystemExit as e:  # exit(0) inside a script must not look like a successful apply
        line = _script_line(e, script)
        raise ScriptError(f"{script}{line}: the script called exit({e.code!r}); nothing was written") from None
    except Exception as e:  # noqa: BLE001 - report the script's own line
        line = _script_line(e, script)
        given = f" (params: {describe_params(params)})" if params else " (no params)"
        raise ScriptError(f"{script}{line}: {type(e).__name__}: {e}{given}") from e
    return {
        "kind": "script",
        "path": str(script.absolute()),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text": text,
        "params": params,
    }


def _script_line(e: BaseException, script: Path) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).name == script.name]
    return f":{frames[-1].lineno}" if frames else ""


def apply(script, model, out=None, *, params: dict | None = None, dry_run: bool = False,
          copy: bool = False, overwrite: bool = False, allow_external_links: bool = False) -> dict:
    """Open ``model``, run the script, and save to ``out`` (or report only, with ``dry_run``)."""
    ck = open_checkpoint(model, allow_external_links=allow_external_links)
    if not dry_run and out is None:
        raise ScriptError("an output directory is required (or use dry_run)")
    if dry_run:
        run_script(ck, script, params)
        return plan(ck)
    ck.prefetch = Prefetch(ck, out, overwrite=overwrite)  # checks the output; copies the shards the script reads
    try:
        source = run_script(ck, script, params)
        return ck.save(out, copy=copy, overwrite=overwrite, source=source)
    finally:
        ck.prefetch.close()
        ck.prefetch = None


def plan(ck) -> dict:
    """What saving would change: per tensor role, shapes and the size of the change."""
    rows = []
    for name in ck.changed:
        whole = whole_ref(ck, name)
        new = oriented(ck, name).float()
        old = None if name in ck.added else oriented(ck, name, ck.original(name)).float()
        rows.append({"name": name, "key": whole.key if whole else None, "role": whole.role if whole else None,
                     "added": name in ck.added, **delta_stats(old, new)})
    changes = config_changes(ck.original_config, ck.config)
    return {"tensors": rows, "config_changes": changes, "files": sorted(ck.files), "edits": ck.edits}
