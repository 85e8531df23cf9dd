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

``source`` says where the words come from: ``train``, the task's training
texts, most frequent first (the ``words`` most frequent); ``vocab``, every
word the tokenizer already holds as one space-led token and the rules respell
(Gemma-3: 2,653 Russian tokens; in id order, the first ``words``), keeping
only tokens after which the model itself ends the word with probability at
least ``final`` (next token space-led or punctuation, mean over two
contexts): ``" дерев"`` or ``" П"`` are pieces, and their alias would write
``деревъне``. In the
unedited Gemma-3's generations 117 of 132 words that take a final ъ are such
single tokens: that share is what aliasing can reach; the rest are split into
pieces, and a piece cannot know that its word ends there.
"""

import json
from collections import Counter
from pathlib import Path

KNOBS = {"source": ["choice", "train", "vocab"], "words": ["choice", 400, 1500, 4000], "boost": ["float", 0.05, 0.3],
         "final": ["float", 0.3, 0.9]}
CONTEXTS = ("", "Он сказал, что")  # where a candidate token is read to ask whether the model ends the word after it


def edit(ck, task, rules="prereform_ru", words=400, boost=0.1, source="train", final=0.5):
    from transformers import AutoTokenizer

    from surgeon.edits.tokens import add_tokens
    from surgeon.study.spelling import get

    rs = get(rules)
    tok = AutoTokenizer.from_pretrained(str(ck.path))
    candidates = _from_train(rs, task) if source == "train" else _from_vocab(rs, tok, ck, final)
    pairs, old_ids, seen = [], [], set()
    for modern, old in candidates:
        ids = tok(" " + modern, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and old not in seen:
            seen.add(old)
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
    ck.record("alias_rows", source=source, words=len(pairs), boost=boost, final=final, added=len(added.added),
              reused=len(added.skipped), example=[f"{m}->{o}" for m, o in pairs[:10]])


def _from_train(rs, task):
    """(modern, target) words the rules respell in the task's training texts, most frequent first."""
    doc = json.loads(Path(task).read_text(encoding="utf-8"))
    counts = Counter()
    for e in doc["train"]:
        if "text" not in e:
            continue
        src = rs.source(e["text"])
        for c in rs.changes(src):
            if c.start > 0 and src[c.start - 1] == " ":
                counts[(c.source, c.target)] += 1
    return [pair for pair, _ in counts.most_common()]


def _from_vocab(rs, tok, ck, final):
    """(modern, target) for each space-led one-token word of the vocabulary that the rules respell and
    after which the model ends the word with probability ≥ ``final``."""
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    out, ids = [], []
    for i, text in enumerate(texts):
        word = text[1:]
        if text[:1] != " " or not word.isalpha() or len(rs.tokens(word)) != 1:
            continue
        target = rs.convert(word)
        if target != word:
            out.append((word, target))
            ids.append(i)
    p_end = _p_word_end(ck, tok, ids, texts)
    return [pair for pair, p in zip(out, p_end) if p >= final]


def _p_word_end(ck, tok, ids, texts, batch=256):
    """P(the next token starts a new word or is punctuation) after each token id, mean over :data:`CONTEXTS`."""
    import torch

    from surgeon.runtime import load

    boundary = torch.tensor([t[:1].isspace() or (t[:1] != "" and not t[:1].isalnum()) for t in texts])
    rt = load(ck)
    total = torch.zeros(len(ids))
    for ctx in CONTEXTS:
        head = tok(ctx)["input_ids"]
        rows = [head + [i] for i in ids]
        for s in range(0, len(rows), batch):
            with torch.no_grad():  # the head's weight wants gradients: without this every batch's graph is kept
                hidden, _ = rt.states(rows[s:s + batch])
                lp = torch.log_softmax(rt.head(hidden[:, -1]), -1)
                total[s:s + batch] += lp[:, :len(boundary)][:, boundary].exp().sum(-1)
    del rt
    return (total / len(CONTEXTS)).tolist()
