"""What locate found: both maps, each method's layer range, the suggestion; as text, JSON and an image."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.roles.layers import count_tags
from surgeon.study.locate import plot
from surgeon.study.locate.probes import SITES

SHADES = " .:-=+*#%@"  # the text heatmap's cells: tenths of the largest gradient cell


@dataclass
class LocateResult:
    """Scores and the suggestion; ``grad``: layers × ``roles``, ``patch``: layers × ``SITES``."""

    task: str
    model: str
    num_layers: int
    roles: list[str] = field(default_factory=list)
    grad: list[list[float]] | None = None
    grad_top: dict[str, float] = field(default_factory=dict)
    grad_total: float | None = None
    patch: list[list[float]] | None = None
    patch_mode: str | None = None  # the corruption: noise or contrast
    patch_position: str | None = None  # where activations were restored: subject (its last token) or last
    patch_positions: list[dict] = field(default_factory=list)  # per prompt traced: the token patched
    patch_probes: int = 0
    patch_clean_p: float | None = None  # mean P(traced token) in the clean runs (target; original for noise)
    patch_corrupt_p: float | None = None
    patch_restored_p: float | None = None  # ... with the last layer's residual restored at the patched position
    profile: list[float] = field(default_factory=list)
    suggested: tuple[int, int] | None = None
    suggested_by: dict[str, str] = field(default_factory=dict)  # each method's own range
    mass: float = 0.5
    seconds: float = 0.0
    layer_kinds: list[str] = field(default_factory=list)  # per layer what sets it apart (full / sliding ...), or []

    @property
    def suggested_layers(self) -> str | None:
        return None if self.suggested is None else f"{self.suggested[0]}-{self.suggested[1]}"

    @property
    def position_label(self) -> str:
        return {"subject": "the subject's last token", "last": "the last token"}.get(self.patch_position or "", "?")

    def to_dict(self) -> dict:
        return {
            "task": self.task, "model": self.model, "num_layers": self.num_layers,
            "suggested_layers": self.suggested_layers, "suggested_by": self.suggested_by, "mass": self.mass,
            "profile": self.profile,
            "grad": None if self.grad is None else {
                "layers": self.suggested_by.get("grad"),
                "roles": self.roles, "matrix": self.grad, "top": self.grad_top, "total": self.grad_total,
                "layer_share": layer_share(self.grad, self.grad_total)},
            "patch": None if self.patch is None else {
                "layers": self.suggested_by.get("patch"),
                "sites": list(SITES), "matrix": self.patch, "mode": self.patch_mode, "probes": self.patch_probes,
                "position": self.patch_position, "positions": self.patch_positions,
                "clean_p": self.patch_clean_p, "corrupt_p": self.patch_corrupt_p,
                "restored_last_residual_p": self.patch_restored_p},
            "seconds": self.seconds, "layer_kinds": self.layer_kinds,
        }

    def save_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def save_png(self, path) -> Path:
        """Heatmaps (layers on the vertical axis) with the suggested range marked."""
        return plot.save_png(self, path)

    # ------------------------------------------------------------------ text

    def text(self) -> str:
        """The heatmap(s) as text: one row per layer, shaded cells, a legend, each method's range and the
        suggestion."""
        lines = [f"locate {self.task} on {self.model} ({self.num_layers} layers)", self._header()]
        lines += [self._row(L) for L in range(self.num_layers)]
        lines += self._legend()
        if self.grad_top:
            tot = self.grad_total or 1.0
            lines.append("outside the layers: "
                         + ", ".join(f"{k} {100 * v / tot:.1f}%" for k, v in self.grad_top.items()))
        if self.patch:
            lines.append(f"patching: {self.patch_probes} run(s), restored at {self.position_label}:")
            lines += [_where(w) for w in self.patch_positions]
            lines.append(f"patching: P(traced token) clean {self.patch_clean_p:.4f}, corrupted "
                         f"{self.patch_corrupt_p:.4f}, last-layer residual restored {self.patch_restored_p:.4f}")
        lines += self._ranges()
        return "\n".join(lines)

    def _patch_title(self) -> str:
        return f"patching ({self.patch_mode}, at {self.position_label}): "

    def _header(self) -> str:
        head = "layer "
        if self.grad:
            head += "gradient |grad⊙W| by role: " + " ".join(_short(r) for r in self.roles) + "  layer%  "
        if self.patch:
            head += self._patch_title() + "  ".join(f"{s:>8}" for s in SITES)
        return head

    def _row(self, L: int) -> str:
        mark = "▶" if self.suggested and self.suggested[0] <= L <= self.suggested[1] else " "
        row = f"{mark}{L:>4} "
        if self.grad:
            gmax = max((v for r in self.grad for v in r), default=0.0)
            share = layer_share(self.grad, self.grad_total)
            cells = "".join(f"{SHADES[min(9, int(9.999 * v / gmax)) if gmax else 0]:>{len(_short(r)) + 1}}"
                            for v, r in zip(self.grad[L], self.roles))
            row += " " * len("gradient |grad⊙W| by role:") + cells + f"  {100 * share[L]:5.1f}%  "
        if self.patch:
            row += " " * len(self._patch_title()) + "  ".join(f"{v:8.3f}" for v in self.patch[L])
        return row + (f"  {self.layer_kinds[L]}" if L < len(self.layer_kinds) and self.layer_kinds[L] else "")

    def _legend(self) -> list[str]:
        out = []
        if self.grad:
            gmax = max((v for r in self.grad for v in r), default=0.0)
            steps = "  ".join(f"'{c}' {10 * i}-{10 * i + 10}%" for i, c in enumerate(SHADES))
            out.append(f"legend: gradient cells = |grad⊙W| of the tensor as a share of the largest cell "
                       f"({gmax:.3g}): {steps}; layer% = the layer's share of the whole model's |grad⊙W|")
        if self.patch:
            out.append("legend: patching = share of the clean-vs-corrupted difference restored by one activation "
                       "(0 none, 1 all; residual = the stream after the layer, attn/mlp = the block's output)")
        if self.suggested:
            out.append("legend: ▶ = suggested layers")
        if any(self.layer_kinds):
            out.append("legend: the word after a row is the layer's kind (attention / MLP) where layers differ")
        return out

    def span(self, layers: str | None) -> str:
        """``11-17 (full ×2, sliding ×5)``: a range with the layer kinds it covers, where layers differ."""
        if not layers or not any(self.layer_kinds):
            return layers or ""
        a, b = (int(x) for x in layers.split("-"))
        return f"{layers} ({count_tags(self.layer_kinds, range(a, b + 1))})"

    def _ranges(self) -> list[str]:
        names = {"grad": "gradient attribution", "patch": f"activation patching ({self.patch_mode}, "
                                                          f"at {self.position_label})"}
        out = [f"layers by {names[k]}: {self.span(v)}" for k, v in self.suggested_by.items()]
        if _disjoint(self.suggested_by.get("grad"), self.suggested_by.get("patch")):
            out.append("note: the two ranges do not overlap; the suggestion averages the profiles. Attribution "
                       "measures sensitivity, patching where the information flows: read both.")
        by = "; ".join(f"{k}: {v}" for k, v in self.suggested_by.items())
        both = ", both averaged" if len(self.suggested_by) > 1 else ""
        out.append(f"suggested layers: {self.span(self.suggested_layers)} (smallest range holding "
                   f"{self.mass:.0%} of the per-layer profile{both}; {by})")
        return out


def _where(w: dict) -> str:
    what = {"subject": f"the last token of the subject {w['subject']!r} in", "last": "the last token of",
            "last corrupted": "the last noised token (the probe names no subject) of"}[w["kind"]]
    return f"  {w['token']!r} (token {w['index']} of {w['tokens']}): {what} {w['prompt']!r}"


def _disjoint(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    (a0, a1), (b0, b1) = ([int(x) for x in r.split("-")] for r in (a, b))
    return a1 < b0 or b1 < a0


def _short(role: str) -> str:
    return role.replace("norm.", "n.").replace("attn.", "a.").replace("mlp.", "m.")


def layer_share(g, total) -> list[float]:
    """Each layer's share of ``total`` (default: the grid's sum)."""
    if not g:
        return []
    tot = total or sum(sum(r) for r in g) or 1.0
    return [sum(r) / tot for r in g]
