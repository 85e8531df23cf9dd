"""The token-alias arm (examples/prereform_orthography/tokens_arm.py) with words from the vocabulary.

``source=vocab`` aliases every one-token word the rules respell, but only where the model itself ends
the word after that token: a piece such as Gemma-3's " дерев" would otherwise become " деревъ" and
write деревъне.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from surgeon.edits.apply import run_script
from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime import load

ROOT = Path(__file__).resolve().parent.parent
ARM = ROOT / "examples" / "prereform_orthography" / "tokens_arm.py"
SPELLING = ROOT / "examples" / "spelling" / "task.json"


def _arm():
    spec = importlib.util.spec_from_file_location("tokens_arm", ARM)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vocab_alias_writes_british_forms_of_words_the_training_text_lacks(smollm2):
    ck = open_checkpoint(smollm2)
    base = load(ck)
    prompts = ["The Department of", "He likes the"]
    before = base.generate(prompts, 6, batch_size=2)
    assert "Defense" in before[0] and "favorite" in before[1]
    del base
    run_script(ck, ARM, {"rules": "en_gb", "source": "vocab", "words": 4000, "boost": 0.1, "final": 0.5,
                         "task": str(SPELLING)})
    rec = next(r for r in reversed(ck.edits) if r["kind"] == "alias_rows")
    assert rec["source"] == "vocab" and rec["words"] > 250  # 312 one-token American words on SmolLM2
    train = " ".join(e.get("text", "") for e in json.loads(SPELLING.read_text())["train"])
    assert "Defense" not in train and "Defence" not in train  # " Defense" is its own token: the vocabulary brought it
    after = load(ck).generate(prompts, 6, batch_size=2)
    assert "Defence" in after[0] and "favourite" in after[1], after


def test_word_pieces_are_told_from_words_by_the_model(gemma3):
    """P(the model ends the word next): high after " лес", low after the piece " дерев" (деревня)."""
    arm = _arm()
    ck = open_checkpoint(gemma3)
    tok = AutoTokenizer.from_pretrained(str(ck.path))
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in ("лес", "дерев", "был")]
    assert all(len(i) == 1 for i in ids), ids
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    p_lest, p_piece, p_byl = arm._p_word_end(ck, tok, [i[0] for i in ids], texts)
    assert p_lest > 0.5 and p_byl > 0.5 and p_piece < 0.1, (p_lest, p_piece, p_byl)


@pytest.mark.parametrize("source", ["train", "vocab"])
def test_alias_arm_declares_its_knobs(source):
    from surgeon.study.search import script_knobs

    knobs = script_knobs(ARM)
    assert source in knobs["source"] and {"words", "boost", "final"} <= set(knobs)
