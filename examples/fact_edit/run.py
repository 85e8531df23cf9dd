"""Rank-one edits vs fine-tuning on four counterfactual facts, SmolLM2-135M-Instruct.

    python examples/fact_edit/run.py [--out examples/fact_edit/report] [--quick]

Runs ``surgeon compare`` with the arms below (each from the same original,
each in its own process) and prints the table; report.json / report.md /
report.png land in ``--out``. The same from the shell:

    surgeon compare examples/fact_edit/facts.json --model "$(surgeon fixture smollm2)" \\
        --arm none --arm "rome=edit:examples/fact_edit/rome_arm.py layer=6" ... --out REPORT
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # arms name the script relative to the repository root, as a user types it
ARM_SCRIPT = "examples/fact_edit/rome_arm.py"

ARMS = [
    "none",
    f"rome=edit:{ARM_SCRIPT} layer=6",
    "ft_l=full layers=6 roles=mlp.down steps=40 lr=5e-4 max_delta=5e-3",
    "lora_0-6=lora layers=0-6 roles=attn+mlp rank=8 steps=40",
    "lora_18-23=lora layers=18-23 roles=attn+mlp rank=8 steps=40",
    "lora_head=lora roles=lm_head rank=8 steps=40",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "report")
    ap.add_argument("--quick", action="store_true", help="Only none, rome and lora_0-6 (a few minutes).")
    ap.add_argument("--identity-c", action="store_true", help="Add ROME with C = identity (what C buys).")
    a = ap.parse_args()
    out = a.out.absolute()

    from surgeon._threads import configure

    configure(lazy=True)  # before torch loads: passive OpenMP waits, SURGEON_THREADS threads
    from surgeon.fixtures import fixture
    from surgeon.study.compare import compare

    os.chdir(ROOT)
    arms = [x for x in ARMS if not a.quick or x.split("=")[0] in ("none", "rome", "lora_0-6")]
    if a.identity_c:
        arms.insert(2, f"rome_identity=edit:{ARM_SCRIPT} layer=6 covariance=identity")
    compare(HERE / "facts.json", fixture("smollm2"), arms, out, overwrite=True)
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"report: {out / 'report.md'} (table), {out / 'report.png'} (plot), {out / 'report.json'} (every number)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
