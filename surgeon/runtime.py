"""The runtime bridge: a transformers model built from a Checkpoint, hooked by role names.

Everything that needs activations (ROME keys and covariance, steering
directions, fine-tuning, measurement, causal tracing) goes through
:class:`Runtime`; nothing else builds models or registers hooks its own way.

Hook points use the role vocabulary (the TransformerLens idea of one name for
weights, hooks and docs):

* ``layers.5``            residual stream after layer 5 (decoder layer output)
* ``layers.5.input``      residual stream entering layer 5
* ``layers.5.attn``       attention block output, before the residual add
* ``layers.5.mlp``        MLP block output, before the residual add
* ``layers.5.mlp.down``   output of that projection; ``layers.5.mlp.down.input`` its input
* ``embed``, ``lm_head``, ``final_norm`` (``.input`` works for each)

The model is loaded from :meth:`Checkpoint.materialized`, so staged edits
are seen exactly as :func:`surgeon.save.save` would write them.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn


def _main(x):
    """The hidden-state tensor inside whatever a module returned."""
    return x[0] if isinstance(x, tuple) else x


def _replace(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


class Runtime:
    """A loaded model plus tokenizer, with role-named hooks.

    ``Runtime(ck)`` loads from a Checkpoint (staged edits included);
    ``Runtime.from_path(dir)`` from a saved directory.
    """

    def __init__(self, ck, *, dtype: torch.dtype = torch.float32, device: str = "cpu", model=None, tokenizer=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ck = ck
        if model is None:
            with ck.materialized() as d:
                tokenizer = AutoTokenizer.from_pretrained(d)
                model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device
        self.arch = ck.architecture
        self._modules = dict(self.model.named_modules())

    @classmethod
    def from_path(cls, path, **kw) -> Runtime:
        from .checkpoint import open_checkpoint

        return cls(open_checkpoint(path), **kw)

    # ------------------------------------------------------------- addressing

    @property
    def num_layers(self) -> int:
        return self.ck.num_layers

    def layer(self, i: int) -> nn.Module:
        return self._modules[self.arch.layer.format(layer=i)]

    def module(self, point: str) -> nn.Module:
        """The module behind a hook point or role key (``.input`` suffix ignored)."""
        key = point[: -len(".input")] if point.endswith(".input") else point
        parts = key.split(".")
        if key == "lm_head":
            return self.model.get_output_embeddings()
        if key == "embed":
            return self.model.get_input_embeddings()
        if len(parts) == 2 and parts[0] == "layers":
            return self.layer(int(parts[1]))
        if len(parts) == 3 and parts[0] == "layers" and parts[2] in ("attn", "mlp"):
            path = self.arch.layer.format(layer=int(parts[1])) + "." + self._block(parts[2])
            return self._modules[self.arch.module_in_model(path, self._modules) or path]
        ref = self.ck.resolve(key)
        if ref.view.rows is not None:
            raise KeyError(f"{key} is part of a fused tensor; hook {key.rsplit('.', 1)[0]}.{ref.fused_in.split('.')[1]} instead")
        stored = ref.tensor.rpartition(".")[0]
        name = self.arch.module_in_model(stored, self._modules)  # transformers may rename on load (Mixtral)
        if name is None:
            raise KeyError(f"{key}: module {stored!r} not found in the loaded model")
        return self._modules[name]

    def _block(self, kind: str) -> str:
        """Module path (inside a layer) of the attention or MLP block, derived from the role table."""
        roles = self.arch.roles
        if kind == "attn":
            anchor = roles.get("attn.o")
        else:
            anchor = roles.get("mlp.down") or roles.get("mlp.router")
        if anchor is None and kind == "attn":
            anchor = next(s["module"] for r, s in self.arch.fused.items() if r.startswith("attn."))
        return anchor.rpartition(".")[0]

    # ------------------------------------------------------------------ hooks

    @contextmanager
    def capture(self, points: Iterable[str], *, detach: bool = True):
        """Record activations at ``points``: yields a dict point -> tensor (last forward pass)."""
        store: dict[str, torch.Tensor] = {}
        handles = []
        for p in points:
            m = self.module(p)
            if p.endswith(".input"):
                def pre(mod, args, kwargs, p=p):
                    x = args[0] if args else next(iter(kwargs.values()))
                    store[p] = x.detach() if detach else x
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, out, p=p):
                    x = _main(out)
                    store[p] = x.detach() if detach else x
                handles.append(m.register_forward_hook(post))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def patch(self, point: str, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Replace the activation at ``point`` by ``fn(activation)`` while the context is open."""
        m = self.module(point)
        if point.endswith(".input"):
            def pre(mod, args, kwargs):
                if args:
                    return (fn(args[0]),) + tuple(args[1:]), kwargs
                k = next(iter(kwargs))
                return args, {**kwargs, k: fn(kwargs[k])}
            h = m.register_forward_pre_hook(pre, with_kwargs=True)
        else:
            def post(mod, args, out):
                return _replace(out, fn(_main(out)))
            h = m.register_forward_hook(post)
        try:
            yield
        finally:
            h.remove()

    # ---------------------------------------------------------------- running

    def encode(self, texts: list[str] | str, *, add_special_tokens: bool = True) -> dict:
        """Left-padded batch (so position -1 is every prompt's last token)."""
        if isinstance(texts, str):
            texts = [texts]
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, texts, **kw) -> torch.Tensor:
        """Logits (batch, seq, vocab) for a list of texts."""
        enc = self.encode(texts)
        return self.model(**enc, **kw).logits

    @torch.no_grad()
    def next_token_logprobs(self, prompts: list[str]) -> torch.Tensor:
        """log P(next token | prompt) for each prompt, (batch, vocab)."""
        return torch.log_softmax(self.forward(prompts)[:, -1].float(), dim=-1)

    @torch.no_grad()
    def continuation_logprob(self, prompts: list[str], continuations: list[str]) -> torch.Tensor:
        """Sum of log P(continuation tokens | prompt), one value per pair."""
        out = []
        for p, c in zip(prompts, continuations):
            ids_p = self.tokenizer(p, return_tensors="pt")["input_ids"][0]
            ids_c = self.tokenizer(c, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            ids = torch.cat([ids_p, ids_c]).unsqueeze(0).to(self.device)
            logp = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
            n = len(ids_p)
            out.append(logp[n - 1 : n - 1 + len(ids_c)].gather(1, ids_c.view(-1, 1).to(self.device)).sum())
        return torch.stack(out)

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 20) -> str:
        """Greedy continuation (without the prompt)."""
        enc = self.encode([prompt])
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    # ---------------------------------------------------- resuming, syncing

    @torch.no_grad()
    def resume_from(self, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, split: int = 0) -> Resume:
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
        import inspect

        from transformers import DynamicCache

        body = self.model.base_model  # the decoder stack without the vocabulary head: no logits to pay for
        cache_kw = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache, snapshot = None, None
        if split:
            cache = DynamicCache(config=self.model.config)
            body(input_ids=input_ids[:, :split], attention_mask=attention_mask[:, :split],
                 position_ids=pos[:, :split], use_cache=True, **{cache_kw: cache})
            snapshot = [dict(lay.__dict__) for lay in cache.layers]  # update() rebinds, never mutates, tensors
        calls: list[tuple[tuple, dict]] = []
        first: list[torch.Tensor] = []

        def grab(mod, args, kwargs):
            if not calls:
                first.append(args[0] if args else kwargs.get("hidden_states"))
            calls.append((tuple(args[1:]), dict(kwargs)))

        handles = [self.layer(i).register_forward_pre_hook(grab, with_kwargs=True) for i in range(layer, self.num_layers)]
        try:
            kw = {cache_kw: cache, "use_cache": True} if split else {"use_cache": False}
            body(input_ids=input_ids[:, split:], attention_mask=attention_mask, position_ids=pos[:, split:], **kw)
        finally:
            for h in handles:
                h.remove()
        return Resume(self, layer, first[0], calls, cache, snapshot)

    @torch.no_grad()
    def sync(self, key: str) -> None:
        """Copy the checkpoint's current value of ``key`` (staged edit, stored-dtype rounding and all)
        into the loaded model, so an edit can be measured without reloading."""
        ref = self.ck.resolve(key)
        param = getattr(self.module(key), ref.param)
        param.copy_(self.ck.stored(ref.tensor).to(param.dtype))


class Resume:
    """The top of a model (layers ``layer``..L-1, final norm, head), ready to rerun.

    Made by :meth:`Runtime.resume_from`; ``hidden`` is the residual entering
    ``layer`` at the rerun columns. Hooks registered with :meth:`Runtime.patch`
    fire during :meth:`run` as in a full forward.
    """

    def __init__(self, rt: Runtime, layer: int, hidden: torch.Tensor, calls, cache, snapshot):
        self.rt, self.layer, self.hidden = rt, layer, hidden
        self._calls, self._cache, self._snapshot = calls, cache, snapshot

    def run(self, hidden: torch.Tensor, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits at (rows, cols) of the rerun columns (all of them when omitted)."""
        if self._cache is not None:  # back to the prefix-only cache of resume_from
            for lay, snap in zip(self._cache.layers, self._snapshot):
                lay.__dict__.clear()
                lay.__dict__.update(snap)
        h = hidden
        for i, (args, kwargs) in enumerate(self._calls):
            h = _main(self.rt.layer(self.layer + i)(h, *args, **kwargs))
        if rows is not None:
            h = h[rows, cols]
        logits = self.rt.module("lm_head")(self.rt.module("final_norm")(h)).float()
        cap = getattr(self.rt.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def load(ck_or_path, **kw) -> Runtime:
    """A Runtime from a Checkpoint or a directory path."""
    if isinstance(ck_or_path, (str, Path)):
        return Runtime.from_path(ck_or_path, **kw)
    return Runtime(ck_or_path, **kw)
