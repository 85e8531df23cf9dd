"""The runtime bridge (:class:`Runtime`); :mod:`surgeon.runtime` says what it owns."""

from __future__ import annotations

import inspect
import tempfile
import weakref
from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn

from surgeon.io.checkpoint import open_checkpoint
from surgeon.runtime.placement import default_device, env_placement, input_device, load_model
from surgeon.runtime.resume import Resume, hidden_of, left_pad, positions, resume_from


def bos_id(tokenizer) -> int | None:
    """The BOS id ``tokenizer`` puts before every text, or None when it adds none (SmolLM2 adds none)."""
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    return bos if bos is not None and probe and probe[0] == bos else None


def _replace(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


class Runtime:
    """A loaded model plus tokenizer, with role-named hooks.

    ``Runtime(ck)`` loads from a Checkpoint (staged edits included);
    ``Runtime.from_path(dir)`` from a saved directory. ``dtype``: float32 by
    default (edits are computed in it); bfloat16 halves the memory of a large
    model. ``device``: see :func:`default_device`. ``device_map`` ("auto",
    "sequential" or a dict), ``max_memory`` ({0: "70GiB", "cpu": "100GiB"};
    alone it implies ``device_map="auto"``) and ``offload_folder`` are passed
    to transformers' ``from_pretrained`` (accelerate places whole decoder
    layers; a temporary folder is used if offloading needs one and none is
    given). ``layers``: build only the first ``layers`` decoder layers.
    Left unset, ``dtype``, ``max_memory`` and ``offload_folder`` come from
    ``surgeon --dtype / --max-memory / --offload-folder`` (:func:`env_placement`)
    unless ``from_env=False`` (the fine-tune trains in float32, in memory).
    """

    def __init__(self, ck, *, dtype: torch.dtype | str | None = None, device: str | None = None,
                 device_map=None, max_memory: dict | None = None, offload_folder=None, layers: int | None = None,
                 model=None, tokenizer=None, from_env: bool = True):
        from transformers import AutoTokenizer

        env = env_placement() if from_env and model is None else {}
        if device_map is None and max_memory is None:
            max_memory = env.get("max_memory")
        offload_folder = offload_folder or env.get("offload_folder")
        dtype = dtype or env.get("dtype") or torch.float32
        self.ck = ck
        self._keep = ExitStack()  # the files an offloaded model reads from live as long as it does
        weakref.finalize(self, self._keep.close)
        if layers is not None and not (isinstance(layers, int) and 1 <= layers <= ck.num_layers):
            raise ValueError(f"layers={layers!r}: the model has {ck.num_layers} decoder layers")
        self.layers = layers or ck.num_layers
        placed = device_map is not None or max_memory is not None
        if model is None:
            d = self._keep.enter_context(ck.materialized())
            tokenizer = AutoTokenizer.from_pretrained(d)
            if placed and offload_folder is None:
                offload_folder = self._keep.enter_context(tempfile.TemporaryDirectory(prefix="surgeon-offload-"))
            where = (device_map or "auto") if placed else None
            model = load_model(d, dtype, layers, where, max_memory, offload_folder)
            if not placed:
                self._keep.close()  # everything is in memory: the view can go
        if not getattr(model, "hf_device_map", None):
            model = model.to(device or default_device())
        self.model = model.eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = input_device(self.model)
        self.arch = ck.architecture
        self._modules = dict(self.model.named_modules())

    @classmethod
    def from_path(cls, path, **kw) -> Runtime:
        return cls(open_checkpoint(path), **kw)

    # ------------------------------------------------------------- addressing

    @property
    def num_layers(self) -> int:
        """Decoder layers of the loaded model (fewer than the checkpoint's with ``layers=``)."""
        return self.layers

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
            raise KeyError(f"{key} is part of a fused tensor; hook {key.rsplit('.', 1)[0]}."
                           f"{ref.fused_in.split('.')[1]} instead")
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
            anchor = next((s["module"] for r, s in self.arch.fused.items() if r.startswith("attn.")), None)
        if anchor is None and kind == "mlp" and self.arch.experts:  # no router role: the experts' list's parent
            return self.arch.experts["module"].split(".{expert}")[0].rpartition(".")[0]
        if anchor is None:
            raise KeyError(f"layers.L.{kind}: no role of {self.arch.name} locates the block")
        return anchor.rpartition(".")[0]

    # ------------------------------------------------------------------ hooks

    @contextmanager
    def capture(self, points: Iterable[str], *, detach: bool = True):
        """Record activations at ``points``: yields a dict point -> tensor (last forward pass).

        Each is a copy: a model may add into a module's output in place after the hook has run (Falcon's
        parallel block: ``mlp_output += attention_output``), which would change a recorded view."""
        store: dict[str, torch.Tensor] = {}
        handles = []
        for p in points:
            m = self.module(p)
            if p.endswith(".input"):
                def pre(mod, args, kwargs, p=p):
                    x = args[0] if args else next(iter(kwargs.values()))
                    store[p] = (x.detach() if detach else x).clone()
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, out, p=p):
                    x = hidden_of(out)
                    store[p] = (x.detach() if detach else x).clone()
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
                return _replace(out, fn(hidden_of(out)))
            h = m.register_forward_hook(post)
        try:
            yield
        finally:
            h.remove()

    # ---------------------------------------------------------------- running

    @property
    def bos_id(self) -> int | None:
        """The BOS id the tokenizer prepends to every text, None when it prepends none."""
        if not hasattr(self, "_bos"):
            self._bos = bos_id(self.tokenizer)
        return self._bos

    def accepts(self, name: str, *, body: bool = False) -> bool:
        """Whether the model's forward (``body``: the decoder stack's, without the head) takes argument ``name``."""
        fwd = (self.model.base_model if body else self.model).forward
        params = self.__dict__.setdefault("_params", {})
        if fwd not in params:
            params[fwd] = set(inspect.signature(fwd).parameters)
        return name in params[fwd]

    def cache_kw(self, *, body: bool = False) -> str:
        """The name under which this model's forward takes a KV cache (it changed across transformers versions)."""
        return "cache" if self.accepts("cache", body=body) else "past_key_values"

    def logits(self, input_ids: torch.Tensor, *, keep=None, model=None, **kw) -> torch.Tensor:
        """Logits computed only where ``keep`` says (an int: the last ``keep`` positions; a bool mask:
        those positions, flattened), with ``logits_to_keep`` where the model takes it: Gemma-3's
        262k-vocabulary head is the cost of a forward pass. ``model``: a wrapper of this runtime's
        model to run instead (a peft model while fine-tuning)."""
        model = self.model if model is None else model
        if keep is None:
            return model(input_ids=input_ids, **kw).logits
        if self.accepts("logits_to_keep"):
            return model(input_ids=input_ids, logits_to_keep=keep, **kw).logits
        logits = model(input_ids=input_ids, **kw).logits
        return logits[:, -keep:] if isinstance(keep, int) else logits[keep]

    @torch.no_grad()
    def last_logprobs(self, ids: list[int], **kw) -> torch.Tensor:
        """log P(next token) after the token ids ``ids`` (one sequence), (vocab,)."""
        x = torch.tensor([ids], device=self.device)
        return torch.log_softmax(self.logits(x, keep=1, **kw)[0, -1].float(), dim=-1)

    @torch.no_grad()
    def prefix_cache(self, ids: list[int]):
        """The KV cache of a forward over ``ids`` (hooks and patches that are open apply)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.logits(torch.tensor([ids], device=self.device), keep=1, use_cache=True, **{self.cache_kw(): cache})
        return cache

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the vocabulary head on final-normed states, soft-capped where the model caps them."""
        logits = self.module("lm_head")(h).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def states(self, rows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Final-normed hidden states (batch, T, d) of token-id rows run as one left-padded batch (positions
        follow the mask), and each row's offset in it. No vocabulary head: a caller reads the few columns it
        needs through :meth:`head`."""
        ids, mask, offset = left_pad(rows, self.tokenizer.pad_token_id)
        out = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=positions(mask).to(self.device), use_cache=False)
        return out.last_hidden_state, offset

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
    def next_token_logprobs(self, prompts: list[str], *, batch_size: int = 64) -> torch.Tensor:
        """log P(next token | prompt) for each prompt, (batch, vocab); left-padded batches, positions
        following the mask (so a prompt reads as if it were alone)."""
        rows = [self.tokenizer(p)["input_ids"] for p in prompts]
        out = []
        for i in range(0, len(rows), batch_size):
            hidden, _ = self.states(rows[i:i + batch_size])
            out.append(torch.log_softmax(self.head(hidden[:, -1]), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def continuation_logprob(self, prompts: list[str], continuations: list[str], *,
                             batch_size: int = 64) -> torch.Tensor:
        """Σ log P(continuation tokens | prompt), one value per pair, in left-padded batches of rows
        of similar length; the head runs on the continuation's positions only."""
        rows, spans = [], []
        for p, c in zip(prompts, continuations):
            p_ids, c_ids = self.tokenizer(p)["input_ids"], self.tokenizer(c, add_special_tokens=False)["input_ids"]
            rows.append(p_ids + c_ids)
            spans.append((len(p_ids), c_ids))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
        out = torch.zeros(len(rows))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            hidden, offset = self.states([rows[i] for i in idx])
            r, col, tok, owner = [], [], [], []
            for j, i in enumerate(idx):
                n_p, c_ids = spans[i]
                for k, t in enumerate(c_ids):
                    r.append(j), col.append(offset[j] + n_p - 1 + k), tok.append(t), owner.append(i)
            if not r:
                continue
            lp = torch.log_softmax(self.head(hidden[torch.tensor(r), torch.tensor(col)]), -1).cpu()
            got = lp.gather(1, torch.tensor(tok).view(-1, 1)).squeeze(1)
            out.index_add_(0, torch.tensor(owner), got)
        return out

    @torch.no_grad()
    def generate(self, prompts: str | list[str], max_new_tokens: int = 20, *, batch_size: int = 1):
        """Greedy continuations (text after the prompt): a string for a string, a list for a list.

        ``batch_size`` 1 (the default) runs each prompt alone, so no padding can move an argmax;
        larger batches are left-padded and several times faster (fact scoring uses 64).
        """
        one = isinstance(prompts, str)
        prompts = [prompts] if one else list(prompts)
        out = []
        for i in range(0, len(prompts), batch_size):
            enc = self.encode(prompts[i:i + batch_size])
            gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
            out += self.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out[0] if one else out

    @contextmanager
    def frozen(self):
        """No weight gradients inside (an optimisation of activations, such as ROME's v*, would pay a
        third more matmuls for them); each parameter's flag is restored after."""
        flags = [q.requires_grad for q in self.model.parameters()]
        self.model.requires_grad_(False)
        try:
            yield
        finally:
            for q, f in zip(self.model.parameters(), flags):
                q.requires_grad_(f)

    # ---------------------------------------------------- resuming, syncing

    def resume_from(self, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    split: int = 0) -> Resume:
        """The top of the model from ``layer`` on, ready to rerun (:func:`surgeon.runtime.resume.resume_from`)."""
        return resume_from(self, layer, input_ids, attention_mask, split=split)

    @torch.no_grad()
    def sync(self, key: str) -> None:
        """Copy the checkpoint's current value of ``key`` (staged edit, stored-dtype rounding and all)
        into the loaded model, so an edit can be measured without reloading."""
        ref = self.ck.resolve(key)
        mod = self.module(key)
        param = getattr(mod, ref.param)
        value = self.ck.stored(ref.tensor).to(param.dtype)
        hook = getattr(mod, "_hf_hook", None)
        wmap = getattr(hook, "weights_map", None)
        if param.device.type == "meta" and wmap is not None:  # offloaded: accelerate reads it from here per forward
            wmap.dataset.state_dict[wmap.prefix + ref.param] = value  # its state dict takes priority over the files
            return
        param.copy_(value)


def load(ck_or_path, **kw) -> Runtime:
    """A Runtime from a Checkpoint or a directory path (keywords: see :class:`Runtime`)."""
    if isinstance(ck_or_path, (str, Path)):
        return Runtime.from_path(ck_or_path, **kw)
    return Runtime(ck_or_path, **kw)
