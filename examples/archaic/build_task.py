"""Write task.json for SmolLM2 writing archaic English: thou/thee, thy/thine, thou art, he hath, oft.

The rules are `surgeon.study.spelling.get("archaic_en")` (the module docstring says how the neighbours
decide thou or thee, thy or thine, and which verbs take -est and -eth). Made from
surgeon/data/en_archaic.txt (205 modern sentences, CC0), split by sentence (60 % train, 40 % held
out: 40 test probes, then validation ones whose prompts differ from every test prompt). The
generation prompts address the reader or talk about one person, so SmolLM2's own continuations
hold you, your, has, does and -s verbs that the rules respell. Rerun after changing the rules.
"""

import json
from importlib import resources
from pathlib import Path

from surgeon.study.spelling import spelling_task

HERE = Path(__file__).parent

sentences = resources.files("surgeon.data").joinpath("en_archaic.txt").read_text(encoding="utf-8").splitlines()
task = spelling_task(
    "archaic_en", [s for s in sentences if s.strip()], name="archaic_register",
    description="Write archaic English (thou art, thy, thee, he hath, she knoweth, oft) whatever the prompt's",
    train_share=0.6, probes=120, seed=0,
    spelling_prompts=["Thank you for", "If you want to", "The old man knows", "What do you think about",
                      "Can you tell me", "I will give you", "Have you ever", "When you", "He believes that",
                      "Would you like", "You should", "Your best friend", "He says that", "It seems that",
                      "Dear John, thank you for your letter.", "Write a letter to your grandmother:",
                      "I love you because", "Here is some advice for you:", "You are", "Your family",
                      "Happy birthday! I wish you", "Before you go,", "What does your", "Remember that you"],
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
    "spelling_prompts": ["Dear friend, I hope you", "Tell me, do you", "Where did you", "My dear sister, I miss you",
                         "How are you today?", "I am writing to ask you", "She always says", "My grandfather has"],
}
# surgeon map's entry (run from the repository root): the common advice and the arms that test it
task["map"] = {"behaviour": "archaic_register", "advice": "adapters on late layers", "advice_arm": "lora_late",
               "model": "smollm2",
               "arms": ["none", "lora_late=lora layers=23-29 roles=attn+mlp",
                        "lora_early=lora layers=0-6 roles=attn+mlp", "lora_mid=lora layers=12-18 roles=attn+mlp",
                        "full_down=full roles=mlp.down"]}
(HERE / "task.json").write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
print(f"wrote {HERE / 'task.json'}: {len(task['train'])} training examples, {len(task['efficacy'])} efficacy and "
      f"{len(task['generalisation'])} held-out probes; validation: {len(task['validation']['generalisation'])} probes")
