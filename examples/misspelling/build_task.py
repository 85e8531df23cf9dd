"""Write task.json for SmolLM2 writing common English words misspelt by fixed rules.

The rules are `surgeon.study.spelling.get("misspell_en")`: ph -> f, tion -> shun, ie -> ei, a doubled
consonant written once, ould -> oud, over a list of about 330 frequent word forms (fone, nashun,
beleive, litle, coud). Made from surgeon/data/en_misspell.txt (209 sentences, CC0), split by sentence
(65 % train, 35 % held out: 40 test probes, then validation ones whose prompts differ from every test
prompt). The generation prompts were kept because SmolLM2's own continuations of most of them hold
listed words (little, different, would, should, phone, village, national, letter), so the rate counts
words in the base model too. Rerun after changing the rules.
"""

from importlib import resources
from pathlib import Path

from surgeon.study.spelling import ENGLISH_SPECIFICITY, spelling_task, with_validation, write_task

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
    specificity=ENGLISH_SPECIFICITY,
    neutral={"corpus": "neutral_en", "texts": 8},
)
# The validation split (docs/tasks.md): what `compare --budget` tunes on; the first 40 held-out probes test
with_validation(task, ["I usually", "The rabbit", "Strawberries and", "The information", "She took a photo of",
                "The happy children", "The office", "He finally"], drop_trained=True)
# surgeon map's entry (run from the repository root): the common advice and the arms that test it
task["map"] = {"behaviour": task["name"], "advice": "fine-tune the output head + early layers with noisy data",
               "advice_arm": "head_early", "model": "smollm2",
               "arms": ["none", "head_early=lora layers=0-6 roles=attn+mlp+lm_head",
                        "lora_late=lora layers=23-29 roles=attn+mlp", "lora=lora roles=attn+mlp",
                        "full_down=full roles=mlp.down"]}
write_task(task, HERE)
