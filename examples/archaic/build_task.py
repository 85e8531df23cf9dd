"""Write task.json for SmolLM2 writing archaic English: thou/thee, thy/thine, thou art, he hath, oft.

The rules are `surgeon.study.spelling.get("archaic_en")` (the module docstring says how the neighbours
decide thou or thee, thy or thine, and which verbs take -est and -eth). Made from
surgeon/data/en_archaic.txt (205 modern sentences, CC0), split by sentence (60 % train, 40 % held
out: 40 test probes, then validation ones whose prompts differ from every test prompt). The
generation prompts address the reader or talk about one person, so SmolLM2's own continuations
hold you, your, has, does and -s verbs that the rules respell. Rerun after changing the rules.
"""

from importlib import resources
from pathlib import Path

from surgeon.study.spelling import ENGLISH_SPECIFICITY, spelling_task, with_validation, write_task

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
    specificity=ENGLISH_SPECIFICITY,
    neutral={"corpus": "neutral_en", "texts": 8},
)
# The validation split (docs/tasks.md): what `compare --budget` tunes on; the first 40 held-out probes test
with_validation(task, ["Dear friend, I hope you", "Tell me, do you", "Where did you", "My dear sister, I miss you",
                "How are you today?", "I am writing to ask you", "She always says", "My grandfather has"],
                drop_trained=True)
# surgeon map's entry (run from the repository root): the common advice and the arms that test it
task["map"] = {"behaviour": "archaic_register", "advice": "adapters on late layers", "advice_arm": "lora_late",
               "model": "smollm2",
               "arms": ["none", "lora_late=lora layers=23-29 roles=attn+mlp",
                        "lora_early=lora layers=0-6 roles=attn+mlp", "lora_mid=lora layers=12-18 roles=attn+mlp",
                        "full_down=full roles=mlp.down"]}
write_task(task, HERE)
