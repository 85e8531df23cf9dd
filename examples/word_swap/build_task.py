"""Write task.json for SmolLM2 swapping 30 words for near-synonyms: "water" -> "liquid", "often" -> "frequently".

The "specific tokens" behaviour of surgeon map (issue 11): wherever the model
would write one of the original words (``words.PAIRS``) it writes the target
word instead. Every probe's prompt is one where SmolLM2-135M-Instruct's greedy
next token *is* the original word (checked here with the base model), so the
test split measures the swap and nothing else: the base model scores 0 on it
by construction, and a probe succeeds when the arm's greedy answer says the
target and not the original (surgeon.study.generate.generated_success).

Prompts come from two places, both written for surgeon (no downloads):

* contexts from the first 189 paragraphs of ``surgeon/data/neutral_en.txt``
  (the task's neutral texts, KL and perplexity, are the last 32 paragraphs):
  every position where the base model's top-1 next token is an original
  word, cut back to at most ~50 words at a sentence start and checked again;
* the hand-written prompts of ``words.PROMPTS``.

Paragraphs (and hand-written prompts) are split 5 : 2 : 3 into train,
validation and test, so no context is shared between splits. Per word at most
:data:`TEST_PER_WORD` test and :data:`VAL_PER_WORD` validation probes, so the
frequent words do not drown the rare ones. Training examples are every
occurrence in the train paragraphs where the text or the model has an
original word (prompt -> " target"); the efficacy probes are two per word of
those whose prompt makes the base model write the original.

    .venv/bin/python examples/word_swap/build_task.py   (6 minutes on 2 busy cores)
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

from surgeon import data
from surgeon.fixtures import fixture
from surgeon.runtime import load

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from words import PAIRS, PROMPTS  # noqa: E402

MINED = 189  # paragraphs of neutral_en mined for contexts; the task's neutral texts are the last 32 of 229
MAX_WORDS = 50  # a mined prompt keeps at most about this many words (cut at a sentence start)
TEST_PER_WORD, VAL_PER_WORD, TRAIN_PER_WORD = 4, 2, 12
SPLITS = ["train"] * 5 + ["validation"] * 2 + ["test"] * 3  # paragraph / prompt index mod 10

SPECIFICITY = ["The capital of France is", "Two plus two equals", "The first month of the year is",
               "The largest planet in our solar system is", "She opened the door and",
               "The chemical symbol for gold is", "Monday is the first day of the", "A triangle has three"]
SPECIFICITY_VAL = ["The capital of Italy is", "The last month of the year is", "He closed the window and",
                   "A square has four"]


def token_ids(tok) -> dict[int, str]:
    """Original word's token id -> the word; every word of PAIRS must be one token (with its leading space)."""
    out = {}
    for o, t in PAIRS.items():
        a, b = (tok(" " + w, add_special_tokens=False)["input_ids"] for w in (o, t))
        if len(a) != 1 or len(b) != 1:
            raise SystemExit(f"{o} -> {t}: not one token each ({a}, {b}) in this tokenizer")
        out[a[0]] = o
    return out


@torch.no_grad()
def top1(rt, text: str) -> tuple[list[int], list[int]]:
    """The text's token ids and the model's top-1 next token after each of them."""
    ids = rt.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :256]
    return ids[0].tolist(), rt.model(ids.to(rt.device)).logits[0].argmax(-1).tolist()


def shorten(prefix: str) -> str:
    """At most about MAX_WORDS words, starting at a sentence start when the prefix is longer."""
    words = prefix.split(" ")
    if len(words) <= MAX_WORDS:
        return prefix
    tail = " ".join(words[-MAX_WORDS:])
    m = re.search(r"(?<=[.!?] )[A-Z]", tail)
    return tail[m.start():] if m else tail


def mine(rt, originals: dict[int, str]) -> tuple[dict, dict]:
    """(probes, training examples) per split from the neutral_en paragraphs; probes are re-checked once shortened."""
    probes, train = defaultdict(list), []
    for i, para in enumerate(data.texts("neutral_en", MINED)):
        split = SPLITS[i % 10]
        ids, am = top1(rt, para)
        for pos in range(2, len(ids)):
            nxt = ids[pos + 1] if pos + 1 < len(ids) else None
            word = originals.get(am[pos]) or originals.get(nxt)
            if word is None:
                continue
            prompt = shorten(rt.tokenizer.decode(ids[:pos + 1]))
            if split == "train":
                train.append((word, prompt))
            elif am[pos] in originals:
                probes[split].append((word, prompt))
    for split in ("validation", "test"):  # the shortened prompt must still make the base model write the word
        probes[split] = [(w, p) for w, p in probes[split] if originals.get(top1(rt, p)[1][-1]) == w]
    return probes, train


def written(rt, originals: dict[int, str]) -> dict:
    """The hand-written prompts whose base top-1 next token is an original word, per split."""
    out = defaultdict(list)
    for i, p in enumerate(PROMPTS):
        word = originals.get(top1(rt, p)[1][-1])
        if word:
            out[SPLITS[(i * 7) % 10]].append((word, p))
    return out


def capped(items: list, per_word: int, seed: int) -> list:
    """At most ``per_word`` (word, prompt) items per word, drawn in a fixed random order; prompts unique."""
    items = sorted(set(items))
    random.Random(seed).shuffle(items)
    seen, count, out = set(), defaultdict(int), []
    for w, p in items:
        if p not in seen and count[w] < per_word:
            seen.add(p)
            count[w] += 1
            out.append((w, p))
    return sorted(out, key=lambda x: (list(PAIRS).index(x[0]), x[1]))


def probe(w: str, p: str) -> dict:
    return {"prompt": p, "target": " " + PAIRS[w], "original": " " + w}


def main() -> None:
    rt = load(fixture("smollm2"))
    originals = token_ids(rt.tokenizer)
    mined, train = mine(rt, originals)
    hand = written(rt, originals)
    test = capped(mined["test"] + hand["test"], TEST_PER_WORD, 0)
    val = capped(mined["validation"] + hand["validation"], VAL_PER_WORD, 1)
    train = capped(train + hand["train"], TRAIN_PER_WORD, 2)
    held = {p for _, p in test + val}
    train = [(w, p) for w, p in train if p not in held]
    said = [(w, p) for w, p in train if originals.get(top1(rt, p)[1][-1]) == w]
    task = {
        "name": "word_swap",
        "description": "Write 30 words as near-synonyms (water -> liquid, often -> frequently, many -> numerous, ...)",
        "train": [{"prompt": p, "completion": " " + PAIRS[w]} for w, p in train],
        "efficacy": [probe(w, p) for w, p in capped(said, 2, 3)],  # trained on, the base says the original
        "generalisation": [probe(w, p) for w, p in test],
        "specificity": [{"prompt": p} for p in SPECIFICITY],
        "neutral": {"corpus": "neutral_en", "texts": 16, "from": "end"},
        "edit": {"pairs": PAIRS},
        "validation": {"generalisation": [probe(w, p) for w, p in val],
                       "specificity": [{"prompt": p} for p in SPECIFICITY_VAL],
                       "neutral": {"corpus": "neutral_en", "texts": 8, "from": "end", "skip": 16}},
        "map": {"behaviour": "specific tokens (word swap)",
                "advice": "output projection tuning (LoRA on lm_head)", "advice_arm": "head", "model": "smollm2",
                "arms": ["none", "head=lora roles=lm_head",
                         "embed=full roles=embed",  # tied: embed is lm_head, one matrix trained through both uses
                         "rows=edit:examples/word_swap/alias_arm.py",
                         "lora_mid=lora layers=10-20 roles=attn+mlp"]},
    }
    (HERE / "task.json").write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    words = {w for w, _ in test}
    print(f"wrote {HERE / 'task.json'}: {len(task['train'])} training examples, {len(test)} test probes "
          f"({len(words)} of {len(PAIRS)} words), {len(val)} validation probes; test probes from hand-written "
          f"prompts: {sum(p in PROMPTS for _, p in test)}")


if __name__ == "__main__":
    main()
