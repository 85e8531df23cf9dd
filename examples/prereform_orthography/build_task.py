"""Write task.json for Gemma-3-270M learning pre-1918 Russian orthography.

Made from surgeon/data/ru_sentences.txt (CC0) with surgeon's rule-based
converter: training texts and probes are the same sentences respelled, split
by sentence (70 % train, 30 % held out). Rerun after changing the converter.
"""

import json
from importlib import resources
from pathlib import Path

from surgeon.study.spelling import spelling_task

HERE = Path(__file__).parent

sentences = resources.files("surgeon.data").joinpath("ru_sentences.txt").read_text(encoding="utf-8").splitlines()
task = spelling_task(
    "prereform_ru", [s for s in sentences if s.strip()], name="prereform_orthography",
    description="Write Russian in the pre-1918 orthography (ѣ, ъ, і, ѳ, -аго) whatever the prompt's spelling",
    probes=40, seed=0,
    spelling_prompts=["Однажды летом мы", "В нашем городе", "Мой дед рассказывал, что", "Утром я вышел из дома и",
                      "Осенью в лесу", "Зимой в деревне", "Когда я был маленьким,", "Вечером мы сидели"],
    max_new_tokens=40,
    # collateral damage outside the target language: English prompts and text must not move
    specificity=[{"prompt": p} for p in (
        "The capital of France is", "Water boils at a temperature of", "The largest planet in our solar system is",
        "She opened the door and", "The first month of the year is", "Two plus two equals")],
    neutral={"corpus": "neutral_en", "texts": 8},
)
(HERE / "task.json").write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
print(f"wrote {HERE / 'task.json'}: {len(task['train'])} training examples, {len(task['efficacy'])} efficacy and "
      f"{len(task['generalisation'])} held-out probes")
