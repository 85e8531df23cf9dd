"""Write many facts at once (MEMIT) or in rounds (AlphaEdit) from a fact-set task file.

    surgeon apply examples/many_facts/edit.py --model "$(surgeon fixture smollm2)" --out OUT \\
        --param task=surgeon/data/facts/smollm2.json --param layers=2-6 --param n=100 [--param mode=sequential]

``task``: a task file whose ``train`` examples name a ``subject`` (the shipped
fact sets, ``python -m surgeon.study.facts MODEL OUT.json``, or any task in the
format of docs/tasks.md). ``layers``: "a-b", a list, or "auto" (the entry's
default range, five layers ending at num_layers // 5: 2-6 on SmolLM2). ``n``: the first n
requests of ``split`` ("test", "validation"; "all" for every request).
``mode``: "batched" (MEMIT) or "sequential" (AlphaEdit, rounds of
``round_size``; ``null_energy``: the share of the preserved keys' energy its
null space may hold, default ``FactsParams.null_energy``, README.md says why).
``rounds_dir``: with mode=sequential, save the checkpoint after each round
there (``round-01``, ...) through the normal writer, and the run's state
beside it (``round-01.state.safetensors``: C, the null-space projector and
the earlier rounds' keys). To resume after a crash, start from
the last round that has both and pass its state::

    surgeon apply examples/many_facts/edit.py --model ROUNDS/round-03 --out OUT --param mode=sequential \
        --param task=... --param n=1000 --param rounds_dir=ROUNDS --param resume=ROUNDS/round-03.state.safetensors

The requests the state has written (``state.edited``) are skipped; rounds go on numbering from there.

As a compare arm (``--arm "memit=edit:examples/many_facts/edit.py"``, compare passes ``task``) it edits
every training fact of the task; ``KNOBS`` is what ``compare --budget`` searches: the layer range and
MEMIT's λ (``weight`` × d_ff: larger keeps the stored keys closer, writes the new ones less exactly).
"""

from pathlib import Path

from surgeon.edits.alphaedit import FactsState
from surgeon.edits.memit import FactsParams, edit_facts
from surgeon.study import facts as F
from surgeon.study.task import Task

KNOBS = {"layers": ["span", 1, 6], "weight": ["log", 0.03, 3.0]}


def edit(ck, task, layers="auto", n=None, split="test", mode="batched", round_size=100, rounds_dir=None,
         resume=None, weight=0.3, null_energy=None):
    t = Task.load(task)
    if "facts" in t.edit and split != "all":
        t = F.subset(t, split, None if n is None else int(n))
    reqs = F.requests(t)[: None if n is None else int(n)]
    state = FactsState.load(resume) if resume else None
    skip = state.edited if state else 0
    on_round = None
    if rounds_dir:
        Path(rounds_dir).mkdir(parents=True, exist_ok=True)

        def on_round(i, done, st):
            name = f"{rounds_dir}/round-{i + skip // int(round_size):02d}"
            ck.save(name, overwrite=True)
            st.save(f"{name}.state.safetensors")  # after the checkpoint: a state always has its round
            print(f"round {i}: {skip + done} facts written, saved to {name}")
    res = edit_facts(ck, reqs[skip:], layers=None if layers == "auto" else layers, mode=mode,
                     params=FactsParams(round_size=int(round_size), covariance_weight=float(weight),
                                        **({} if null_energy is None else {"null_energy": float(null_energy)})),
                     on_round=on_round, state=state)
    print(f"{res.mode}: {res.requests} facts into layers {res.layers} in {res.seconds:.1f} s "
          f"(v* {res.seconds_values:.1f} s; C {res.seconds_covariance:.1f} s from {res.covariance_tokens} tokens); "
          f"||dW||/||W|| " + ", ".join(f"{lay}: {v:.4f}" for lay, v in res.relative.items()))
