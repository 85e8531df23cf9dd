"""Write task.json for SmolLM2 answering "Is 14 greater than 9?" with the right Yes or No.

The "simple logical behaviour" of surgeon map (issue 11). Why this one: it is
a rule, not a fact list (the answer follows from the two numbers, so training
on some pairs and testing on pairs never trained on asks whether the rule was
learnt, not memorised); a 135M model holds what it needs (number tokens are
ordered in its embeddings) but does not apply it: SmolLM2-135M-Instruct
answers " No" to nearly every question in this format, so its generated
success on the balanced test split sits near chance (printed by this script),
and a constant answer can never score above one half. Antonyms or negated
facts were the other candidates; the base model already answers most antonym
prompts, which leaves nothing to teach.

Questions: the numbers 0-19, both relations ("greater than", "less than") in
the fixed format ``Question: Is A greater than B? Answer Yes or No.\\nAnswer:``.
The 190 unordered pairs {A, B} are split 130 : 20 : 40 into train, validation
and test, so no pair, in either order or relation, is in two splits. Each
validation and test pair gives one question whose answer is Yes and one whose
answer is No (the relation drawn at random); training pairs give all four.
A probe's ``original`` is the wrong answer (not the base model's answer, which
is right half the time): generated success = the greedy answer says the right
word and not the wrong one.

    .venv/bin/python examples/number_compare/build_task.py   (3 minutes on 2 busy cores)
"""

from __future__ import annotations

import json
import random
from itertools import combinations
from pathlib import Path

from surgeon.fixtures import fixture
from surgeon.runtime import load
from surgeon.study.generate import generated_success
from surgeon.study.task import Task

HERE = Path(__file__).parent
TEMPLATE = "Question: Is {a} {rel} {b}? Answer Yes or No.\nAnswer:"
NUMBERS = range(20)
TEST_PAIRS, VAL_PAIRS = 40, 20

SPECIFICITY = [TEMPLATE.replace("Is {a} {rel} {b}", q) for q in (
    "Is Paris the capital of France", "Is the sun a planet", "Is water wet", "Is a cat a dog")] + [
    "The capital of France is", "Two plus two equals", "The first month of the year is",
    "She opened the door and"]
SPECIFICITY_VAL = [TEMPLATE.replace("Is {a} {rel} {b}", q) for q in ("Is Rome in Italy", "Is ice hot")] + [
    "The capital of Italy is", "He closed the window and"]


def questions(a: int, b: int) -> list[tuple[str, str]]:
    """The four questions about the pair a < b: (prompt, right answer)."""
    q = TEMPLATE.format
    return [(q(a=b, rel="greater than", b=a), " Yes"), (q(a=a, rel="less than", b=b), " Yes"),
            (q(a=a, rel="greater than", b=b), " No"), (q(a=b, rel="less than", b=a), " No")]


def probe(prompt: str, answer: str) -> dict:
    return {"prompt": prompt, "target": answer, "original": " No" if answer == " Yes" else " Yes"}


def held_out(pairs: list, rng: random.Random) -> list[dict]:
    """One Yes and one No question per pair, each relation drawn at random."""
    out = []
    for a, b in pairs:
        q = questions(a, b)
        out += [probe(*q[rng.randrange(2)]), probe(*q[2 + rng.randrange(2)])]
    return out


def main() -> None:
    rng = random.Random(0)
    pairs = list(combinations(NUMBERS, 2))
    rng.shuffle(pairs)
    test, val, train = pairs[:TEST_PAIRS], pairs[TEST_PAIRS:TEST_PAIRS + VAL_PAIRS], pairs[TEST_PAIRS + VAL_PAIRS:]
    train_q = [q for a, b in sorted(train) for q in questions(a, b)]
    task = {
        "name": "number_compare",
        "description": "Answer Yes or No rightly to 'Is A greater/less than B?' for numbers 0-19 (pairs held out)",
        "train": [{"prompt": p, "completion": c} for p, c in train_q],
        "efficacy": [probe(p, c) for p, c in train_q[::13]],  # 40 questions trained on
        "generalisation": held_out(sorted(test), rng),
        "specificity": [{"prompt": p} for p in SPECIFICITY],
        "neutral": {"corpus": "neutral_en", "texts": 16, "from": "end"},
        "validation": {"generalisation": held_out(sorted(val), rng),
                       "specificity": [{"prompt": p} for p in SPECIFICITY_VAL],
                       "neutral": {"corpus": "neutral_en", "texts": 8, "from": "end", "skip": 16}},
        "map": {"behaviour": "logic (number comparison)", "advice": "LoRA on mid layers", "advice_arm": "lora_mid",
                "model": "smollm2",
                "arms": ["none", "lora_mid=lora layers=10-20 roles=attn+mlp", "lora=lora roles=attn+mlp",
                         "head=lora roles=lm_head", "full=full roles=mlp.down"]},
    }
    path = HERE / "task.json"
    path.write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    t = Task.load(path)
    rt = load(fixture("smollm2"))
    for name, split in (("test", t.split("test")), ("validation", t.split("validation"))):
        g = generated_success(rt, split.generalisation)
        answers = [r["generated"].split()[0] if r["generated"].split() else "" for r in g.rows]
        print(f"base model, {name}: generated success {g.rate.k}/{g.rate.n}; first words "
              f"{ {w: answers.count(w) for w in sorted(set(answers))} }")
    print(f"wrote {path}: {len(task['train'])} training examples, {len(task['generalisation'])} test and "
          f"{len(task['validation']['generalisation'])} validation probes")


if __name__ == "__main__":
    main()
