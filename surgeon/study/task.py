"""A behaviour change, written down: what to teach, how to tell it worked, what must not move.

A task file is JSON (see ``docs/tasks.md``)::

    {
      "name": "eiffel-rome",
      "description": "Move the Eiffel Tower to Rome",
      "train":          [{"prompt": "The Eiffel Tower is located in the city of", "completion": " Rome",
                          "subject": "The Eiffel Tower"}],
      "efficacy":       [{"prompt": "...", "target": " Rome", "original": " Paris"}],
      "generalisation": [{"prompt": "...", "target": " Rome", "original": " Paris"}],
      "specificity":    [{"prompt": "The capital of Germany is"},
                         {"prompt": "The Louvre is located in the city of", "target": " Rome", "original": " Paris"}],
      "neutral":        ["Plain text for KL and perplexity.", ...]
                        or {"corpus": "neutral_en", "texts": 16, "from": "end"},
      "spelling":       {"rules": "prereform_ru", "prompts": ["..."], "max_new_tokens": 40},
      "edit":           {... free-form parameters that edit scripts of this task read ...},
      "validation":     {"generalisation": [...], "specificity": [...], "neutral": ...,
                         "spelling_prompts": [...]}
    }

The split mirrors CounterFact (Meng et al. 2022): efficacy prompts are the
ones the edit or the fine-tune saw, generalisation prompts are held apart
(paraphrases), specificity prompts are neighbours whose answers must not
change, and neutral text measures collateral damage as KL and perplexity.
``train`` may also hold raw texts (``{"text": "..."}``) for spelling tasks.
A training example may name its ``subject`` (the CounterFact
``requested_rewrite`` shape) so that rank-one edit scripts can read their
requests from the same file the fine-tune trains on.

``validation`` holds probes of the same kinds, apart from the test probes
(the top-level ones): whatever is chosen automatically (hyperparameters,
layers, an edit's knobs) is chosen on :meth:`Task.split` ``("validation")``
and reported on ``split("test")``. A validation prompt that is also a test
prompt is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from surgeon import data
from surgeon.errors import SurgeonError
from surgeon.study import spelling


class TaskError(SurgeonError):
    """A task file is missing a field or has one of the wrong shape."""


@dataclass(frozen=True)
class Probe:
    """A prompt with the answer we want (target) and the answer the original model gives (original)."""

    prompt: str
    target: str | None = None
    original: str | None = None


@dataclass(frozen=True)
class Example:
    """A training example: prompt -> completion, or a raw text (prompt empty).

    ``subject``: for fact edits, the part of ``prompt`` the fact is about
    (ROME's key is read at its last token).
    """

    prompt: str
    completion: str
    subject: str | None = None

    @property
    def text(self) -> str:
        return self.prompt + self.completion


@dataclass
class Task:
    name: str
    description: str = ""
    train: list[Example] = field(default_factory=list)
    efficacy: list[Probe] = field(default_factory=list)
    generalisation: list[Probe] = field(default_factory=list)
    specificity: list[Probe] = field(default_factory=list)
    neutral: list[str] = field(default_factory=list)
    spelling: dict | None = None
    edit: dict = field(default_factory=dict)
    path: Path | None = None
    validation: Task | None = None  # the same kinds of probes, held apart from the test ones (tuning only)
    split_name: str = "test"  # which split this object's probes are: "test" or "validation"
    map: dict | None = None  # surgeon map's entry: behaviour, advice, advice_arm, arms

    @classmethod
    def load(cls, path: str | Path) -> Task:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise TaskError(f"{path}: cannot read task file ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg} at line {e.lineno}, column "
                            f"{e.colno}") from None
        return cls.from_dict(doc, path)

    @classmethod
    def from_dict(cls, doc: dict, path: Path | None = None) -> Task:
        where = str(path) if path else "task"
        if not isinstance(doc, dict):
            raise TaskError(f"{where}: a task is a JSON object")
        unknown = set(doc) - {"name", "description", "train", "efficacy", "generalisation", "specificity",
                              "neutral", "spelling", "edit", "validation", "map"}
        if unknown:
            raise TaskError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        spelling = doc.get("spelling")
        if spelling is not None:
            _spelling(spelling, where)
        edit = doc.get("edit", {})
        if not isinstance(edit, dict):
            raise TaskError(f"{where}: edit must be an object")
        task = cls(
            name=str(doc.get("name") or (path.stem if path else "task")),
            description=str(doc.get("description", "")),
            train=[_example(x, f"{where}: train[{i}]") for i, x in enumerate(_list(doc, "train", where))],
            **_probes(doc, where),
            spelling=spelling,
            edit=dict(edit),
            path=path,
        )
        if "validation" in doc:
            task.validation = _validation(doc["validation"], task, where)
        if "map" in doc:
            task.map = _map(doc["map"], where)
        return task

    def split(self, name: str) -> Task:
        """The task measured on one split: ``"test"`` (the top-level probes) or ``"validation"``.

        Both keep the training examples and the edit parameters; the test split
        carries no validation probes and the validation split no test probes.
        """
        if name == "test":
            return replace(self, validation=None, split_name="test")
        if name == "validation":
            if self.validation is None:
                raise TaskError(f"{self.path or self.name}: no validation split (add \"validation\", docs/tasks.md)")
            return self.validation
        raise TaskError(f"split must be test or validation, not {name!r}")

    def to_dict(self) -> dict:
        """The task as a JSON object (neutral texts resolved), loadable by :meth:`from_dict`."""
        def ex(e: Example) -> dict:
            if not e.prompt:
                return {"text": e.completion}
            d = {"prompt": e.prompt, "completion": e.completion}
            return d if e.subject is None else {**d, "subject": e.subject}

        def pr(p: Probe) -> dict:
            return {k: v for k, v in (("prompt", p.prompt), ("target", p.target), ("original", p.original))
                    if v is not None}

        doc = {"name": self.name, "description": self.description, "train": [ex(e) for e in self.train],
               "efficacy": [pr(p) for p in self.efficacy], "generalisation": [pr(p) for p in self.generalisation],
               "specificity": [pr(p) for p in self.specificity], "neutral": list(self.neutral)}
        if self.spelling is not None:
            doc["spelling"] = self.spelling
        if self.edit:
            doc["edit"] = self.edit
        if self.validation is not None:
            v = self.validation
            doc["validation"] = {"efficacy": [pr(p) for p in v.efficacy],
                                 "generalisation": [pr(p) for p in v.generalisation],
                                 "specificity": [pr(p) for p in v.specificity], "neutral": list(v.neutral)}
            if v.spelling is not None:
                doc["validation"]["spelling_prompts"] = list(v.spelling.get("prompts", []))
        if self.map is not None:
            doc["map"] = self.map
        return doc

    def prompts(self) -> set[str]:
        """Every prompt this split measures on (held-out probes, spelling prompts) and its neutral texts."""
        out = {p.prompt for p in self.generalisation + self.specificity} | set(self.neutral)
        return out | set((self.spelling or {}).get("prompts", []))


def _probes(doc: dict, where: str) -> dict:
    """The probe fields of a task (or of its validation object)."""
    return {
        "efficacy": [_probe(x, f"{where}: efficacy[{i}]", True) for i, x in enumerate(_list(doc, "efficacy", where))],
        "generalisation": [_probe(x, f"{where}: generalisation[{i}]", True)
                           for i, x in enumerate(_list(doc, "generalisation", where))],
        "specificity": [_probe(x, f"{where}: specificity[{i}]")
                        for i, x in enumerate(_list(doc, "specificity", where))],
        "neutral": _neutral(doc.get("neutral", []), where),
    }


def _map(v, where: str) -> dict:
    """``surgeon map``'s entry: the behaviour's name, the common advice, the arm that embodies it, the arms,
    and the model the task is written for (a fixture name such as ``gemma3``, or a path)."""
    if not isinstance(v, dict):
        raise TaskError(f"{where}: map must be an object")
    _keys(v, {"behaviour", "advice", "advice_arm", "arms", "model"}, f"{where}: map")
    if not all(isinstance(v.get(k, ""), str) for k in ("behaviour", "advice", "advice_arm", "model")):
        raise TaskError(f"{where}: map: behaviour, advice, advice_arm and model are strings")
    arms = v.get("arms", [])
    if not (isinstance(arms, list) and all(isinstance(a, str) and a for a in arms)):
        raise TaskError(f"{where}: map: arms must be a list of arm specs (NAME=SPEC)")
    return dict(v)


def _validation(v, test: Task, where: str) -> Task:
    """The validation split: its own probes, the test split's training examples and edit parameters."""
    where = f"{where}: validation"
    if not isinstance(v, dict):
        raise TaskError(f"{where}: must be an object of probes (efficacy, generalisation, specificity, neutral, "
                        f"spelling_prompts)")
    _keys(v, {"efficacy", "generalisation", "specificity", "neutral", "spelling_prompts"}, where)
    spelling_ = None
    if "spelling_prompts" in v:
        if test.spelling is None:
            raise TaskError(f"{where}: spelling_prompts needs the task's spelling section (its rules)")
        spelling_ = {**test.spelling, "prompts": v["spelling_prompts"]}
        _spelling(spelling_, where)
    val = Task(name=test.name, description=test.description, train=test.train, **_probes(v, where),
               spelling=spelling_, edit=test.edit, path=test.path, split_name="validation")
    shared = sorted(val.prompts() & test.prompts())
    if shared:
        raise TaskError(f"{where}: {len(shared)} prompt(s) or text(s) are also test probes, e.g. {shared[0][:60]!r}; "
                        f"tuning on them would measure the test split")
    return val


def _list(doc, key, where):
    v = doc.get(key, [])
    if not isinstance(v, list):
        raise TaskError(f"{where}: {key} must be a list")
    return v


def _keys(x: dict, allowed: set, where: str) -> None:
    """A misspelt key would silently change what is measured ("orignal", "subjet"): refuse it."""
    unknown = set(x) - allowed
    if unknown:
        raise TaskError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"expected {', '.join(sorted(allowed))}")


def _spelling(v, where) -> None:
    if not (isinstance(v, dict) and isinstance(v.get("rules"), str)):
        raise TaskError(f"{where}: spelling must be an object with a \"rules\" name")
    _keys(v, {"rules", "prompts", "max_new_tokens"}, f"{where}: spelling")
    try:
        spelling.get(v["rules"])
    except SurgeonError as e:
        raise TaskError(f"{where}: spelling: {e}") from None
    prompts = v.get("prompts", [])
    if not (isinstance(prompts, list) and all(isinstance(t, str) and t for t in prompts)):
        raise TaskError(f"{where}: spelling: prompts must be a list of non-empty strings")
    n = v.get("max_new_tokens", 40)
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise TaskError(f"{where}: spelling: max_new_tokens must be a positive integer, got {n!r}")


def _example(x, where) -> Example:
    if isinstance(x, str):
        return Example("", x)
    if isinstance(x, dict) and "text" in x:
        _keys(x, {"text"}, where)
        return Example("", str(x["text"]))
    if isinstance(x, dict) and "prompt" in x and "completion" in x:
        _keys(x, {"prompt", "completion", "subject"}, where)
        subject = x.get("subject")
        if subject is not None and str(subject) not in str(x["prompt"]):
            raise TaskError(f"{where}: subject {subject!r} does not occur in the prompt")
        return Example(str(x["prompt"]), str(x["completion"]), None if subject is None else str(subject))
    raise TaskError(f"{where}: needs prompt+completion or text")


def _probe(x, where, needs_target: bool = False) -> Probe:
    if isinstance(x, str):
        x = {"prompt": x}
    if not (isinstance(x, dict) and isinstance(x.get("prompt"), str)):
        raise TaskError(f"{where}: needs a prompt")
    _keys(x, {"prompt", "target", "original"}, where)
    for k in ("target", "original"):
        if x.get(k) is not None and not (isinstance(x[k], str) and x[k]):
            raise TaskError(f"{where}: {k} must be a non-empty string")
    if needs_target and not x.get("target"):
        raise TaskError(f"{where}: needs a target (the answer the change should produce)")
    return Probe(x["prompt"], x.get("target"), x.get("original"))


def _neutral(v, where) -> list[str]:
    if isinstance(v, list):
        if not all(isinstance(t, str) for t in v):
            raise TaskError(f"{where}: neutral must be a list of strings")
        return v
    if isinstance(v, dict) and "corpus" in v:
        _keys(v, {"corpus", "texts", "from", "skip"}, f"{where}: neutral")
        if v.get("from", "start") not in ("start", "end"):
            raise TaskError(f"{where}: neutral: \"from\" must be \"start\" or \"end\"")
        n = v.get("texts", 16)
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise TaskError(f"{where}: neutral: texts must be a positive integer, got {n!r}")
        skip = v.get("skip", 0)
        if not (isinstance(skip, int) and not isinstance(skip, bool) and skip >= 0):
            raise TaskError(f"{where}: neutral: skip must be a non-negative integer, got {skip!r}")
        try:
            got = neutral_texts(str(v["corpus"]), n + skip, from_end=v.get("from") == "end")
            return got[skip:] if v.get("from") != "end" else got[:len(got) - skip]
        except TaskError as e:
            raise TaskError(f"{where}: neutral: {e}") from None
    raise TaskError(f"{where}: neutral must be a list of texts or {{\"corpus\": NAME, \"texts\": N}}")


def neutral_texts(corpus: str, n: int, *, from_end: bool = False) -> list[str]:
    """The first (or, ``from_end``, the last) ``n`` paragraphs of a corpus shipped in ``surgeon/data``
    (``neutral_en`` -> neutral_en.txt); see :mod:`surgeon.data` for the held-out tail of neutral_en."""
    try:
        return data.texts(corpus, n, from_end=from_end)
    except data.CorpusError as e:
        raise TaskError(str(e)) from None
