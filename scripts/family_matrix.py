"""Every causal-LM family of the installed transformers: build a tiny model, infer its roles, record the status.

    python scripts/family_matrix.py [--json out.json] [--markdown]

Status per model_type: ``table`` (a bundled table), ``inferred`` (every tensor of
the tiny model has a role), ``partial`` (some tensors keep no role; listed),
``refused`` (the reason). Tiny models are saved once per machine under
``$SURGEON_CACHE/tiny/<transformers version>/<model_type>`` and reused by
``tests/test_matrix.py``, which runs the behaviour checks on the inferred ones.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout("took over 60 s")


# config overrides a family's tiny model needs for the behaviour checks to be able to fail (part of the cache path)
TINY_OVERRIDES = {
    # post-norm decoder whose attention reads raw embeddings plus sinusoidal positions: at the default
    # init_std 0.02 its attention is uniform to 4e-4 before any edit, so "zero attn.q makes it uniform" shows nothing
    "marian": {"init_std": 0.1},
}


def tiny_path(model_type: str) -> Path:
    import transformers

    from surgeon.io.atomic import cache_dir

    name = "-".join([model_type, *(f"{k}={v}" for k, v in sorted(TINY_OVERRIDES.get(model_type, {}).items()))])
    return cache_dir() / "tiny" / transformers.__version__ / name


def ensure_tiny(model_type: str) -> Path:
    """The cached tiny checkpoint of ``model_type`` (built on first use; raises what transformers raises).
    A composite config (a multimodal wrapper) is built whole, every sub-config shrunk (tests/tiny.py)."""
    from tiny import build_any, build_wrapped
    from transformers import CONFIG_MAPPING

    from surgeon.io.atomic import atomic_output

    path = tiny_path(model_type)
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        build = build_wrapped if getattr(CONFIG_MAPPING[model_type], "sub_configs", None) else build_any
        with atomic_output(path) as tmp:
            build(model_type, tmp, **TINY_OVERRIDES.get(model_type, {}))
    return path


def status(model_type: str) -> dict:
    from transformers import CONFIG_MAPPING

    import surgeon
    from surgeon.roles.table import architectures

    if any(model_type in a.model_types for a in architectures().values()):
        return {"status": "table"}
    sub = getattr(CONFIG_MAPPING[model_type], "sub_configs", None)
    try:
        path = ensure_tiny(model_type)
    except Exception as e:  # noqa: BLE001 - recorded as the reason
        why = f"no tiny model from its config class ({type(e).__name__})"
        return _wrapped_by_default_config(model_type, why) if sub else {"status": "refused", "reason": why}
    ck = surgeon.open(path)
    if ck.architecture is None:
        return {"status": "refused", "reason": ck.unknown_reason.split("no inference (")[-1].rstrip(")").split(");")[0]}
    if ck.architecture.text_config:  # a wrapper: the text tower's roles, the other towers' tensors keep none
        text = json.loads((path / "config.json").read_text())[ck.architecture.text_config].get("model_type")
        return {"status": "wrapped", "reason": f"text tower {text} at {ck.architecture.layer.rsplit('.', 2)[0]}; "
                                               f"{len(ck.roles.unclassified)} tensor(s) of other towers: no role"}
    left = ck.roles.unclassified
    return {"status": "partial", "no_role": left} if left else {"status": "inferred"}


def _wrapped_by_default_config(model_type: str, why: str) -> dict:
    """A composite family no tiny model can be built of: the roles its default config gets (as a real
    checkpoint's would), with no behaviour check; refused, with the reason, where there are none."""
    from transformers import CONFIG_MAPPING

    from surgeon.errors import UnknownArchitecture
    from surgeon.roles.infer import infer_architecture

    try:
        cfg = CONFIG_MAPPING[model_type]()
        arch = infer_architecture(cfg.to_dict())
    except UnknownArchitecture as e:
        what = "" if "composite config" in str(e) else f"composite config ({', '.join(type(cfg).sub_configs)}): "
        return {"status": "refused", "reason": f"{what}{e}"}
    except Exception as e:  # noqa: BLE001 - transformers' own refusal of its default config is the reason
        return {"status": "refused", "reason": f"{why}; its default config fails too ({type(e).__name__})"}
    text = getattr(cfg, arch.text_config).model_type if arch.text_config else "?"
    return {"status": "wrapped", "behaviour": f"no check: {why}",
            "reason": f"text tower {text} at {arch.layer.rsplit('.', 2)[0]} (roles from the default config)"}


def verify(model_type: str) -> str:
    """Run tests/test_matrix.py's behaviour checks: "verified (checks)", "no check applies" or "FAILS: why"."""
    import tempfile

    import _pytest.outcomes
    from test_matrix import check_family

    with tempfile.TemporaryDirectory() as tmp:
        try:
            ran = check_family(model_type, Path(tmp))
        except _pytest.outcomes.Skipped as e:
            return f"no check: {e}"
        except Exception as e:  # noqa: BLE001 - recorded
            return f"FAILS: {type(e).__name__} {str(e).splitlines()[0][:80] if str(e) else ''}"
    return f"verified ({', '.join(ran)})" if ran else "no check applies"


def main() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--verify", action="store_true", help="also run the behaviour checks (tests/test_matrix.py)")
    ap.add_argument("--types", help="only these model_types, comma-separated (default: every causal-LM family)")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    out = {}
    for mt in args.types.split(",") if args.types else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        signal.alarm(60)
        try:
            out[mt] = status(mt)
            if args.verify and out[mt]["status"] in ("inferred", "partial", "wrapped") and "behaviour" not in out[mt]:
                out[mt]["behaviour"] = verify(mt)
        except _Timeout as e:
            out[mt] = {"status": "refused", "reason": str(e)}
        finally:
            signal.alarm(0)
        print(mt, out[mt], flush=True, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.markdown:
        print(markdown(out))


def markdown(out: dict) -> str:
    counts: dict[str, int] = {}
    for v in out.values():
        key = v["status"] + (" + verified" if v.get("behaviour", "").startswith("verified") else
                             " + check fails" if v.get("behaviour", "").startswith("FAILS") else "")
        counts[key] = counts.get(key, 0) + 1
    lines = ["| model_type | roles | behaviour checks | detail |", "|---|---|---|---|"]
    for mt, v in sorted(out.items()):
        left = v.get("no_role") or []
        detail = v.get("reason") or (f"{len(left)} tensor(s) without a role, e.g. {left[0]}" if left else "")
        lines.append(f"| {mt} | {v['status']} | {v.get('behaviour', '')} | {detail} |")
    return "Counts: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
