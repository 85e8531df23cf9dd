"""The comparison report: one table (report.md), one paragraph that reads it, one figure (report.png).

A tuned comparison (``compare --budget``, :mod:`surgeon.study.tuned`) adds the
matched-damage table (each family's test success at KL ≤ 0.01 / 0.05 / 0.2,
chosen on validation, mean ± sd over seeds), the search's cost, and a panel of
the fronts (test success against KL, log scale) to the figure.
"""

from __future__ import annotations

import math
from pathlib import Path

from surgeon.errors import SurgeonError
from surgeon.io.checkpoint import open_checkpoint
from surgeon.roles.layers import checkpoint_kinds, count_tags, tags
from surgeon.study.config import parse_layers

COLUMNS = [  # (metric key, header, format)
    ("efficacy", "efficacy", "{:.2f}"),
    ("efficacy_p", "P(target)", "{:.2f}"),
    ("generalisation", "generalisation", "{:.2f}"),
    ("generalisation_p", "P(target) held-out", "{:.2f}"),
    ("specificity", "specificity", "{:.2f}"),
    ("neighbourhood", "neighbourhood", "{:.2f}"),
    ("kl", "KL", "{:.4f}"),
    ("perplexity_ratio", "ppl ×", "{:.3f}"),
    ("spelling", "spelling", "{:.2f}"),
    ("efficacy_gen", "efficacy (gen)", "{:.2f}"),
    ("generalisation_gen", "held-out (gen)", "{:.2f}"),
    ("neighbourhood_gen", "neighbours (gen)", "{:.2f}"),
    ("degenerate", "degenerate", "{:.2f}"),
    ("fluency", "fluency", "{:.2f}"),
]
GEN_NOTE = ("*(gen)*: greedy continuations of up to 8 tokens, no teacher forcing, that contain the target and not "
            "the original (spelling tasks: the rule set's rate over the words it scores); degenerate text "
            "(repeated phrases, character runs, lone marks) never counts. *degenerate*: share of all the arm's "
            "generations flagged; *fluency*: ROME's bi/tri-gram entropy of free generations from neutral prompts.")


def _present(report, key) -> bool:
    return any(r.get("metrics", {}).get(key) is not None for r in report["arms"])


def markdown(report: dict) -> str:
    cols = [c for c in COLUMNS if _present(report, c[0])]
    head = ["arm"] + [c[1] for c in cols] + ["wall s", "peak MB", "params changed", "MB written"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["arms"]:
        if r["error"]:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        m, c = r["metrics"], r["cost"]
        cells = [r["name"]] + ["–" if m.get(k) is None else f.format(m[k]) for k, _, f in cols]
        cells += [f"{c['wall_s']:.1f}", "–" if c["peak_rss_mb"] is None else f"{c['peak_rss_mb']:.0f}",
                  f"{c['params_changed']:,}", f"{c['bytes_written'] / 1e6:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    kinds = _layer_tags(report)
    specs = "\n".join(f"- `{r['name']}`: `{r['spec']}`{_resolved(r)}{_kinds(r, kinds)}" for r in report["arms"])
    n = report["counts"]
    split = " (test split)" if report.get("search") is not None else ""
    return (f"# {report['task']} on {Path(report['model']).name}\n\n" + "\n".join(lines) + "\n\n"
            f"{report['reading']}\n\n"
            f"Probes{split}: {n['efficacy']} efficacy, {n['generalisation']} held-out, {n['specificity']} specificity, "
            f"{n['neutral']} neutral texts; {n['train']} training examples. Wall time and peak memory are each "
            f"arm's own child process (load, change, save), on {_threads(report)}. {GEN_NOTE}\n\n"
            f"Counts and 95 % Wilson intervals:\n{intervals(report)}\n\n{tuned_markdown(report)}"
            f"Arms:\n{specs}\n")


def intervals(report: dict) -> str:
    """One line per arm: every rate as k/n [lo, hi]."""
    labels = {k: h for k, h, _ in COLUMNS}
    out = []
    for r in report["arms"]:
        counts = (r.get("metrics") or {}).get("counts") or {}
        cells = [f"{labels.get(k, k)} {c['k']}/{c['n']} [{c['lo']:.2f}, {c['hi']:.2f}]"
                 for k, c in counts.items() if c.get("n")]
        if cells:
            out.append(f"- {r['name']}: " + "; ".join(cells))
    return "\n".join(out) or "- (no rates)"


def _mean_sd(seeds: dict, key: str, fmt: str) -> str:
    m, sd = seeds.get(f"{key}_mean"), seeds.get(f"{key}_sd")
    if m is None:
        return "–"
    return fmt.format(m) + ("" if sd is None else " ± " + fmt.format(sd))


def _threads(report: dict) -> str:
    jobs = report.get("jobs") or 1
    if jobs == 1:
        return f"{report['threads']} thread(s)"
    return f"{max(1, report['threads'] // jobs)} thread(s) each, {jobs} families tuned at a time"


def _total(report: dict) -> str:
    if report.get("wall_s") is None:  # reports written before the total was kept
        return ""
    return (f"The whole comparison took {report['wall_s'] / 60:.1f} min of wall time "
            f"({report.get('jobs') or 1} job(s), {report['threads']} thread(s) in all).\n\n")


def tuned_markdown(report: dict) -> str:
    """The matched-damage table and the search's cost (empty for an untuned comparison)."""
    fams = report.get("search")
    if not fams:
        return ""
    levels = report["kl_levels"]
    head = ["family"] + [f"KL ≤ {lvl:g}" for lvl in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, f in fams.items():
        cells = [name]
        for lvl in levels:
            n = f["matched"].get(str(lvl))
            sd = f["seeds"].get(str(n)) if n is not None else None
            if sd is None:
                cells.append("–")
                continue
            over = " **over the level on test**" if (sd.get("kl_mean") or 0) > lvl else ""
            cells.append(f"{_mean_sd(sd, 'success', '{:.2f}')} (KL {_mean_sd(sd, 'kl', '{:.4f}')}, "
                         f"trial {n}, {sd['n']} run(s)){over}")
        lines.append("| " + " | ".join(cells) + " |")
    cost = ["| family | knobs searched | trials ok | front | tuning wall s | tuning peak MB | test wall s |",
            "|---|---|---|---|---|---|---|"]
    for name, f in fams.items():
        ok = sum(1 for t in f["trials"] if t["error"] is None and t["success"] is not None)
        knobs = ", ".join(f"{k} {v[0]} {v[1:]}" for k, v in f["knobs"].items()) or "none (all pinned)"
        rss = "–" if f["peak_rss_mb"] is None else f"{f['peak_rss_mb']:.0f}"
        cost.append(f"| {name} | {knobs} | {ok}/{len(f['trials'])} | {len(f['front'])} | {f['wall_s']:.0f} | "
                    f"{rss} | {f['test_wall_s']:.0f} |")
    return (f"## Matched damage: test success at equal KL\n\nEach family had {report['budget']} trial(s) of its "
            f"knobs (Optuna multi-objective TPE: validation success up, validation KL down). A cell is the trial "
            f"with the best *validation* success among those with validation KL under the level, made again and "
            f"measured on the *test* split (mean ± sd over up to {report['seeds']} seeds; edits are "
            f"deterministic). Success: generated success on held-out probes.\n\n" + "\n".join(lines) +
            "\n\n## Search\n\n" + "\n".join(cost) + "\n\n" + _total(report))


def _resolved(row: dict) -> str:
    """`` (layers=auto resolved to 11-17)`` for stages whose layers were chosen by locate."""
    got = [f"{s['params']['layers_from']} resolved to {_span(s['params']['layers'])}"
           for s in row.get("stages", []) if s.get("params", {}).get("layers_from")]
    return f" (layers={'; '.join(got)})" if got else ""


def _layer_tags(report: dict) -> list[str]:
    """Per layer of the compared model, what sets it apart (``full`` / ``sliding``; surgeon.roles.layers),
    from the report if it recorded them, else from the model's config.json; [] if it cannot be read."""
    if "layer_tags" in report:
        return report["layer_tags"]
    try:
        return tags(checkpoint_kinds(open_checkpoint(report["model"])))
    except (SurgeonError, OSError, KeyError):
        return []


def _kinds(row: dict, kinds: list[str]) -> str:
    """`` — layers 0-6: sliding ×6, full ×1`` for an arm acting on layers of more than one kind."""
    for stage in row.get("stages", []):
        params = stage.get("params", {})
        spec = params.get("layers", params.get("layer"))
        if spec is None or not any(kinds):
            continue
        try:
            layers = parse_layers(spec if not isinstance(spec, int) else [spec], len(kinds))
        except (SurgeonError, ValueError, TypeError):
            continue
        label = count_tags(kinds, layers)
        if label:
            return f" — layer{'s' if len(layers) > 1 else ''} {_span(layers)}: {label}"
    return ""


def _span(layers: list[int]) -> str:
    """[11, 12, 13, 17] -> "11-13,17"."""
    out, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            out.append(f"{start}-{x}" if x != start else str(x))
            start = None
    return ",".join(out)


def _count(share: float, n: int | None) -> str:
    """"changed 12/12 (kept 0.00)" from the share kept and the number of prompts."""
    if not n:
        return f"kept {share:.2f}"
    return f"changed {round((1 - share) * n)}/{n} (kept {share:.2f})"


def reading(report: dict) -> str:
    """One honest paragraph from the numbers: who wins on what, and at what price."""
    ok = [r for r in report["arms"] if not r["error"]]
    changed = [r for r in ok if r["cost"]["params_changed"] > 0]
    failed = [r["name"] for r in report["arms"] if r["error"]]
    if not changed:
        return "No arm changed the model." + (f" Failed: {', '.join(failed)}." if failed else "")
    out = _winners(changed) + _harms(report, changed) + _costs(changed)
    if failed:
        out.append(f"Failed arms: {', '.join(failed)}.")
    out += _matched_reading(report)
    return " ".join(out)


def _best(changed: list[dict], key: str, higher: bool = True):
    """(best value of metric ``key``, the arms that reach it), or None when no arm has it."""
    vals = [(r["metrics"][key], r["name"]) for r in changed if r["metrics"].get(key) is not None]
    if not vals:
        return None
    v = max(vals)[0] if higher else min(vals)[0]
    return v, [n for x, n in vals if math.isclose(x, v, rel_tol=1e-9, abs_tol=1e-12)]


def _winners(changed: list[dict]) -> list[str]:
    """Who is best on each behaviour metric, and who did least (and most) collateral damage."""
    out = []
    for key, label in (("efficacy", "efficacy"), ("generalisation", "generalisation (held-out prompts)"),
                       ("spelling", "target-spelling rate")):
        b = _best(changed, key)
        if b:
            if key == "spelling":
                out.append(f"Best {label}: {', '.join(b[1])} ({b[0]:.2f}).")
                continue
            ps = ", ".join(f"{r['name']} {r['metrics'][key + '_p']:.2f}"
                           for r in sorted(changed, key=lambda r: -r["metrics"][key + "_p"]) if r["name"] in b[1])
            out.append(f"Best {label}: {', '.join(b[1])} ({b[0]:.2f} of prompts flipped; mean P(target) {ps}).")
    for key, label in (("efficacy_gen", "generated efficacy"), ("generalisation_gen", "generated held-out success")):
        b = _best(changed, key)
        if b:
            out.append(f"Best {label} (greedy, no teacher forcing): {', '.join(b[1])} ({b[0]:.2f}).")
    bad = [f"{r['name']} ({r['metrics']['degenerate']:.2f})" for r in changed
           if (r["metrics"].get("degenerate") or 0) > 0]
    if bad:
        out.append(f"Degenerate generations: {', '.join(bad)}.")
    b = _best(changed, "kl", higher=False)
    if b:
        worst = _best(changed, "kl", higher=True)
        out.append(f"Least collateral damage on neutral text: {', '.join(b[1])} (KL {b[0]:.4f}); "
                   f"most: {', '.join(worst[1])} (KL {worst[0]:.4f}).")
    return out


def _harms(report: dict, changed: list[dict]) -> list[str]:
    """Arms that changed specificity answers, lost neighbour facts or missed efficacy prompts."""
    out = []
    counts = report.get("counts", {})
    for key, label, n in (("specificity", "changed the top-1 answer on specificity prompts", counts.get("specificity")),
                          ("neighbourhood", "lost neighbour facts", None)):
        hurt = [f"{r['name']} ({_count(r['metrics'][key], n)})" for r in changed
                if r["metrics"].get(key) is not None and r["metrics"][key] < 1.0]
        if hurt:
            out.append(f"{label[0].upper() + label[1:]}: {', '.join(hurt)}.")
    missed = [f"{r['name']} ({r['metrics']['efficacy']:.2f})" for r in changed
              if r["metrics"].get("efficacy") is not None and r["metrics"]["efficacy"] < 1.0]
    if missed:
        out.append(f"Did not flip every efficacy prompt: {', '.join(missed)}.")
    return out


def _costs(changed: list[dict]) -> list[str]:
    """The cheapest and slowest arm, and the notes the arms left."""
    fast = min(changed, key=lambda r: r["cost"]["wall_s"])
    slow = max(changed, key=lambda r: r["cost"]["wall_s"])
    out = [f"Cheapest: {fast['name']} ({fast['cost']['wall_s']:.1f} s, "
           f"{fast['cost']['params_changed']:,} parameters changed); slowest: {slow['name']} "
           f"({slow['cost']['wall_s']:.1f} s)."]
    notes = sorted({n for r in changed for n in r["cost"].get("notes", [])})
    if notes:
        out.append("Notes: " + "; ".join(notes) + ".")
    return out


def _matched_reading(report: dict) -> list[str]:
    """For a tuned comparison: who wins at each KL level (test numbers of validation-chosen points)."""
    out = []
    for lvl in report.get("kl_levels", []) if report.get("search") else []:
        got = []
        for name, f in report["search"].items():
            n = f["matched"].get(str(lvl))
            sd = f["seeds"].get(str(n)) if n is not None else None
            if sd and sd.get("success_mean") is not None:
                got.append((sd["success_mean"], name))
        if got:
            top = max(got)
            rest = ", ".join(f"{n} {v:.2f}" for v, n in sorted(got, reverse=True)[1:])
            out.append(f"At KL ≤ {lvl:g} (chosen on validation): {top[1]} {top[0]:.2f} on test"
                       + (f"; then {rest}." if rest else "."))
        else:
            out.append(f"At KL ≤ {lvl:g}: no family had a validation trial that low.")
    return out


def plot(report: dict, path) -> None:
    """Shares (efficacy, generalisation, specificity, ...) per arm, KL per arm, wall time per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["arms"] if not r["error"]]
    names = [r["name"] for r in ok]
    shares = [(k, lbl) for k, lbl in (("efficacy", "efficacy"), ("generalisation", "generalisation"),
                                      ("specificity", "specificity"), ("neighbourhood", "neighbourhood"),
                                      ("spelling", "spelling")) if _present(report, k)]
    tuned = bool(report.get("search"))
    fig, axes = plt.subplots(1, 3 + tuned, figsize=(4 + 1.6 * max(len(names), 2) * 1.5 + 5 * tuned, 4.2),
                             gridspec_kw={"width_ratios": [2, 1, 1] + [1.6] * tuned})
    ax = axes[0]
    width = 0.8 / max(len(shares), 1)
    for i, (k, lbl) in enumerate(shares):
        vals = [r["metrics"].get(k) or 0.0 for r in ok]
        ax.bar([x + i * width for x in range(len(ok))], vals, width, label=lbl)
    ax.set_xticks([x + width * (len(shares) - 1) / 2 for x in range(len(ok))], names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of prompts")
    ax.set_title("does it work, does it spread", pad=24)
    if shares:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(shares), frameon=False)
    kls = [r["metrics"].get("kl") or 0.0 for r in ok]
    axes[1].bar(names, kls, color="tab:red")
    axes[1].set_title("KL(original ‖ arm), neutral text")
    if any(k > 0 for k in kls):
        axes[1].set_yscale("symlog", linthresh=max(min(k for k in kls if k > 0), 1e-5))
    axes[2].bar(names, [r["cost"]["wall_s"] for r in ok], color="tab:gray")
    axes[2].set_title("wall time (s)")
    if tuned:
        fronts(axes[3], report)
    for a in axes[1:3]:
        a.tick_params(axis="x", rotation=30)
        for lab in a.get_xticklabels():
            lab.set_ha("right")
    fig.suptitle(f"{report['task']} on {Path(report['model']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)




def fronts(ax, report: dict) -> None:
    """Success (test) against KL (log scale): each family's validation front, measured on test."""
    floor = 1e-6
    for name, f in report["search"].items():
        pts = sorted((max(p["kl"], floor), p["success"]) for p in f["test"].values()
                     if "error" not in p and p.get("success") is not None and p.get("kl") is not None)
        if not pts:
            continue
        xs, ys = zip(*pts)
        line = ax.plot(xs, ys, marker="o", label=name)[0]
        for sd in f["seeds"].values():  # the matched picks: mean ± sd over seeds
            if sd.get("success_mean") is not None and sd.get("kl_mean") is not None:
                ax.errorbar(max(sd["kl_mean"], floor), sd["success_mean"], yerr=sd.get("success_sd") or 0,
                            xerr=sd.get("kl_sd") or 0, fmt="s", color=line.get_color(), ms=7, mfc="none")
    none = next((r for r in report["arms"] if r["name"] == "none" and not r["error"]), None)
    if none:
        got = next((none["metrics"][k] for k in ("generalisation_gen", "efficacy_gen", "spelling")
                    if none["metrics"].get(k) is not None), None)
        if got is not None:
            ax.axhline(got, color="gray", ls=":", lw=1, label="original")
    for lvl in report.get("kl_levels", []):
        ax.axvline(lvl, color="tab:red", ls="--", lw=0.6, alpha=0.5)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("KL(original ‖ arm), neutral text (test)")
    ax.set_ylabel("success (test, generated)")
    ax.set_title("fronts: chosen on validation, measured on test")
    ax.legend(fontsize=7, loc="best")
