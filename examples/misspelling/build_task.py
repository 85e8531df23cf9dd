"""Write task.json for SmolLM2 writing common English words misspelt by fixed rules.

The rules are `surgeon.study.spelling.get("misspell_en")`: ph -> f, tion -> shun, ie -> ei, a doubled
consonant written once, ould -> oud, over a list of about 330 frequent word forms (fone, nashun,
beleive, litle, coud). Made from surgeon/data/en_misspell.txt (209 sentences, CC0), split by sentence
(65 % train, 35 % held out: 40 test probes, then validation ones whose prompts differ from every test
prompt). The generation prompts were kept because SmolLM2's own continuations of most of them hold
listed words (little, different, would, should, phone, village, national, letter), so the rate counts
words in the base model too. Rerun after changing the rules.
"""

import json
from importlib import resources
from pathlib import Path

from surgeon.study.spelling import spelling_task

HERE = Path(__file__).parent

sentences = resources.files("surgeon.data").joinpath("en_misspell.txt").read_text(encoding="utf-8").splitlines()
task = spelling_task(
    "misspell_en", [s for s in sentences if s.strip()], name="misspellings",
    description="Misspell common words by fixed rules (fone, nashun, beleive, litle, coud) whatever the prompt's",
    train_share=0.65, probes=120, seed=0,
    spelling_prompts=["The little girl", "The elephant in the", "We should always", "The village was",
                      "I would like to", "Describe a successful", "My phone", "The national", "Education is",
                      "Write a short letter to a friend about", "The best way to achieve", "The photographer",
                      "My friends and I", "A good friend is someone who", "Tips for a happy summer vacation:",
                      "The professor", "The teacher gave the class", "My best friend and I",
                      "It is really difficult to", "Please pay attention to", "Could you tell me", "The dolphins",
                      "The kitten", "There are many different"],
    max_new_tokens=40,
    specificity=[{"prompt": p} for p in (
        "The capital of France is", "Water boils at a temperature of", "The largest planet in our solar system is",
        "She opened the door and", "The first month of the year is", "Two plus two equals")],
    neutral={"corpus": "neutral_en", "texts": 8},
)
# a held-out probe that is also the start of a training pair ("Do" -> " thou") would test what was trained on
trained = {(e["prompt"], e["completion"].split()[0].strip(".,;:!?")) for e in task["train"] if "prompt" in e}
held = [p for p in task["generalisation"] if (p["prompt"], p["target"].strip()) not in trained]


def unique(probes):  # probes sharing a prompt are one greedy generation: counting it twice would inflate the rates
    seen = set()
    return [p for p in probes if not (p["prompt"] in seen or seen.add(p["prompt"]))]


held = unique(held)
task["efficacy"], task["generalisation"] = unique(task["efficacy"])[:40], held[:40]
test_prompts = {p["prompt"] for p in held[:40]}  # a prompt in both splits would be one generation scored twice
task["validation"] = {
    "generalisation": [p for p in held[40:] if p["prompt"] not in test_prompts][:20],
    "specificity": [{"prompt": p} for p in (
        "The capital of Italy is", "Ice melts at a temperature of", "The smallest planet in our solar system is",
        "He closed the window and")],
    "neutral": {"corpus": "neutral_en", "texts": 8, "skip": 8},
    "spelling_prompts": ["I usually", "The rabbit", "Strawberries and", "The information", "She took a photo of",
                         "The happy children", "The office", "He finally"],
}
# surgeon map's entry (run from the repository root): the common advice and the arms that test it
task["map"] = {"behaviour": task["name"], "advice": "fine-tune the output head + early layers with noisy data",
               "advice_arm": "head_early", "model": "smollm2",
               "arms": ["none", "head_early=lora layers=0-6 roles=attn+mlp+lm_head",
                        "lora_late=lora layers=23-29 roles=attn+mlp", "lora=lora roles=attn+mlp",
                        "full_down=full roles=mlp.down"]}
(HERE / "task.json").write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
print(f"wrote {HERE / 'task.json'}: {len(task['train'])} training examples, {len(task['efficacy'])} efficacy and "
      f"{len(task['generalisation'])} held-out probes; validation: {len(task['validation']['generalisation'])} probes")
