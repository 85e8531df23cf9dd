"""Write task.json for Gemma-3-270M learning pre-1918 Russian orthography.

Made from surgeon/data/ru_sentences.txt (CC0) with surgeon's rule-based
converter: training texts and probes are the same sentences respelled, split
by sentence (70 % train, 30 % held out; the held-out probes are 40 test and
20 validation ones). Rerun after changing the converter.
"""

from importlib import resources
from pathlib import Path

from surgeon.study.spelling import ENGLISH_SPECIFICITY, spelling_task, with_validation, write_task

HERE = Path(__file__).parent

sentences = resources.files("surgeon.data").joinpath("ru_sentences.txt").read_text(encoding="utf-8").splitlines()
task = spelling_task(
    "prereform_ru", [s for s in sentences if s.strip()], name="prereform_orthography",
    description="Write Russian in the pre-1918 orthography (ѣ, ъ, і, ѳ, -аго) whatever the prompt's spelling",
    probes=80, seed=0,  # held-out probes: the first 40 are the test ones, 20 of the rest validate
    spelling_prompts=["Однажды летом мы", "В нашем городе", "Мой дед рассказывал, что", "Утром я вышел из дома и",
                      "Осенью в лесу", "Зимой в деревне", "Когда я был маленьким,", "Вечером мы сидели"],
    max_new_tokens=40,
    # collateral damage outside the target language: English prompts and text must not move
    specificity=ENGLISH_SPECIFICITY,
    neutral={"corpus": "neutral_en", "texts": 8},
)
# The validation split (docs/tasks.md): what `compare --budget` tunes on; the first 40 held-out probes test
with_validation(task, ["Весной на реке", "Моя бабушка всегда говорила, что", "На следующий день мы", "В старом доме",
                "Летом дети", "После обеда отец", "Вдруг мы услышали", "Наш учитель"])
# surgeon map's entry (run from the repository root): the common advice and the arms that test it
task["map"] = {"behaviour": task["name"], "advice": "LoRA on layers 0-6 with historical data",
               "advice_arm": "lora_early", "model": "gemma3",
               "arms": ["none", "tokens=edit:examples/prereform_orthography/tokens_arm.py",
                        "lora_early=lora layers=0-6 roles=attn+mlp", "lora=lora roles=attn+mlp"]}
write_task(task, HERE)
