"""Added tokens + a hand edit: pre-reform word forms as new tokens that alias the modern words.

For each frequent word the rules respell (``лес`` -> ``лѣсъ``) whose modern
form, with its leading space, is one token of the original vocabulary, the
pre-reform form is added as a token (:func:`surgeon.edits.tokens.add_tokens`)
and its embedding row is set to the modern token's row times ``1 + boost``.
Gemma-3 and SmolLM2 tie their head to their embedding, so one row does both jobs: read as
input, the new token means what the modern word meant (RMSNorm removes most
of the scale); as output, its logit is ``(1 + boost)`` times the modern
token's, so wherever the model was about to write the modern word (a positive
logit) it now writes the pre-reform one. Words not in the list, words split
into several tokens, and sentence-initial (space-less) forms are untouched:
the edit covers the vocabulary it was given and nothing else.
"""

import json
from collections import Counter
from pathlib import Path


def edit(ck, task, rules="prereform_ru", words=400, boost=0.1):
    from transformers import AutoTokenizer

    from surgeon.edits.tokens import add_tokens
    from surgeon.study.spelling import get

    rs = get(rules)
    doc = json.loads(Path(task).read_text(encoding="utf-8"))
    counts = Counter()
    for e in doc["train"]:
        if "text" not in e:
            continue
        src = rs.source(e["text"])
        for c in rs.changes(src):
            if c.start > 0 and src[c.start - 1] == " ":
                counts[(c.source, c.target)] += 1
    tok = AutoTokenizer.from_pretrained(str(ck.path))
    pairs, old_ids = [], []
    for (modern, old), _ in counts.most_common():
        ids = tok(" " + modern, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and " " + old not in [" " + o for _, o in pairs]:
            pairs.append((modern, old))
            old_ids.append(ids[0])
        if len(pairs) >= words:
            break
    del tok
    added = add_tokens(ck, [" " + o for _, o in pairs], init="subtoken_mean")
    keys = ["embed"] if ck.tied else ["embed", "lm_head"]  # an untied head gets the same treatment
    for key in keys:
        rows = ck[key]
        for (_modern, old), oid in zip(pairs, old_ids):
            new_id = added.added.get(" " + old, added.skipped.get(" " + old))
            rows[new_id] = rows[oid] * (1.0 + boost)
        ck[key] = rows
    ck.record("alias_rows", words=len(pairs), boost=boost, added=len(added.added), reused=len(added.skipped),
              example=[f"{m}->{o}" for m, o in pairs[:10]])
