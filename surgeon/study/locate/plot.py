"""The locate heatmaps as an image: layers on the vertical axis, the suggested range marked."""

from __future__ import annotations

from pathlib import Path

import torch

from surgeon.study.locate.probes import SITES


def _grad_panel(ax, r, t):
    share = t / (r.grad_total or t.sum().clamp(min=1e-30))
    im = ax.imshow(100 * share.numpy(), aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(r.roles)), r.roles, rotation=60, ha="right", fontsize=8)
    title = "gradient |grad ⊙ W|\n(% of total)"
    if r.suggested_by.get("grad"):
        title += f", layers {r.suggested_by['grad']}"
    ax.set_title(title, fontsize=9)
    return im


def _patch_panel(ax, r, t):
    im = ax.imshow(t.numpy(), aspect="auto", cmap="magma", origin="lower", vmin=min(0.0, float(t.min())),
                   vmax=max(1.0, float(t.max())))
    ax.set_xticks(range(len(SITES)), SITES, rotation=60, ha="right", fontsize=8)
    title = f"restored share\n(patching, {r.patch_mode}, at {r.position_label})"
    if r.suggested_by.get("patch"):
        title += f"\nlayers {r.suggested_by['patch']}"
    ax.set_title(title, fontsize=9)
    return im


def axis_labels(r) -> list[str]:
    """The layer axis' tick labels: ``5 full`` / ``6 sliding`` where layers differ in kind, else ``5``."""
    kinds = r.layer_kinds if len(r.layer_kinds) == r.num_layers else [""] * r.num_layers
    return [f"{i} {k}" if k else str(i) for i, k in enumerate(kinds)]


def save_png(r, path) -> Path:
    """Heatmaps of a :class:`LocateResult` ``r`` (layers on the vertical axis) with the suggested range marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [x for x in (("grad", r.grad), ("patch", r.patch)) if x[1] is not None]
    widths = [max(3, len(r.roles) * 0.55) if k == "grad" else 2.6 for k, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 2.5, max(4, 0.28 * r.num_layers + 1.8)),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (kind, m) in zip(axes[0], panels):
        t = torch.tensor(m, dtype=torch.float32)
        im = _grad_panel(ax, r, t) if kind == "grad" else _patch_panel(ax, r, t)
        ax.set_yticks(range(r.num_layers), axis_labels(r), fontsize=7)
        ax.set_ylabel("layer" + (" (kind where layers differ)" if any(r.layer_kinds) else ""))
        if r.suggested:
            a, b = r.suggested
            for y in (a - 0.5, b + 0.5):
                ax.axhline(y, color="red", lw=2, clip_on=False)
        fig.colorbar(im, ax=ax, fraction=0.08, pad=0.04)
    fig.suptitle(f"{r.task} on {r.model}: suggested layers {r.suggested_layers}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
