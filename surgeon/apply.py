"""Run an edit script against a checkpoint: the engine behind ``surgeon apply``.

An edit script is plain Python that defines ``edit(ck, **params)`` and changes
``ck`` through the library (``ck[key] = ...``, :mod:`surgeon.edits`). The
script runs with the checkpoint opened lazily; nothing reaches disk unless the
whole script succeeds, and then only through :func:`surgeon.save.save`. The
manifest keeps the script's text, sha256 and parameters, so an output
directory says how to remake it.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path

from .checkpoint import open_checkpoint
from .errors import SurgeonError


class ScriptError(SurgeonError):
    """The edit script raised, or does not define ``edit``."""


def parse_params(pairs: list[str]) -> dict:
    """``["alpha=0.5", "layers=[3,4]", "name=Rome"]`` -> typed dict (JSON where it parses)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ScriptError(f"--param {pair!r}: expected NAME=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


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
        raise ScriptError(f"{script}{line}: {type(e).__name__}: {e}") from e
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
    from .save import Prefetch, _check_output

    _check_output(ck.path, Path(out).absolute(), overwrite)  # fail before minutes of editing
    ck.prefetch = Prefetch(ck, out)  # shards the script reads are copied while it runs
    try:
        source = run_script(ck, script, params)
        return ck.save(out, copy=copy, overwrite=overwrite, source=source, prefetch=ck.prefetch)
    finally:
        ck.prefetch.close()
        ck.prefetch = None


def plan(ck) -> dict:
    """What saving would change: per tensor role, shapes and the size of the change."""
    from .diff import delta_stats

    rows = []
    for name in ck.changed:
        refs = ck.roles.by_tensor.get(name, []) if ck.architecture else []
        whole = next((r for r in refs if r.view.rows is None), None)
        new = ck.staged[name].float()
        old = None if name in ck.added else ck.original(name).float()
        if whole is not None and whole.view.transposed:
            new = whole.view.read(new)
            old = None if old is None else whole.view.read(old)
        rows.append({"name": name, "key": whole.key if whole else None, "role": whole.role if whole else None,
                     "added": name in ck.added, **delta_stats(old, new)})
    changes = {k: [ck.original_config.get(k), v] for k, v in ck.config.items() if ck.original_config.get(k) != v}
    return {"tensors": rows, "config_changes": changes, "files": sorted(ck.files), "edits": ck.edits}
