"""AlphaEdit's half of :func:`surgeon.edits.memit.edit_facts`: the null-space projection and the state of a run.

AlphaEdit (Fang et al. 2025, arXiv 2410.02355, Eq. 9–11) edits in rounds and
projects every update onto the null space of the preserved keys:

* :func:`null_space`: P = Û Ûᵀ from the eigenvectors of C, the unedited model's key covariance;
* :func:`insert_projected`: ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + αI)⁻¹, K_p the keys of every earlier round;
* :class:`FactsState`: C, P and K_p K_pᵀ per layer, carried from round to round, and saved beside each
  round's checkpoint (:meth:`FactsState.save`) so that a run that stopped resumes where it was
  (:meth:`FactsState.load`; ``examples/many_facts/edit.py --param resume=...``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from surgeon.edits.covariance import Covariance
from surgeon.errors import EditError
from surgeon.io.atomic import atomic_file


@dataclass
class FactsState:
    """What a sequential run carries between rounds (and calls): C and P per layer, K_p K_pᵀ, count."""

    layers: list[int]
    covariances: dict[int, Covariance]
    projectors: dict[int, torch.Tensor] = field(default_factory=dict)  # (d_ff, d_ff) float64
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)  # Σ k kᵀ of edits so far, float64
    edited: int = 0  # requests written so far

    def null_dims(self) -> dict[int, int]:
        return {lay: int(round(float(P.trace()))) for lay, P in self.projectors.items()}

    def save(self, path: str | Path) -> Path:
        """Write C, P and K_p K_pᵀ of every layer (float64) and the count to one safetensors file, atomically."""
        tensors = {}
        for lay in self.layers:
            tensors[f"C.{lay}"] = self.covariances[lay].matrix.contiguous()
            if lay in self.projectors:
                tensors[f"P.{lay}"] = self.projectors[lay].contiguous()
                tensors[f"preserved.{lay}"] = self.preserved[lay].contiguous()
        meta = {"layers": self.layers, "edited": self.edited,
                "covariances": {lay: {"tokens": c.tokens, "key": c.key, "source": c.source}
                                for lay, c in self.covariances.items()}}
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"surgeon_facts_state": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> FactsState:
        """The state :meth:`save` wrote; a file that is not one fails naming it."""
        try:
            with safe_open(str(path), "pt") as fh:  # one read: the metadata and the tensors
                meta = json.loads((fh.metadata() or {})["surgeon_facts_state"])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            layers = [int(x) for x in meta["layers"]]
            about = {lay: meta["covariances"][str(lay)] for lay in layers}
            covs = {lay: Covariance(tensors[f"C.{lay}"], lay, int(c["tokens"]), c["key"], 0.0, True, c["source"])
                    for lay, c in about.items()}
        except (OSError, SafetensorError, KeyError, ValueError, TypeError) as e:
            raise EditError(f"{path}: not a surgeon facts state ({type(e).__name__}: {e})") from None
        state = cls(layers, covs, edited=int(meta["edited"]))
        for lay in layers:
            if f"P.{lay}" in tensors:
                state.projectors[lay] = tensors[f"P.{lay}"]
                state.preserved[lay] = tensors[f"preserved.{lay}"]
        return state


def insert_projected(resid: torch.Tensor, keys: torch.Tensor, P: torch.Tensor, preserved: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """AlphaEdit's update: ΔWᵀ = (P (K Kᵀ + K_p K_pᵀ) + αI)⁻¹ P K Rᵀ; it lies in the range of P, so ΔW K₀ ≈ 0."""
    K = keys.double().T
    d = K.shape[0]
    A = P @ (K @ K.T + preserved) + alpha * torch.eye(d, dtype=torch.float64)
    upd = torch.linalg.solve(A, P @ K @ resid.double())  # (d_ff, d)
    return upd.T.float()


def null_space(C: torch.Tensor, energy: float) -> torch.Tensor:
    """AlphaEdit's P = Û Ûᵀ: Û the eigenvectors of C with the smallest eigenvalues whose sum is below
    ``energy`` × tr(C), i.e. directions in which the preserved keys carry that share of their energy.

    AlphaEdit thresholds the eigenvalues at an absolute 2e-2 for 14k-wide keys of 8B models; SmolLM2's
    1,536-wide keys have no eigenvalue below 1 % of the mean, so the share of energy is the scale-free rule.
    The space must also leave room for the keys of a round: at 1 % it has about 100 dimensions at
    SmolLM2's layers 3-6, 100 facts' keys keep 6 % of their energy in it, ΔW grows ten-fold and the model
    collapses; ``FactsParams.null_energy`` (0.1) was chosen on the validation facts at N = 100.
    """
    vals, vecs = torch.linalg.eigh(C.double())  # ascending
    small = (vals.cumsum(0) / vals.sum()) < energy
    U = vecs[:, small]
    return U @ U.T
