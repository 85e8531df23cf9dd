"""Print one table from compare report directories, with the spelling rate rescored per rule.

    python table.py report [another_report ...]

The spelling rate is recomputed from the generations each report stores, by
the task's rule set (``surgeon.study.spelling``), and split by rule; ``over`` counts
words carrying target-convention marks the rules would not put there
(``многоъ``), which count as misses. Rows from later directories replace rows
of the same name from earlier ones ("none" is the same original in each).
"""

import json
import sys
from pathlib import Path

from surgeon.study.spelling import get


def rows(dirs):
    out = {}
    for d in dirs:
        rep = json.loads((Path(d) / "report.json").read_text(encoding="utf-8"))
        rules = json.loads((Path(d) / "task.json").read_text(encoding="utf-8"))["spelling"]["rules"]
        for r in rep["arms"]:
            if r["error"] and r["name"] in out:
                continue
            out[r["name"]] = (r, get(rules))
    return out


def main(dirs):
    table = rows(dirs)
    rule_names = []
    for r, rs in table.values():
        if not r["error"]:
            for k in rs.score(r["details"]["spelling"]["generations"]).by_rule:
                if k not in rule_names:
                    rule_names.append(k)
    head = (["arm", "efficacy", "generalisation", "P(target)", "specificity", "KL", "ppl ×", "spelling"]
            + [f"{k}" for k in rule_names] + ["over", "wall s", "peak MB", "params changed"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, (r, rs) in table.items():
        if r["error"]:
            print(f"| {name} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        m, c = r["metrics"], r["cost"]
        s = rs.score(r["details"]["spelling"]["generations"])
        by = s.by_rule
        cells = [name, f"{m['efficacy']:.2f}", f"{m['generalisation']:.2f}",
                 f"{m['efficacy_p']:.3f} / {m['generalisation_p']:.3f}", f"{m['specificity']:.2f}",
                 f"{m['kl']:.4f}", f"{m['perplexity_ratio']:.3f}",
                 f"{s.rate:.2f} ({s.hits}/{s.applicable + s.over_marked})"]
        cells += [f"{by[k][0]}/{by[k][1]}" if k in by else "–" for k in rule_names]
        cells += [str(s.over_marked), f"{c['wall_s']:.0f}",
                  "–" if c["peak_rss_mb"] is None else f"{c['peak_rss_mb']:.0f}",
                  f"{c['params_changed']:,}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["report"])
