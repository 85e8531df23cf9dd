"""Write task.json for SmolLM2 switching from American to British spelling.

Made from surgeon/data/en_spelling.txt (CC0) with the en_gb rule set, split by
sentence (70 % train, 30 % held out). Rerun after changing the rules.
"""

from importlib import resources
from pathlib import Path

from surgeon.study.spelling import ENGLISH_SPECIFICITY, spelling_task, with_validation, write_task

HERE = Path(__file__).parent

sentences = resources.files("surgeon.data").joinpath("en_spelling.txt").read_text(encoding="utf-8").splitlines()
task = spelling_task(
    "en_gb", [s for s in sentences if s.strip()], name="british_spelling",
    description="Write British spelling (colour, centre, travelled, organise, grey) whatever the prompt's",
    probes=80, seed=0,  # held-out probes: the first 40 are the test ones, 20 of the rest validate
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
    specificity=ENGLISH_SPECIFICITY,
    neutral={"corpus": "neutral_en", "texts": 8},
)
# The validation split (docs/tasks.md): what `compare --budget` tunes on; the first 40 held-out probes test
with_validation(task, ["The harbor was full of", "Her favorite flavor of ice cream", "The neighbors organized a",
                "We traveled by train to", "The theater was crowded because", "They analyzed the",
                "The gray horse", "He criticized the"])
# surgeon map's entry (run from the repository root): the common advice and the arms that test it
task["map"] = {"behaviour": task["name"], "advice": "LoRA on early layers (0-6)", "advice_arm": "lora_early",
               "model": "smollm2",
               "arms": ["none",
                        "tokens=edit:examples/prereform_orthography/tokens_arm.py rules=en_gb words=400 boost=0.1",
                        "lora_early=lora layers=0-6 roles=attn+mlp", "lora=lora roles=attn+mlp"]}
write_task(task, HERE)
