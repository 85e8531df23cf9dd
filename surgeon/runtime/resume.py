"""Rerunning the top of a model: ROME's and MEMIT's v* optimisations change one layer's output and read
the logits many times, so everything below that layer (and, with a prefix KV cache, every column
before the edited position) is computed once. Also the left padding their batches share.
"""

from __future__ import annotations

import torch


def hidden_of(x):
    """The hidden-state tensor inside whatever a module returned."""
    return x[0] if isinstance(x, tuple) else x


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Token-id rows -> (ids, attention mask, each row's offset), padded on the left so position -1 is
    every row's last token (position ids follow the mask: :func:`positions`)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    offset = []
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, T - len(r):] = 1
        offset.append(T - len(r))
    return ids, mask, offset


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so a left-padded row reads as if it were alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def resume_from(rt, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                split: int = 0) -> Resume:
    """Freeze everything that cannot change when only layers ``layer``.. change.

    Runs the batch once and keeps (a) the residual entering ``layer`` and
    (b) the exact call arguments (masks, rotary tables, cache) each layer
    ``layer``..L-1 received, so :meth:`Resume.run` can rerun just the top of
    the model, with gradients, on a modified residual. With ``split`` > 0
    the columns before ``split`` are run once into a KV cache and only the
    later columns are rerun: right for edits that touch positions
    >= ``split`` only (ROME's delta sits at the subject's last token).
    Works for any family because it replays what the model itself passed.
    Position ids follow the attention mask, so left padding is harmless.
    """
    from transformers import DynamicCache

    body = rt.model.base_model  # the decoder stack without the vocabulary head: no logits to pay for
    cache_kw = rt.cache_kw(body=True)
    input_ids, attention_mask = input_ids.to(rt.device), attention_mask.to(rt.device)
    pos = positions(attention_mask)
    cache, snapshot = None, None
    if split:
        cache = DynamicCache(config=rt.model.config)
        body(input_ids=input_ids[:, :split], attention_mask=attention_mask[:, :split],
             position_ids=pos[:, :split], use_cache=True, **{cache_kw: cache})
        snapshot = [dict(lay.__dict__) for lay in cache.layers]  # update() rebinds, never mutates, tensors
    calls: list[tuple[tuple, dict]] = []
    first: list[torch.Tensor] = []

    def grab(mod, args, kwargs):
        if not calls:
            first.append(args[0] if args else kwargs.get("hidden_states"))
        calls.append((tuple(args[1:]), dict(kwargs)))

    handles = [rt.layer(i).register_forward_pre_hook(grab, with_kwargs=True)
               for i in range(layer, rt.num_layers)]
    try:
        kw = {cache_kw: cache, "use_cache": True} if split else {"use_cache": False}
        body(input_ids=input_ids[:, split:], attention_mask=attention_mask, position_ids=pos[:, split:], **kw)
    finally:
        for h in handles:
            h.remove()
    return Resume(rt, layer, first[0], calls, cache, snapshot)


class Resume:
    """The top of a model (layers ``layer``..L-1, final norm, head), ready to rerun.

    Made by :func:`resume_from` (:meth:`Runtime.resume_from`); ``hidden`` is the residual entering
    ``layer`` at the rerun columns. Hooks registered with :meth:`Runtime.patch`
    fire during :meth:`run` as in a full forward.
    """

    def __init__(self, rt, layer: int, hidden: torch.Tensor, calls, cache, snapshot):
        self.rt, self.layer, self.hidden = rt, layer, hidden
        self._calls, self._cache, self._snapshot = calls, cache, snapshot

    def run(self, hidden: torch.Tensor, rows: torch.Tensor | None = None,
            cols: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits at (rows, cols) of the rerun columns (all of them when omitted)."""
        if self._cache is not None:  # back to the prefix-only cache of resume_from
            for lay, snap in zip(self._cache.layers, self._snapshot):
                lay.__dict__.clear()
                lay.__dict__.update(snap)
        h = hidden
        for i, (args, kwargs) in enumerate(self._calls):
            h = hidden_of(self.rt.layer(self.layer + i)(h, *args, **kwargs))
        if rows is not None:
            h = h[rows, cols]
        return self.rt.head(self.rt.module("final_norm")(h)).to(self.rt.device)
