"""How one role sits in a checkpoint: :class:`RoleRef` (a role key bound to a stored tensor), its :class:`View`.

A view reads a role out of the stored tensor and writes it back: the whole tensor, a Conv1D matrix
shown in (out, in) orientation, or the rows of a fused tensor (``attn.qkv``) that belong to one part.
Nothing here imports torch: views index whatever tensor they are given.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """How a role's tensor sits inside the stored tensor.

    ``transposed``: stored as (in, out) (Conv1D) — shown as (out, in).
    ``rows``: for a part of a fused tensor, the rows (after orientation) that
    belong to it — a ``range`` when contiguous, a tuple of row indices when
    interleaved (GPT-NeoX heads); ``None`` for the whole tensor.
    """

    transposed: bool = False
    rows: range | tuple[int, ...] | None = None

    def _index(self):
        return slice(self.rows.start, self.rows.stop) if isinstance(self.rows, range) else list(self.rows)

    def read(self, stored):
        t = stored.T if (self.transposed and stored.dim() == 2) else stored
        return t if self.rows is None else t[self._index()]

    def write(self, stored, value):
        """The stored tensor with this view replaced by ``value`` (stored orientation)."""
        flip = self.transposed and value.dim() == 2
        if self.rows is None:
            return value.T.contiguous() if flip else value
        whole = (stored.T if flip else stored).clone()
        whole[self._index()] = value
        return whole.T.contiguous() if flip else whole

    def shape(self, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
        s = tuple(reversed(stored_shape)) if (self.transposed and len(stored_shape) == 2) else tuple(stored_shape)
        return s if self.rows is None else (len(self.rows),) + s[1:]


@dataclass(frozen=True)
class RoleRef:
    """One addressable thing: a role key bound to a stored tensor (or a view of it)."""

    key: str  # e.g. "layers.3.mlp.down.bias"
    role: str  # e.g. "mlp.down"
    param: str  # "weight", "bias", ...
    tensor: str  # on-disk tensor name
    layer: int | None = None
    expert: int | None = None
    view: View = View()
    fused_in: str | None = None  # for a part: the fused role it lives in (e.g. "attn.qkv")
    tied: bool = False  # lm_head resolved to the embedding it shares


def role_key(role: str, param: str, layer: int | None = None, expert: int | None = None) -> str:
    """``layers.{L}.{role}`` (``layers.{L}.experts.{E}.{role}`` for an expert), with ``.{param}`` unless a weight."""
    if layer is None:
        key = role
    else:
        key = f"layers.{layer}.{role}" if expert is None else f"layers.{layer}.experts.{expert}.{role}"
    return key if param == "weight" else f"{key}.{param}"
