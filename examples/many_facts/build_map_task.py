"""The facts row of `surgeon map`: 40 counterfactual facts from the shipped SmolLM2 fact set as one task.

    python examples/many_facts/build_map_task.py        # writes examples/many_facts/task.json

The first 40 requests of the fact set's *test* split (five relations, facts
SmolLM2 answers correctly by greedy generation; surgeon/data/facts/smollm2.json)
are edited together. Each fact has two held-out paraphrases and three
neighbour prompts (same template, other subjects, whose own answer must
survive). The first paraphrase and the first two neighbours are test probes;
the second paraphrase and the third neighbour are validation probes, which is
all `compare --budget` ever tunes on. Test: 40 edit prompts (efficacy), 40
paraphrases and the neighbours; validation: 40 paraphrases and the neighbours
(a neighbour shared by several facts is kept once, in the split that meets it first).
"""

import json
from pathlib import Path

from surgeon.study import facts as F
from surgeon.study.task import Task

N = 40
HERE = Path(__file__).parent


def probe(p) -> dict:
    return {"prompt": p.prompt, "target": p.target, "original": p.original}


def unique(probes: list[dict], taken: set[str]) -> list[dict]:
    """Probes whose prompt is not in ``taken`` (neighbours are shared between facts), first one of each."""
    out = []
    for p in probes:
        if p["prompt"] not in taken:
            taken.add(p["prompt"])
            out.append(p)
    return out


def main() -> None:
    fs = F.facts(Task.load(F.shipped("smollm2")), "test")[:N]
    taken = {f.prompt for f in fs} | {p.prompt for f in fs for p in f.paraphrases}
    test_neighbours = unique([probe(n) for f in fs for n in f.neighbours[:2]], taken)
    val_neighbours = unique([probe(n) for f in fs for n in f.neighbours[2:]], taken)
    doc = {
        "name": f"facts-{N}",
        "description": f"{N} counterfactual facts from the shipped SmolLM2 fact set (test split), edited together",
        "train": [{"prompt": f.prompt, "completion": f.target, "subject": f.subject} for f in fs],
        "efficacy": [{"prompt": f.prompt, "target": f.target, "original": f.true} for f in fs],
        "generalisation": [probe(f.paraphrases[0]) for f in fs],
        "specificity": test_neighbours,
        "neutral": {"corpus": "neutral_en", "texts": 16, "from": "end"},
        "map": {"behaviour": "facts", "advice": "mid-layer MLPs (ROME, MEMIT)", "advice_arm": "memit",
                "model": "smollm2",
                "arms": ["none", "memit=edit:examples/many_facts/edit.py",
                         "ft_l=full roles=mlp.down", "lora=lora roles=attn+mlp"]},
        "validation": {
            "generalisation": [probe(f.paraphrases[1]) for f in fs],
            "specificity": val_neighbours,
            "neutral": {"corpus": "neutral_en", "texts": 4, "from": "end", "skip": 16},
        },
    }
    Task.from_dict(doc)  # the format's own checks
    out = HERE / "task.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {N} facts; test {len(doc['generalisation'])} paraphrases, "
          f"{len(doc['specificity'])} neighbours; validation {len(doc['validation']['generalisation'])} "
          f"paraphrases, {len(doc['validation']['specificity'])} neighbours")


if __name__ == "__main__":
    main()
