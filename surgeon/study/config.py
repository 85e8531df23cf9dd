"""The fine-tune's configuration, declared once: its fields generate the CLI options and compare's arm keys.

Kept free of torch so that the CLI can build its options without importing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from surgeon.errors import SurgeonError
from surgeon.roles import layers


class FinetuneError(SurgeonError):
    """A fine-tune configuration that does not fit this checkpoint or task."""


def _opt(default, help: str, **cli):
    """A config field with its help text: the CLI options and compare's arm keys are generated from these."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class FinetuneConfig:
    """What to train and how. ``layers``: "0-6", "18-23", "0,3,5", "all" or a list;
    ``roles``: "attn,mlp", "mlp.down", "lm_head" (``+`` separates too)."""

    method: str = _opt("lora", "lora (peft) or full.", choices=("lora", "full"))
    layers: str | list[int] = _opt("all", "Layers to train: 0-6, 18-23, 0,3,5 or all.")
    roles: str | list[str] = _opt("attn,mlp", "Roles: attn, mlp, norm, single roles (mlp.down, norm.pre_mlp), "
                                              "lm_head, embed, final_norm.")
    rank: int = _opt(8, "LoRA rank.")
    alpha: float | None = _opt(None, "LoRA alpha (default 2 × rank).", type=float)
    steps: int = _opt(40, "Optimiser steps.")
    lr: float | None = _opt(None, "Learning rate (default 1e-3 LoRA, 1e-4 full).", type=float)
    seed: int = _opt(0, "Seed for the data order and LoRA's initialisation.")
    batch: int = _opt(8, "Examples per step.")
    max_length: int = _opt(64, "Tokens per example.")
    max_delta: float | None = _opt(None, "full only: keep each weight within ± this of its start (FT-L).",
                                   type=float)
    nproc: int = _opt(1, "Processes: above 1 the fine-tune re-runs under torchrun, the model sharded with FSDP2 "
                         "(gloo on CPU, nccl on GPUs); each takes batch / nproc examples of every step.")

    def resolved(self, num_layers: int) -> FinetuneConfig:
        """Checked, with layers and roles as lists and every default filled in."""
        if self.method not in ("lora", "full"):
            raise FinetuneError(f"method {self.method!r}: choose lora or full")
        if self.steps < 1 or self.batch < 1 or self.rank < 1:
            raise FinetuneError("steps, batch and rank must be at least 1")
        if self.lr is not None and not self.lr > 0:
            raise FinetuneError(f"lr {self.lr}: must be positive")
        if self.alpha is not None and not self.alpha > 0:
            raise FinetuneError(f"alpha {self.alpha}: must be positive "
                                "(alpha 0 trains an update that is never applied)")
        if self.nproc < 1 or self.nproc > self.batch:
            raise FinetuneError(f"nproc {self.nproc}: between 1 and batch ({self.batch}), "
                                "every process takes a share of each batch")
        if self.max_length < 2:
            raise FinetuneError(f"max_length {self.max_length}: an example needs at least 2 tokens")
        if self.max_delta is not None and (self.method != "full" or self.max_delta <= 0):
            raise FinetuneError("max_delta is a positive bound for method=full (FT-L)")
        return replace(self, layers=parse_layers(self.layers, num_layers), roles=parse_roles(self.roles),
                       alpha=self.alpha if self.alpha is not None else 2.0 * self.rank,
                       lr=self.lr if self.lr is not None else (1e-3 if self.method == "lora" else 1e-4))


def parse_layers(spec, num_layers: int) -> list[int]:
    """:func:`surgeon.roles.layers.parse_layers`, failing as a fine-tune configuration error."""
    return layers.parse_layers(spec, num_layers, error=FinetuneError)


def parse_roles(spec) -> list[str]:
    items = spec if isinstance(spec, (list, tuple)) else re.split(r"[,+\s]+", str(spec))
    out = [r.strip() for r in items if r and r.strip()]
    if not out:
        raise FinetuneError("roles: name at least one (attn, mlp, norm, a role such as mlp.down, lm_head, embed)")
    return out
