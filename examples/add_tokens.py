"""Add new tokens to the tokenizer and their rows to the embedding (and an untied head).

    surgeon apply examples/add_tokens.py --model CKPT --out OUT \
        --param 'tokens=["ѣ", "въѣздъ"]' --param init=subtoken_mean --param pad_to_multiple_of=64

init: subtoken_mean (default: mean of the pieces the token used to split into), vocab_mean
(Hewitt 2021: the output distribution barely moves), or copy:TOKEN (the rows of an existing token).
Tokens that already are one token are skipped and reported.
"""

from surgeon.edits.tokens import add_tokens


def edit(ck, tokens=("ѣ", "въѣздъ"), init="subtoken_mean", pad_to_multiple_of=None):
    if isinstance(tokens, str):
        tokens = [t for t in tokens.split(",") if t]
    report = add_tokens(ck, list(tokens), init=init, pad_to_multiple_of=pad_to_multiple_of)
    for t, i in report.added.items():
        print(f"added {t!r} as id {i} (was {len(report.pieces[t])} pieces)")
    for t, i in report.skipped.items():
        print(f"skipped {t!r}: already the single token {i}")
    print(f"embedding rows {report.rows[0]} -> {report.rows[1]} ({report.padding} padding rows)")
