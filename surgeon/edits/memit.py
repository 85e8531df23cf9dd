"""Many facts at once: MEMIT (batched) and AlphaEdit (sequential, null-space projected).

MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer", arXiv
2210.07229, §4 and Alg. 1) writes N facts into the ``mlp.down`` of a range of
layers R = l₁..L at once:

1. **values** (:func:`optimise_values`): for every request i, a residual
   vector zᵢ = hᵢ + δᵢ at the output of the *last* layer L, at the subject's
   last token, such that the model says the target (NLL over the prompt and a
   few prefixed copies), keeps "{subject} is a" (KL) and δ stays small
   (weight decay, norm clamp relative to ‖hᵢ‖). ROME does this fact by fact;
   here every request of a batch has its own row of δ and one forward runs
   them all, from layer L+1 only (:meth:`surgeon.runtime.Runtime.resume_from`).
2. **keys** (:func:`compute_keys`): kᵢ at the input of ``layers.l.mlp.down``,
   mean over the prefixed prompts, with the weights as they are *now* (layers
   below l already edited in this pass).
3. **insert** (:func:`insert`), for l = l₁..L in order: the part of the
   remaining residual zᵢ − h_L,i that layer l takes is 1 / (L − l + 1) of it
   (the rest is left to the layers above, which see the new keys), and
   ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, the least-squares update that writes the N new
   (key, value) pairs while disturbing the keys stored under C, the key
   covariance of :mod:`surgeon.edits.covariance` (Eq. 14 of the paper).

AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge
Editing for Language Models", arXiv 2410.02355, Eq. 9–11) edits in rounds and
projects each update onto the null space of the preserved keys, so that ΔW
acts only where they carry little energy rather than trading them off in the
least-squares sense:

* P = Û Ûᵀ, Û the eigenvectors of C with the smallest eigenvalues, holding 10 % of the keys' energy
  (:func:`null_space`; SmolLM2 has no true null space), computed once from the unedited model;
* ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + αI)⁻¹, where K_p holds the keys of every
  earlier round: their outputs are kept as well, so round t does not undo
  rounds 1..t−1. The solution lies in the range of P, hence ‖ΔW K₀‖ is bounded by the energy P holds
  (≈ 0 where C has a true null space; a few percent of ‖W K₀‖ on SmolLM2). α is 300 × C's mean
  eigenvalue (≈ 4.5 on SmolLM2's layers 2–6, the scale of the paper's absolute 10): chosen on the
  validation facts in rounds of 25 (α = 1, 30, 300 × kept neighbourhoods 0.875, 0.885, 0.892); with
  1 × the 10 rounds of 100 at N = 1,000 collapse (efficacy 0.35, KL 11), with 300 × they hold
  (efficacy 0.98, generated 0.89, KL 0.24).

Both are one entry, :func:`edit_facts` (``mode="batched"`` or
``"sequential"``); AlphaEdit's projection and :class:`FactsState` (C, P and
K_p K_pᵀ carried from one call to the next, saved and loaded so that a run
resumes) live in :mod:`surgeon.edits.alphaedit`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from surgeon.edits.alphaedit import FactsState, insert_projected, null_space
from surgeon.edits.covariance import key_covariance
from surgeon.edits.request import RankOneRequest, corpus_prefixes, params_record, subject_token
from surgeon.errors import EditError
from surgeon.roles.layers import parse_layers
from surgeon.runtime import left_pad, load, positions


@dataclass
class FactsParams:
    """Knobs; defaults chosen on the validation split of the shipped SmolLM2 fact set."""

    steps: int = 15  # Adam steps for the δ of each batch (MEMIT: 25; 15 reach p≈0.9 on the validation facts)
    lr: float = 0.5
    kl_weight: float = 0.0625
    weight_decay: float = 0.5  # × ‖δᵢ‖² / ‖hᵢ‖²
    clamp_norm_factor: float = 0.75  # ‖δᵢ‖ ≤ factor × ‖hᵢ‖ (MEMIT's value)
    stop_loss: float = 5e-2  # a request stops moving once its own loss is below this
    n_prefixes: int = 1  # prefixed copies of each prompt (ROME's context templates), besides the plain one
    prefix_words: tuple[int, ...] = (5, 10)
    kl_prompts: tuple[str, ...] = ("{} is a",)
    seed: int = 0
    chunk: int = 32  # requests per forward of the v* optimisation (memory ∝ chunk)
    covariance_tokens: int = 20_000
    covariance_weight: float = 0.3  # MEMIT's λ in units of d_ff (λ = weight × d_ff; GPT-J's 15000 ≈ 0.9 × 16384)
    null_energy: float = 0.1  # AlphaEdit: share of the preserved keys' energy in the null space (1 %: N=100 collapses)
    l2: float = 300.0  # AlphaEdit's α in units of C's mean eigenvalue (1: 10 rounds of 100 collapse; on validation)
    round_size: int = 100  # sequential mode: requests per round


@dataclass
class FactsResult:
    mode: str
    layers: list[int]
    requests: int
    rounds: int
    seconds: float  # whole call, covariance computation excluded
    seconds_values: float  # the v* optimisations
    seconds_covariance: float
    covariance_tokens: int
    steps_mean: float  # Adam steps per batch of δ, mean
    p_optimised: float  # mean P(target) over the rewriting prompts at the end of the optimisation
    relative: dict[int, float]  # ‖ΔW_l‖ / ‖W_l‖ per layer (float32, before the cast to the stored dtype)
    rounding: dict[int, float]  # ‖(W_stored − W) − ΔW‖ / ‖ΔW‖ per layer: what the cast to the stored dtype changed
    null_dims: dict[int, int]  # sequential: dimension of the null space per layer
    state: FactsState = field(repr=False)
    delta_w: dict[int, torch.Tensor] = field(repr=False)  # ΔW per layer as solved, float32 (summed over rounds)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("state", "delta_w")}
        return d


def edit_facts(ck, requests: list[RankOneRequest], *, layers: list[int] | str | None = None, mode: str = "batched",
               params: FactsParams | None = None, runtime=None, state: FactsState | None = None,
               on_round=None, progress: bool = False) -> FactsResult:
    """Write ``requests`` into ``layers.{l}.mlp.down`` for l in ``layers``.

    ``mode``: ``"batched"`` (MEMIT: all requests in one update) or
    ``"sequential"`` (AlphaEdit: rounds of ``params.round_size``, each
    null-space projected and keeping the earlier rounds' keys). ``layers``: a
    list, a range spec (``"2-6"``, ``"2,4,6"``), or None (five layers ending at num_layers // 5: 2-6 on SmolLM2).
    ``state``: the :attr:`FactsResult.state` of an earlier call, to go on from
    it (sequential: the earlier rounds stay protected; C and P are not
    recomputed on the edited weights). ``on_round(i, done, state)`` is called
    after each round with the requests written so far (save the checkpoint and
    ``state.save(...)`` there to resume later).
    Staged in ``ck`` and recorded in the manifest.
    """
    t0 = time.perf_counter()
    p = params or FactsParams()
    if mode not in ("batched", "sequential"):
        raise EditError(f"edit_facts: mode must be 'batched' or 'sequential', not {mode!r}")
    layers = _layers(ck, layers if state is None or layers is not None else state.layers)
    if state is not None and state.layers != layers:
        raise EditError(f"edit_facts: state is for layers {state.layers}, not {layers}")
    for r in requests:
        if r.subject not in r.prompt:
            raise EditError(f"edit_facts: subject {r.subject!r} does not occur in prompt {r.prompt!r}")
    rt = runtime if runtime is not None else load(ck)
    state = _prepare_state(ck, rt, layers, mode, p, state, progress)
    c_seconds = sum(c.seconds for c in state.covariances.values())

    size = p.round_size if mode == "sequential" else max(len(requests), 1)
    originals = {lay: ck[f"layers.{lay}.mlp.down"] for lay in layers}
    delta_w = {lay: torch.zeros_like(W) for lay, W in originals.items()}
    seconds_v, steps, p_opt, rounds = 0.0, [], [], 0
    for start in range(0, len(requests), size):
        batch = requests[start:start + size]
        tv = time.perf_counter()
        z, st, po = optimise_values(rt, batch, layers[-1], p)
        seconds_v += time.perf_counter() - tv
        steps += st
        p_opt += po
        _spread(ck, rt, batch, z, layers, mode, p, state, delta_w)
        rounds += 1
        state.edited += len(batch)
        if on_round is not None:
            on_round(rounds, start + len(batch), state)

    stored = {lay: ck[f"layers.{lay}.mlp.down"] - originals[lay] for lay in layers}
    result = FactsResult(
        mode=mode, layers=layers, requests=len(requests), rounds=rounds,
        seconds=time.perf_counter() - t0 - c_seconds, seconds_values=seconds_v, seconds_covariance=c_seconds,
        covariance_tokens=min(c.tokens for c in state.covariances.values()),
        steps_mean=sum(steps) / max(len(steps), 1), p_optimised=sum(p_opt) / max(len(p_opt), 1),
        relative={lay: float(delta_w[lay].norm() / originals[lay].norm()) for lay in layers},
        rounding={lay: float((stored[lay] - delta_w[lay]).norm() / delta_w[lay].norm().clamp(min=1e-30))
                  for lay in layers},
        null_dims=state.null_dims(), state=state, delta_w=delta_w)
    ck.record("memit" if mode == "batched" else "alphaedit", layers=layers, mode=mode, requests=len(requests),
              rounds=rounds, covariance={lay: c.describe() for lay, c in state.covariances.items()},
              relative_change={lay: round(v, 6) for lay, v in result.relative.items()}, params=params_record(p),
              facts=[{"subject": r.subject, "prompt": r.prompt, "target": r.target} for r in requests])
    return result


def _prepare_state(ck, rt, layers, mode: str, p: FactsParams, state, progress: bool) -> FactsState:
    """C per layer (cached on disk), and for AlphaEdit the null-space projector P and the preserved keys."""
    if state is None:
        covs = {lay: key_covariance(ck, lay, tokens=p.covariance_tokens, runtime=rt, progress=progress)
                for lay in layers}
        state = FactsState(layers, covs)
    if mode == "sequential":
        for lay in layers:
            if lay not in state.projectors:
                state.projectors[lay] = null_space(state.covariances[lay].matrix, p.null_energy)
                state.preserved[lay] = torch.zeros_like(state.projectors[lay])
    return state


def _spread(ck, rt, batch, z, layers, mode: str, p: FactsParams, state: FactsState, delta_w: dict) -> None:
    """MEMIT's spread: layer by layer, insert an equal share of what is still missing (z − h) at this layer."""
    for i, lay in enumerate(layers):
        keys, h = compute_keys(rt, batch, lay, layers[-1], p)
        resid = (z - h) / (len(layers) - i)
        key = f"layers.{lay}.mlp.down"
        if f"layers.{lay}.norm.post_mlp" in ck:  # the residual gets the norm of mlp.down's output, not the output
            resid = through_post_norm(rt, lay, keys @ ck[key].T + (ck[f"{key}.bias"] if f"{key}.bias" in ck else 0),
                                      resid)
        C = state.covariances[lay].matrix
        if mode == "batched":
            dw = insert(resid, keys, p.covariance_weight * C.shape[0] * C)
        else:
            alpha = p.l2 * float(C.trace()) / C.shape[0]
            dw = insert_projected(resid, keys, state.projectors[lay], state.preserved[lay], alpha)
            state.preserved[lay] += keys.double().T @ keys.double()
        ck[key] = ck[key] + dw
        delta_w[lay] += dw
        rt.sync(key)


# ------------------------------------------------------------------- steps


@dataclass
class _Rows:
    """Tokenised rows for a list of requests: rewriting prompts (plain + prefixed, + target[:-1]) and KL prompts."""

    ids: torch.Tensor
    mask: torch.Tensor
    req: torch.Tensor  # request index of each row
    subj: torch.Tensor  # absolute column of the subject's last token
    rewrite: torch.Tensor  # bool: a rewriting row
    plain: torch.Tensor  # row of each request's plain prompt
    nll_r: torch.Tensor  # (row, col, token) where a target token's NLL is read
    nll_c: torch.Tensor
    nll_t: torch.Tensor
    last: torch.Tensor  # last column of each row


def _rows(tok, requests: list[RankOneRequest], p: FactsParams, with_target: bool = True) -> _Rows:
    prefixes = [""] + corpus_prefixes(p.n_prefixes, p.prefix_words, p.seed)
    rows, req, subj, rewrite, plain, tgt = [], [], [], [], [], []
    for i, r in enumerate(requests):
        t_ids = tok(r.target, add_special_tokens=False)["input_ids"]
        if not t_ids:
            raise EditError(f"edit_facts: target {r.target!r} is empty after tokenisation")
        texts = [(pre + r.prompt, len(pre), True) for pre in prefixes]
        texts += [(k.format(r.subject), 0, False) for k in (p.kl_prompts if with_target else ())]
        for j, (text, start, rw) in enumerate(texts):
            if j == 0:
                plain.append(len(rows))
            subj.append(subject_token(tok, text, r.subject, start))
            ids = tok(text)["input_ids"]
            tgt.append(t_ids if rw and with_target else [])
            rows.append(ids + (t_ids[:-1] if rw and with_target else []))
            req.append(i)
            rewrite.append(rw)
    ids, mask, offset = left_pad(rows, tok.pad_token_id)
    subj_col = torch.tensor([o + s for o, s in zip(offset, subj)])
    last = torch.tensor([len(r) - 1 + o for r, o in zip(rows, offset)])
    nr, nc, nt = [], [], []
    for k, t_ids in enumerate(tgt):
        first = int(last[k]) - (len(t_ids) - 1)
        for j, t in enumerate(t_ids):
            nr.append(k), nc.append(first + j), nt.append(t)
    return _Rows(ids, mask, torch.tensor(req), subj_col, torch.tensor(rewrite), torch.tensor(plain),
                 *(torch.tensor(x, dtype=torch.long) for x in (nr, nc, nt)), last)


def optimise_values(rt, requests: list[RankOneRequest], layer: int, p: FactsParams):
    """z (N, d): the residual after ``layers.{layer}`` at each subject's last token that makes its target come out.

    Chunks of ``p.chunk`` requests; each chunk is one batch per Adam step, every
    request with its own δ row and its own loss (so early-stopped requests stop
    moving while the others go on). Returns (z, steps per chunk, mean P(target)
    per request at the end).
    """
    zs, steps, p_opt = [], [], []
    for s in range(0, len(requests), p.chunk):
        z, st, po = _optimise_chunk(rt, requests[s:s + p.chunk], layer, p)
        zs.append(z), steps.append(st), p_opt.extend(po)
    return torch.cat(zs), steps, p_opt


def _optimise_chunk(rt, requests, layer, p):
    b = _rows(rt.tokenizer, requests, p)
    n = len(requests)
    split = int(b.subj.min())
    with rt.frozen():
        top = rt.resume_from(layer + 1, b.ids, b.mask, split=split)
    h0 = top.hidden.detach()
    at = b.subj - split
    rows = torch.arange(len(b.req))
    h_init = h0[b.plain, at[b.plain]].clone()  # (n, d): the residual the plain prompt has today
    kl_rows = (~b.rewrite).nonzero().squeeze(1)
    sel_r = torch.cat([b.nll_r, kl_rows])
    sel_c = torch.cat([b.nll_c, b.last[kl_rows]]) - split
    n_nll = len(b.nll_r)
    nll_req = b.req[b.nll_r]
    n_tok = torch.zeros(n).index_add_(0, nll_req, torch.ones(n_nll))
    kl_req = b.req[kl_rows]
    n_kl = torch.zeros(n).index_add_(0, kl_req, torch.ones(len(kl_rows))).clamp(min=1)
    n_rw = torch.zeros(n).index_add_(0, b.req[b.rewrite], torch.ones(int(b.rewrite.sum())))

    delta = torch.zeros_like(h_init, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=p.lr)
    max_norm = p.clamp_norm_factor * h_init.norm(dim=1)
    h_norm2 = h_init.norm(dim=1) ** 2
    with rt.frozen(), torch.enable_grad():
        with torch.no_grad():
            base = torch.log_softmax(top.run(h0, sel_r[n_nll:], sel_c[n_nll:]), -1)
        done = torch.zeros(n, dtype=torch.bool)
        step = 0
        while step < p.steps:
            step += 1
            opt.zero_grad()
            h = h0.index_put((rows, at), delta[b.req], accumulate=True)
            logp = torch.log_softmax(top.run(h, sel_r, sel_c), -1)
            tok_lp = logp[:n_nll].gather(1, b.nll_t.view(-1, 1)).squeeze(1)
            nll = torch.zeros(n).index_add(0, nll_req, -tok_lp) / n_tok
            kl_each = (base.exp() * (base - logp[n_nll:])).sum(-1)
            kl = torch.zeros(n).index_add(0, kl_req, kl_each) / n_kl
            decay = p.weight_decay * delta.norm(dim=1) ** 2 / h_norm2
            loss = nll + p.kl_weight * kl + decay
            with torch.no_grad():  # P(target) per rewriting row, averaged per request
                seq = torch.zeros(len(rows)).index_add(0, b.nll_r, tok_lp.detach()).exp()
                p_req = torch.zeros(n).index_add(0, b.req, torch.where(b.rewrite, seq, 0.0)) / n_rw
            done = done | (loss.detach() < p.stop_loss)
            if bool(done.all()):
                break
            keep = delta.detach()[done].clone()
            loss[~done].sum().backward()
            opt.step()
            with torch.no_grad():
                delta[done] = keep
                norm = delta.norm(dim=1)
                over = norm > max_norm
                delta[over] *= (max_norm[over] / norm[over]).unsqueeze(1)
    del top
    return (h_init + delta.detach()), step, p_req.tolist()


class _Stop(Exception):
    """Raised once the last needed activation is captured: nothing above it has to run."""


@torch.no_grad()
def compute_keys(rt, requests: list[RankOneRequest], layer: int, z_layer: int, p: FactsParams, batch_rows: int = 256):
    """(K (N, d_ff), h (N, d)): keys at ``layers.{layer}.mlp.down`` (mean over the prefixed prompts) and the
    residual after ``layers.{z_layer}`` at the plain prompt, both at the subject's last token, current weights."""
    b = _rows(rt.tokenizer, requests, p, with_target=False)
    n = len(requests)
    keys = torch.zeros(n, rt.module(f"layers.{layer}.mlp.down").in_features)
    h = torch.zeros(n, rt.model.config.hidden_size)
    count = torch.zeros(n)
    body = rt.model.base_model
    for s in range(0, len(b.req), batch_rows):
        sl = slice(s, s + batch_rows)
        ids, mask = b.ids[sl], b.mask[sl]
        keep = mask.any(0)  # drop columns that are padding in every row of this slice
        first = int(keep.nonzero()[0])
        ids, mask = ids[:, first:], mask[:, first:]
        col = b.subj[sl] - first
        got = {}

        def grab_k(x, got=got, col=col):
            got["k"] = x[torch.arange(len(x)), col]
            return x

        def grab_h(x, got=got, col=col):
            got["h"] = x[torch.arange(len(x)), col]
            raise _Stop

        pos = positions(mask)
        with rt.patch(f"layers.{layer}.mlp.down.input", grab_k), rt.patch(f"layers.{z_layer}", grab_h):
            try:
                body(input_ids=ids.to(rt.device), attention_mask=mask.to(rt.device), position_ids=pos.to(rt.device),
                     use_cache=False)
            except _Stop:
                pass
        req = b.req[sl]
        keys.index_add_(0, req, got["k"].float().cpu())
        count.index_add_(0, req, torch.ones(len(req)))
        pl = b.rewrite[sl] & (torch.arange(s, s + len(req)) == b.plain[req])
        h[req[pl]] = got["h"][pl].float().cpu()
    return keys / count.unsqueeze(1), h


def through_post_norm(rt, layer: int, m: torch.Tensor, resid: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """What ``mlp.down``'s outputs ``m`` (N, d) must change by to move the residual by ``resid`` through the
    layer's ``norm.post_mlp`` (Gemma-2/3, OLMo-2), which keeps only their direction: m' − m, with
    m' = argmin ‖norm(m') − (norm(m) + resid)‖² by Adam from m (m + resid would reach a fraction of it)."""
    norm = rt.module(f"layers.{layer}.norm.post_mlp")
    m = m.to(rt.device, next(norm.parameters()).dtype)
    with torch.no_grad():
        want = norm(m) + resid.to(m)
    x = m.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05 * float(m.pow(2).mean().sqrt()))
    with torch.enable_grad():
        for _ in range(steps):
            (x.grad,) = torch.autograd.grad((norm(x) - want).pow(2).sum(), x)  # the norm's weights get none
            opt.step()
    return (x.detach() - m).float().cpu()


def insert(resid: torch.Tensor, keys: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """MEMIT's update: ΔW = R Kᵀ (reg + K Kᵀ)⁻¹ with R (N, d) residuals and K (N, d_ff) keys; returns (d, d_ff)."""
    K = keys.double().T  # (d_ff, N)
    A = reg.double() + K @ K.T
    adj = torch.linalg.solve(A, K)  # (d_ff, N)
    return (resid.double().T @ adj.T).float()


def _layers(ck, layers) -> list[int]:
    if layers is None:
        top = ck.num_layers // 5  # ROME's layer (6 of SmolLM2's 30) is the top of the range
        out = list(range(max(0, top - 4), top + 1))
    else:
        out = parse_layers(layers, ck.num_layers, error=EditError)
    if not out or out[-1] >= ck.num_layers - 1:
        raise EditError(f"edit_facts: layers {layers!r} out of range for {ck.num_layers} layers "
                        f"(the last edited layer must have one above it)")
    for lay in out:
        if f"layers.{lay}.mlp.down" not in ck:
            raise EditError(f"edit_facts: layers.{lay}.mlp.down: no such tensor in {ck.path}")
    return out
