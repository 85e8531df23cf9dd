"""How a diff reads: a text table and a layers × roles heatmap of :func:`surgeon.io.diff.diff`'s records."""

from __future__ import annotations

import math
from pathlib import Path

from surgeon.io.diff import TensorDiff, split_param
from surgeon.roles import LAYER_ROLES


def format_table(records: list[TensorDiff], *, all_tensors: bool = False) -> str:
    """A text table of the records (changed ones only unless ``all_tensors``)."""
    rows = [r for r in records if r.changed or all_tensors]
    n_changed = sum(r.changed for r in records)
    lines = [f"{n_changed} of {len(records)} tensors differ"]
    if not rows:
        return lines[0]
    lines.append(f"{'tensor':<32} {'shape':>12} {'‖ΔW‖':>10} {'relative':>10} {'rank':>5}  note")
    for r in rows:
        shape = "×".join(map(str, r.shape_b or r.shape_a or []))
        dn = f"{r.delta_norm:.4g}" if r.delta_norm is not None else "-"
        rel = f"{r.relative:.3e}" if r.relative is not None else "-"
        rank = str(r.rank) if r.rank is not None else "-"
        notes = []
        if r.only_in:
            notes.append(f"only in {r.only_in.upper()}"
                         + (f", ‖{r.only_in.upper()}‖ {r.norm:.4g}" if r.norm is not None else ""))
        if r.rows_added:
            notes.append(f"+{r.rows_added} rows" + (f" of norm {r.added_norm:.4g}" if r.added_norm is not None else ""))
        if r.dtype_a and r.dtype_b and r.dtype_a != r.dtype_b:
            notes.append(f"dtype {r.dtype_a} -> {r.dtype_b}")
        if r.shape_a and r.shape_b and r.shape_a != r.shape_b and not r.rows_added:
            notes.append(f"shape {'×'.join(map(str, r.shape_a))} -> {shape}")
        if not r.changed:
            notes.append("same")
        lines.append(f"{r.key or r.name:<32} {shape:>12} {dn:>10} {rel:>10} {rank:>5}  {', '.join(notes)}")
    return "\n".join(lines)


def plot(records: list[TensorDiff], path, *, title: str | None = None) -> Path:
    """Heatmap of log10 relative change: layers × roles, top-level roles in their own row.

    Grey: unchanged; white: absent; numbers: effective rank of a matrix change
    where it is ≤ 16 (low-rank edits stand out); "+N": rows added; "new"/"gone": tensor on one side only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    layered = [r for r in records if r.layer is not None]
    top = [r for r in records if r.layer is None and r.role is not None]
    roles = sorted({r.role for r in layered}, key=lambda x: (LAYER_ROLES.index(split_param(x)[0])
                                                            if split_param(x)[0] in LAYER_ROLES else 99, x))
    n_layers = max((r.layer for r in layered), default=-1) + 1
    grid = [[None] * n_layers for _ in roles]
    for r in layered:  # experts: the largest change among them
        i, j = roles.index(r.role), r.layer
        if grid[i][j] is None or _rel(r) > _rel(grid[i][j]):
            grid[i][j] = r
    top_roles = [r.role for r in top]
    vals = [_rel(r) for r in records if _rel(r) > 0]
    lo, hi = (min(vals), max(vals)) if vals else (1e-6, 1.0)
    if hi / lo < 100:  # at least two decades, so near-equal changes get near-equal colours
        mid = math.sqrt(lo * hi)
        lo, hi = min(lo, mid / 10), max(hi, mid * 10)
    norm = LogNorm(vmin=lo, vmax=hi)
    cmap = plt.get_cmap("viridis").copy()

    width = max(6.0, 1.6 + 0.32 * max(n_layers, len(top_roles) * 2))
    height = 1.6 + 0.34 * (len(roles) + 1)
    fig, (ax_top, ax) = plt.subplots(2, 1, figsize=(width, height), height_ratios=[1, max(1, len(roles))],
                                     gridspec_kw={"hspace": 0.12})
    _top_cells(ax_top, top, norm, cmap, span=max(n_layers, 4 * len(top_roles)))
    image = _cells(ax, grid, norm, cmap)
    ax.set_yticks(range(len(roles)), roles)
    ax.set_xticks(range(n_layers), [str(i) for i in range(n_layers)], fontsize=7)
    ax.set_xlabel("layer")
    cb = fig.colorbar(image, ax=[ax_top, ax], fraction=0.025, pad=0.01)
    cb.set_label("‖ΔW‖ / ‖W‖ (log)")
    changed = sum(r.changed for r in records)
    fig.suptitle(title or f"relative change per tensor ({changed} of {len(records)} differ; "
                          "grey = same, numbers = rank ≤ 16)",
                 fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _rel(r: TensorDiff | None) -> float:
    if r is None or not r.changed:
        return 0.0
    if r.relative is None or not math.isfinite(r.relative):
        return 0.0
    return r.relative


def _low_rank(r: TensorDiff) -> bool:
    """A matrix change of rank ≤ 16 (vectors are always rank 1: not worth a label)."""
    shape = r.shape_b or r.shape_a or []
    return r.changed and r.rank is not None and 0 < r.rank <= 16 and len(shape) >= 2


def _cells(ax, grid, norm, cmap):
    """Draw one row per grid row; returns the mappable for the colour bar."""
    import numpy as np

    n_rows, n_cols = len(grid), max((len(g) for g in grid), default=0)
    data = np.full((n_rows, max(n_cols, 1)), np.nan)
    ax.set_facecolor("white")
    for i, row in enumerate(grid):
        for j, r in enumerate(row):
            if r is None:
                continue
            v = _rel(r)
            if v > 0:
                data[i, j] = v
            else:
                ax.add_patch(_rect(j, i, "#dddddd"))
            label = None
            if r.only_in:
                label = "new" if r.only_in == "b" else "gone"
            elif r.rows_added:
                label = f"+{r.rows_added}"
            elif _low_rank(r):
                label = str(r.rank)
            if label:
                ax.text(j, i, label, ha="center", va="center", fontsize=6,
                        color="white" if v > 0 and norm(v) < 0.6 else "black")
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", norm=norm, cmap=cmap, interpolation="nearest")
    ax.set_ylim(n_rows - 0.5, -0.5)
    for s in ax.spines.values():
        s.set_visible(False)
    return image


def _top_cells(ax, records, norm, cmap, span):
    """Top-level roles as labelled boxes, each about three layers wide, on the layer grid's scale."""
    for i, r in enumerate(records):
        v = _rel(r)
        ax.add_patch(_rect(3.5 * i + 1, 0, cmap(norm(v)) if v > 0 else "#dddddd", width=3))
        label = r.role + (f"\n+{r.rows_added} rows" if r.rows_added else "")
        if r.only_in:
            label += "\nnew" if r.only_in == "b" else "\ngone"
        elif _low_rank(r):
            label += f"\nrank {r.rank}"
        ax.text(3.5 * i + 1, 0, label, ha="center", va="center", fontsize=6,
                color="white" if v > 0 and norm(v) < 0.6 else "black")
    ax.set_xlim(-0.5, span - 0.5)
    ax.set_ylim(0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([0], ["top level"])
    for s in ax.spines.values():
        s.set_visible(False)


def _rect(x, y, color, width=1.0):
    from matplotlib.patches import Rectangle

    return Rectangle((x - width / 2, y - 0.5), width, 1, facecolor=color, edgecolor="none", zorder=0)
