"""Write task.json for SmolLM2 switching from American to British spelling.

Made from surgeon/data/en_spelling.txt (CC0) with the en_gb rule set, split by
sentence (70 % train, 30 % held out). Rerun after changing the rules.
"""

import json
from importlib import resources
from pathlib import Path

from surgeon.study.spelling import spelling_task

HERE = Path(__file__).parent

sentences = resources.files("surgeon.data").joinpath("en_spelling.txt").read_text(encoding="utf-8").splitlines()
task = spelling_task(
    "en_gb", [s for s in sentences if s.strip()], name="british_spelling",
    description="Write British spelling (colour, centre, travelled, organise, grey) whatever the prompt's",
    probes=40, seed=0,
    spelling_prompts=["The walls of the old theater were painted", "In the center of our town there is",
                      "My neighbor's favorite hobby is", "Last summer we traveled to", "The color of the sky",
                      "She organized a party and", "Describe the behavior of", "He apologized because",
                      # 16 more, so each arm's spelling rate counts tens of words, not a handful
                      "My favorite color is", "The neighborhood where I grew up", "We analyzed the results and",
                      "The gray clouds over the harbor", "At the theater downtown", "The labor party",
                      "They canceled the trip because", "The jewelry in the catalog", "She realized that her",
                      "The traveler checked into", "Our honors program", "The defense lawyer",
                      "He memorized the", "The rumor about the", "In the fall, the leaves change color and",
                      "The center of the city"],
    max_new_tokens=40,
    specificity=[{"prompt": p} for p in (
        "The capital of France is", "Water boils at a temperature of", "The largest planet in our solar system is",
        "She opened the door and", "The first month of the year is", "Two plus two equals")],
    neutral={"corpus": "neutral_en", "texts": 8},
)
(HERE / "task.json").write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
print(f"wrote {HERE / 'task.json'}: {len(task['train'])} training examples, {len(task['efficacy'])} efficacy and "
      f"{len(task['generalisation'])} held-out probes")
