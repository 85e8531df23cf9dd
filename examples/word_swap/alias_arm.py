"""Hand edit of the word-swap task: each target word's embedding row becomes its original word's row, scaled.

For every pair of the task's ``edit.pairs`` (original -> target, one token
each) the target token's row is set to ``(1 + boost)`` times the original
token's row. SmolLM2 and Gemma-3 tie their head to their embedding, so the one
row does both jobs: as output, the target's logit becomes ``(1 + boost)``
times the original's, so wherever the original word was the top answer with a
positive logit the target now beats it; as input, the target token now reads
as the original word (RMSNorm removes most of the scale), so the target's own
meaning is lost. On an untied model the head rows get the same treatment
(``embed`` alone would change what the word means when read, not what is written).

``KNOBS`` declares what ``surgeon compare --budget N`` searches: ``boost``.
"""

import json
from pathlib import Path

KNOBS = {"boost": ["log", 0.005, 0.5]}


def edit(ck, task, boost=0.1):
    from transformers import AutoTokenizer

    pairs = json.loads(Path(task).read_text(encoding="utf-8"))["edit"]["pairs"]
    tok = AutoTokenizer.from_pretrained(str(ck.path))
    ids = []
    for original, target in pairs.items():
        a, b = (tok(" " + w, add_special_tokens=False)["input_ids"] for w in (original, target))
        if len(a) != 1 or len(b) != 1:
            raise ValueError(f"{original} -> {target}: each must be one token (got {a}, {b})")
        ids.append((a[0], b[0]))
    keys = ["embed"] if ck.tied else ["embed", "lm_head"]
    for key in keys:
        rows = ck[key]
        for a, b in ids:
            rows[b] = rows[a] * (1.0 + boost)
        ck[key] = rows
    ck.record("alias_rows", pairs=len(ids), boost=boost, tied=ck.tied)
