"""One real forward pass of a tiny model, recorded: what each module read and wrote, and what attention saw.

Role inference (:mod:`surgeon.roles.infer`) decides roles from this record
rather than from names: a norm is ``norm.pre_mlp`` because its output *is*
the MLP's input, a projection is ``attn.v`` because its output columns *are*
the values the attention function received. The attention function is
observed through transformers' ``AttentionInterface`` (the registry every
modern modeling file dispatches through), so q/k/v are seen exactly as the
model hands them over, before any head repetition.

Nothing here imports torch at module level (the roles layer is header-only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROBE = "surgeon_trace"
BATCH, SEQ = 6, 5
_ACTIVE: list = []  # the record of the trace in progress (the probe has no other way to reach it)


@dataclass
class Call:
    """A module's first call: its first tensor input and first tensor output."""

    order: int
    inp: object = None
    out: object = None


@dataclass
class Attention:
    """What one attention module handed to the attention function: (batch, heads, seq, head_dim) tensors."""

    module: str
    q: object
    k: object
    v: object
    out: object  # (batch, seq, heads, head_dim)


@dataclass
class Trace:
    calls: dict[str, Call] = field(default_factory=dict)
    attention: dict[str, Attention] = field(default_factory=dict)
    probed: bool = False  # the model dispatched through the probe (else attention is unobserved)
    causal: bool = True  # changing the last token leaves every earlier position's logits alone
    ids: object = None  # the traced input ids, to rerun the model with a module patched


def _first_tensor(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):
        return _first_tensor(x["hidden_states"]) if "hidden_states" in x else _first_tensor(list(x.values()))
    if isinstance(x, (tuple, list)):
        for v in x:
            if isinstance(v, torch.Tensor):
                return v
    return None


def _probe(module, query, key, value, attention_mask, **kwargs):
    """Record q/k/v, then compute attention exactly as transformers' eager path does (softcap and sinks aside)."""
    import torch

    softcap = kwargs.pop("softcap", None)
    if softcap is None and "s_aux" not in kwargs:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    else:  # eager attention with logit soft-capping (Gemma-2), causal when no mask is given
        rep = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        scores = query @ k.transpose(2, 3) * (kwargs.get("scaling") or query.shape[-1] ** -0.5)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., : k.shape[-2]], float("-inf"))
        elif attention_mask is not None:
            scores = scores + attention_mask[..., : k.shape[-2]]
        else:
            t, s = scores.shape[-2:]
            scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(s - t + 1), float("-inf"))
        weights = torch.softmax(scores.float(), -1).to(query.dtype)
        out = (weights @ v).transpose(1, 2).contiguous()
    if _ACTIVE:
        rec, names = _ACTIVE[-1]
        name = names.get(id(module))
        if name is not None and name not in rec.attention:
            rec.attention[name] = Attention(name, query.detach(), key.detach(), value.detach(), out.detach())
            rec.probed = True
    return out, weights


def register_probe() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PROBE, _probe)


def build(config_obj, probe: bool = True):
    """A tiny float32 model on the CPU from a (shrunk) config object, probing attention where the family allows."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = None
    if probe:
        register_probe()
        try:
            model = AutoModelForCausalLM.from_config(config_obj, attn_implementation=PROBE)
        except (ValueError, KeyError, TypeError, AttributeError, NotImplementedError):
            model = None  # the family has no attention-interface dispatch: its attention stays unobserved
    if model is None:
        model = AutoModelForCausalLM.from_config(config_obj)
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: make every parameter distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.float().eval()


def trace(model, vocab: int) -> Trace:
    """Run ``BATCH`` random sequences of ``SEQ`` tokens through ``model``, recording every module's first call."""
    import torch

    rec = Trace()
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def hook(mod, args, kwargs, out, name):
        if name not in rec.calls:
            inp = _first_tensor(args) if args else None
            if inp is None:
                inp = _first_tensor(kwargs)
            rec.calls[name] = Call(len(rec.calls), _detach(inp), _detach(_first_tensor(out)))

    for n, m in model.named_modules():
        if n:
            handles.append(m.register_forward_hook(lambda mod, a, kw, o, n=n: hook(mod, a, kw, o, n), with_kwargs=True))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (BATCH, SEQ), generator=gen)
    _ACTIVE.append((rec, names))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False)
    finally:
        _ACTIVE.pop()
        for h in handles:
            h.remove()
    rec.calls[""] = Call(len(rec.calls), None, _detach(out.logits))
    rec.ids = ids
    later = ids.clone()
    later[:, -1] = (later[:, -1] + 1 - 3) % (vocab - 3) + 3
    with torch.no_grad():
        rec.causal = same(model(input_ids=later, use_cache=False).logits[:, :-1], out.logits[:, :-1])
    return rec


def _detach(t):
    return t.detach().clone() if t is not None and hasattr(t, "detach") else None


# ------------------------------------------------------------------ comparisons


def same(a, b) -> bool:
    """The same values (any shape with the same number of elements), float32 rounding aside."""
    import torch

    if a is None or b is None or a.numel() != b.numel() or a.numel() == 0:
        return False
    a, b = a.reshape(-1).float(), b.reshape(-1).float()
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-7))


def first_token(t, heads_layout: bool = False):
    """(batch, features) at position 0 of (batch, seq, ...) or (``heads_layout``) (batch, heads, seq, dim)."""
    if heads_layout or (t.dim() == 4 and t.shape[2] == SEQ and t.shape[1] != SEQ):
        return t[:, :, 0, :].reshape(t.shape[0], -1)
    return t[:, 0].reshape(t.shape[0], -1)


def all_tokens(t, heads_layout: bool = False):
    """(batch * seq, features) of (batch, seq, ...) or (``heads_layout``) (batch, heads, seq, dim)."""
    if heads_layout or (t.dim() == 4 and t.shape[2] == SEQ and t.shape[1] != SEQ):
        t = t.transpose(1, 2)
    return t.reshape(t.shape[0] * t.shape[1], -1)


def match_columns(src, dst) -> list[int] | None:
    """For each column of ``dst`` (batch, G), the column of ``src`` (batch, F) proportional to it; None if any has none.

    At position 0 rotary embeddings are the identity, so a projection's output
    columns reappear in q/k/v up to a constant (a pre-scaled query).
    """

    if src is None or dst is None or src.shape[0] != dst.shape[0]:
        return None
    s = src.float() / src.float().norm(dim=0).clamp_min(1e-12)
    d = dst.float() / dst.float().norm(dim=0).clamp_min(1e-12)
    sim = d.T @ s
    best, idx = sim.max(dim=1)
    if bool((best < 1 - 1e-5).any()) or bool((dst.float().norm(dim=0) == 0).any()):
        return None
    return [int(i) for i in idx]
