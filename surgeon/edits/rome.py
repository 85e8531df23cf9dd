"""Rank-one model editing (ROME: Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

ROME reads ``mlp.down`` of a middle layer as a key-value memory: the key k is
the input of ``mlp.down`` at the subject's last token, the value v its output.
To make "The Eiffel Tower is located in the city of" continue with " Rome" it

1. takes k* = the mean key at the subject's last token over a few short
   prefixes (so the edit fires whatever text came before the subject);
2. finds v* = W k* + δ by optimising δ, added to the output of ``mlp.down`` at
   that token, so the model produces the target (NLL over the prefixed
   prompts) while its next-token prediction after "{subject} is a" barely
   moves (KL term; the paper's Eq. 4, where the reference code reads it at the
   subject's last token) and δ stays small (weight decay and norm clamp,
   relative to ‖W k*‖). δ is what each prefixed prompt received, so the
   memory's new answer for the mean key is W k* + δ;
3. inserts (k*, v*) with the least change to the other stored keys, measured
   under their second moment C (:mod:`surgeon.edits.covariance`):
   ΔW = Λ uᵀ with u = C⁻¹k* and Λ = (v* − W k*) / (uᵀ k*), so ΔW k* = v* − W k*.
   The key of the bare prompt gets the same change (uᵀ k_bare = uᵀ k* = 1, still
   rank one): without a BOS token (SmolLM2) a subject that starts the prompt sits
   at the attention sink, its key is far from the prefixed ones (cosine 0.2-0.6),
   and a ΔW fitted to the mean alone left "Big Ben is located in the city of" →
   " Moscow" at P 0.002 where the optimisation reached 0.93 (layers 3, 6, 10;
   with both keys 0.88, 0.91, 0.97, ordinary prompts unchanged). An edit that
   still ends below P 0.5, or far below the optimised P, warns and says so in
   the manifest.

Speed: everything below the edited layer, and every position before the
subject's last token, is the same at every optimisation step, so it is run
once (:meth:`surgeon.runtime.Runtime.resume_from`, a KV cache for the prefix
columns); each step reruns only layers l..L-1 on the columns from the
subject's last token on, for all prefixed prompts in one batch, with the
model's weights frozen (no weight gradients) and the vocabulary head applied
only where a loss reads it.

Prefixes are sentence openings drawn from the shipped neutral corpus with a
fixed seed, where ROME samples them from the model: no generation cost,
reproducible, and still ordinary text ending in ". " before the prompt.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from surgeon.edits.covariance import Covariance, key_covariance
from surgeon.edits.request import RankOneRequest, corpus_prefixes, params_record, subject_token
from surgeon.errors import EditError
from surgeon.runtime import left_pad, load


@dataclass
class RankOneParams:
    """Knobs of the v* optimisation; defaults are ROME's GPT-2 XL values except where noted."""

    steps: int = 20  # Adam steps for δ
    lr: float = 0.5
    kl_weight: float = 0.0625  # weight of KL(original || edited) of the next token after each kl_prompt
    weight_decay: float = 0.5  # × ‖δ‖² / ‖W k*‖²
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ factor × ‖W k*‖
    stop_loss: float = 5e-2  # ROME's early stop on the total loss
    n_prefixes: int = 5  # ROME uses 20; on SmolLM2 5 generalise as well as 10 or 20 (benches/bench_rome.py)
    prefix_words: tuple[int, ...] = (5, 10)  # prefix lengths, cycled
    kl_prompts: tuple[str, ...] = ("{} is a",)
    seed: int = 0
    covariance_tokens: int = 20_000  # keys for C when covariance="corpus"
    resume: bool = True  # rerun only layers l.. from the subject's last token (False: whole model, as reference ROME)


@dataclass
class RankOneResult:
    """What the edit did, with the numbers that show whether it worked."""

    key: str
    layer: int
    covariance: dict
    p_before: float  # P(target | prompt) before the edit
    p_after: float  # ... after, with the weights as stored (dtype rounding included)
    p_optimised: float  # mean P(target) over the prefixed prompts at the end of the v* optimisation
    steps: int  # optimisation steps run
    delta_norm: float  # ‖ΔW‖ (float32)
    relative: float  # ‖ΔW‖ / ‖W‖
    stored_delta_norm: float  # ‖W_stored − W‖ after the cast to the stored dtype
    rounding_error: float  # ‖(W_stored − W) − ΔW‖ / ‖ΔW‖
    seconds: float  # whole edit, computing C excluded (loading a cached C included)
    seconds_v: float  # the v* optimisation
    warning: str | None  # set when P after the edit is below 0.5 or far below the optimised P
    k_star: torch.Tensor = field(repr=False)
    v_star: torch.Tensor = field(repr=False)
    delta_w: torch.Tensor = field(repr=False)  # ΔW (out, in), float32

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not isinstance(v, torch.Tensor)}


def rank_one(ck, request: RankOneRequest, *, layer: int | None = None, covariance="corpus",
             params: RankOneParams | None = None, runtime=None) -> RankOneResult:
    """Rewrite one fact with a rank-one update of ``layers.{layer}.mlp.down``.

    ``covariance``: ``"corpus"`` (C from the shipped neutral text, cached),
    ``"identity"`` (u = k*: what C buys is the difference), a
    :class:`surgeon.edits.covariance.Covariance`, or a (d_ff, d_ff) tensor.
    ``layer`` defaults to num_layers // 5 (layer 6 of SmolLM2's 30; ROME picks
    it by causal tracing). ``runtime``: a loaded Runtime of ``ck`` to reuse; it
    is kept in sync with the edit. The edit is staged in ``ck`` and recorded.
    """
    t0 = time.perf_counter()
    p = params or RankOneParams()
    layer = ck.num_layers // 5 if layer is None else layer
    key = f"layers.{layer}.mlp.down"
    covariance = _check(ck, request, key, layer, covariance)
    rt = runtime if runtime is not None else load(ck)
    batch = RewriteBatch.build(rt.tokenizer, request, p, key)
    p_before = float(rt.continuation_logprob([request.prompt], [request.target])[0].exp())

    W = ck[key]
    k_star, k_bare, top = compute_key(rt, key, batch, layer if p.resume else 0)
    wk = W @ k_star  # W k*: what the memory returns for k* today
    t_v = time.perf_counter()
    delta, steps, p_opt = optimise_value(rt, key, top, batch, wk, p)
    del top
    v_star = wk + delta
    seconds_v = time.perf_counter() - t_v

    C, cov_info, c_seconds = _second_moment(ck, layer, covariance, p, rt)
    delta_w = insert(W, k_star, v_star, C, also=k_bare[None])
    ck[key] = W + delta_w
    stored = ck[key] - W
    rt.sync(key)
    p_after = float(rt.continuation_logprob([request.prompt], [request.target])[0].exp())
    warning = _check_result(key, request, p_after, p_opt)
    result = RankOneResult(
        key=key, layer=layer, covariance=cov_info, p_before=p_before, p_after=p_after, p_optimised=p_opt,
        steps=steps, delta_norm=float(delta_w.norm()), relative=float(delta_w.norm() / W.norm()),
        stored_delta_norm=float(stored.norm()), rounding_error=float((stored - delta_w).norm() / delta_w.norm()),
        seconds=time.perf_counter() - t0 - c_seconds, seconds_v=seconds_v, warning=warning, k_star=k_star,
        v_star=v_star, delta_w=delta_w,
    )
    ck.record("rome", key=key, layer=layer, subject=request.subject, prompt=request.prompt, target=request.target,
              covariance=cov_info, p_before=round(p_before, 4), p_after=round(p_after, 4),
              relative_change=round(result.relative, 5), steps=steps, params=params_record(p),
              **({"warning": warning} if warning else {}))
    return result


def _check_result(key: str, request: RankOneRequest, p_after: float, p_opt: float) -> str | None:
    """A warning (issued, and returned for the result and manifest) when the prompt does not say the target."""
    if p_after >= 0.5 and p_after >= p_opt - 0.3:
        return None
    msg = (f"{key}: after the edit P({request.target!r} | {request.prompt!r}) = {p_after:.3f}, where the "
           f"optimisation reached {p_opt:.3f}: the fact is not reliably rewritten (try another layer, more steps, "
           f"or a prompt with words before the subject)")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return msg


def _check(ck, request: RankOneRequest, key: str, layer: int, covariance):
    """Refuse what cannot work before any forward pass; a raw covariance becomes a tensor."""
    if key not in ck:
        raise EditError(f"{key}: no such tensor in {ck.path} (rank-one edits need mlp.down)")
    if request.subject not in request.prompt:
        raise EditError(f"{key}: subject {request.subject!r} does not occur in prompt {request.prompt!r}")
    if isinstance(covariance, str) and covariance not in ("corpus", "identity"):
        raise EditError(f"{key}: covariance must be 'corpus', 'identity', a Covariance or a tensor, not {covariance!r}")
    if isinstance(covariance, Covariance) and covariance.layer != layer:
        raise EditError(f"{key}: covariance was computed for layers.{covariance.layer}.mlp.down")
    if not isinstance(covariance, (str, Covariance)):
        covariance = torch.as_tensor(covariance)
        d = ck.shape(key)[1]
        if covariance.shape != (d, d):
            raise EditError(f"{key}: covariance of shape {tuple(covariance.shape)} does not match keys of size {d}")
    return covariance


@dataclass
class RewriteBatch:
    """The prompts of one request in one left-padded batch: ``n_rw`` prefixed copies of the prompt
    (each followed by the target but its last token), then the KL prompts ("{subject} is a").

    ``subj_col``/``last_col``: each row's column of the subject's last token and of its last token;
    ``nll_r/c/t``: (row, column, token) of every target token the NLL reads; ``kl_c``: the
    column whose next-token distribution the KL term holds still, for each KL row.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    n_rw: int
    subj_col: torch.Tensor
    last_col: torch.Tensor
    nll_r: torch.Tensor
    nll_c: torch.Tensor
    nll_t: torch.Tensor
    kl_c: torch.Tensor
    split: int  # columns before this are the same at every step (the prefix KV cache)

    @classmethod
    def build(cls, tok, request: RankOneRequest, p: RankOneParams, key: str) -> RewriteBatch:
        target_ids = tok(request.target, add_special_tokens=False)["input_ids"]
        if not target_ids:
            raise EditError(f"{key}: target {request.target!r} is empty after tokenisation")
        prefixes = [""] + corpus_prefixes(p.n_prefixes, p.prefix_words, p.seed)
        texts = [pre + request.prompt for pre in prefixes] + [k.format(request.subject) for k in p.kl_prompts]
        n_rw = len(prefixes)
        rows, subj = [], []
        for i, text in enumerate(texts):
            subj.append(subject_token(tok, text, request.subject, len(prefixes[i]) if i < n_rw else 0))
            rows.append(tok(text)["input_ids"] + (target_ids[:-1] if i < n_rw else []))
        ids, mask, offset = left_pad(rows, tok.pad_token_id)
        subj_col = torch.tensor([o + s for o, s in zip(offset, subj)])
        last_col = torch.tensor([len(r) - 1 + o for r, o in zip(rows, offset)])
        split = int(subj_col.min()) if p.resume else 0
        nll_r, nll_c, nll_t = [], [], []
        for i in range(n_rw):
            first = int(last_col[i]) - (len(target_ids) - 1)  # the column that predicts target_ids[0]
            for j, t in enumerate(target_ids):
                nll_r.append(i), nll_c.append(first + j - split), nll_t.append(t)
        return cls(ids, mask, n_rw, subj_col, last_col, torch.tensor(nll_r), torch.tensor(nll_c),
                   torch.tensor(nll_t), last_col[n_rw:] - split, split)

    @property
    def rows(self) -> int:
        return self.ids.shape[0]


def compute_key(rt, key: str, batch: RewriteBatch, start_layer: int):
    """k* = the mean input of ``mlp.down`` at the subject's last token over the prefixed prompts.

    Returns (k*, k_bare, top): k_bare is the key of the bare prompt (row 0, no prefix);
    ``top`` reruns layers ``start_layer``.. of the batch (:meth:`Runtime.resume_from`).
    """
    at = batch.subj_col - batch.split
    with rt.frozen(), rt.capture([f"{key}.input"]) as store:
        top = rt.resume_from(start_layer, batch.ids, batch.mask, split=batch.split)
    keys = store[f"{key}.input"].float()
    per_row = keys[torch.arange(batch.n_rw), at[: batch.n_rw]].cpu()
    return per_row.mean(0), per_row[0], top


def optimise_value(rt, key: str, top, batch: RewriteBatch, wk: torch.Tensor, p: RankOneParams):
    """δ added to ``mlp.down``'s output at the subject's last token, so that the prompts produce the target.

    Loss: NLL of the target over the prefixed prompts + ``kl_weight`` × KL of the
    next token after the KL prompts + ``weight_decay`` × ‖δ‖²/‖W k*‖²; ‖δ‖ is
    clamped to ``clamp_norm_factor`` × ‖W k*‖. Returns (δ, steps run, mean P(target) at the end).
    """
    dev = rt.device
    n_nll = len(batch.nll_r)
    sel_r = torch.cat([batch.nll_r, torch.arange(batch.n_rw, batch.rows)]).to(dev)
    sel_c = torch.cat([batch.nll_c, batch.kl_c]).to(dev)
    nll_t = batch.nll_t.to(dev).view(-1, 1)
    r_all, c_all = torch.arange(batch.rows, device=dev), (batch.subj_col - batch.split).to(dev)
    delta = torch.zeros_like(wk, device=dev, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=p.lr)
    max_norm = p.clamp_norm_factor * wk.norm()

    def add_delta(out):  # layer l may sit on another device than the inputs (device_map)
        idx = (r_all.to(out.device), c_all.to(out.device))
        return out.index_put(idx, delta.to(out.device, out.dtype).expand(batch.rows, -1), accumulate=True)

    with rt.frozen(), torch.enable_grad():
        with torch.no_grad():
            base = torch.log_softmax(top.run(top.hidden, sel_r[n_nll:], sel_c[n_nll:]), -1)
        steps, p_opt = 0, 0.0
        for steps in range(1, p.steps + 1):  # noqa: B007 - the count after the loop is the result
            opt.zero_grad()
            with rt.patch(key, add_delta):
                logp = torch.log_softmax(top.run(top.hidden, sel_r, sel_c), -1)
            tok_lp = logp[:n_nll].gather(1, nll_t).squeeze(1)
            kl = torch.nn.functional.kl_div(logp[n_nll:], base, log_target=True, reduction="batchmean")
            loss = -tok_lp.mean() + p.kl_weight * kl + p.weight_decay * delta.norm() ** 2 / wk.norm() ** 2
            p_opt = float(tok_lp.detach().view(batch.n_rw, -1).sum(1).exp().mean())
            if loss.item() < p.stop_loss:
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return delta.detach().cpu(), steps, p_opt


def insert(W: torch.Tensor, k_star: torch.Tensor, v_star: torch.Tensor, C: torch.Tensor | None,
           also: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = Λ uᵀ with u = C⁻¹k*, Λ = (v* − W k*) / (uᵀk*): W' k* = v*, least change to other keys under C.

    ``also``: (n, d_ff) keys that must receive the same change Λ (W' k = W k + v* − W k*):
    u = C⁻¹K (Kᵀ C⁻¹ K)⁻¹ 1 over K = [k*, also], the least-change u with uᵀk = 1 for
    each, so ΔW stays rank one. A key nearly parallel to k* under C adds nothing and
    is left out (it would only inflate u). ``C`` None: the identity covariance.
    """
    K = k_star.double()[:, None] if also is None else torch.cat([k_star[None], also]).double().T  # (d_ff, n)
    U = K if C is None else torch.linalg.solve(C.double(), K)
    G = K.T @ U  # Gram matrix of the keys under C⁻¹
    g = G.diagonal()
    cos2 = G[0] ** 2 / (g[0] * g)
    keep = torch.cat([torch.tensor([True]), cos2[1:] < 1 - 1e-4])
    U, G = U[:, keep], G[keep][:, keep]
    u = U @ torch.linalg.solve(G, torch.ones(len(G), dtype=G.dtype))
    lam = (v_star - W @ k_star).double()
    return torch.outer(lam, u).float()


def _second_moment(ck, layer: int, covariance, p: RankOneParams, rt):
    """(C or None for identity, what the manifest records about it, seconds spent computing it)."""
    if isinstance(covariance, str) and covariance == "identity":
        return None, {"source": "identity"}, 0.0
    if isinstance(covariance, str):  # "corpus": computed (or loaded from the cache) here
        covariance = key_covariance(ck, layer, tokens=p.covariance_tokens, runtime=rt)
        return covariance.matrix, covariance.describe(), covariance.seconds
    if isinstance(covariance, Covariance):
        return covariance.matrix, covariance.describe(), 0.0
    return torch.as_tensor(covariance), {"source": "tensor"}, 0.0
