"""Plots of an analysis (matplotlib, Agg backend; ``pip install 'llr_kernels[analysis]'``):

* ``alpha_heatmap``: alpha per transformer block (columns) and layer kind (rows), layers outside the blocks in a
  last column; a kind with several matrices per block (e.g. two "linear") gets one row per name suffix.
* ``esd_plot``: one layer's ESD on log-log axes (a density histogram over log-spaced bins) with the fitted
  power-law tail, p(l) = (m / n) (alpha - 1) / xmin (l / xmin)^-alpha for l >= xmin (the "ks"/"fix_finger" fit, or
  Eq. 2's threshold and alpha when no fit was measured).
* ``change_plot``: two checkpoints: alpha before vs after per layer, and the change per block and kind.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..layers import MATRIX_KINDS
from .report import Analysis, Comparison, block_of

_OUTSIDE = "other"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'llr_kernels[analysis]' (or pip install matplotlib)") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _suffix(name: str) -> str:
    b = block_of(name)
    return name.split(f".{b}.", 1)[1] if b is not None else name


def block_grid(rows: Sequence[dict], value: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(values (kinds x columns, NaN where none), row labels, column labels) of ``value`` per block and kind."""
    keys: dict[tuple[str, str], None] = {}
    for r in rows:
        keys[(r["kind"], _suffix(r["name"]) if block_of(r["name"]) is not None else "")] = None
    by_kind: dict[str, list[str]] = {}
    for kind, suf in keys:
        by_kind.setdefault(kind, []).append(suf)
    order = ("embedding",) + MATRIX_KINDS + ("lm_head",)  # the model's reading order, top to bottom
    labels, index = [], {}
    for kind, sufs in sorted(by_kind.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        blocks_sufs = [s for s in sufs if s]
        for s in sufs:
            if s == "" and blocks_sufs:
                index[(kind, s)] = len(labels)
                labels.append(f"{kind} (outside)")
                continue
            index[(kind, s)] = len(labels)
            labels.append(kind if len(blocks_sufs) <= 1 else f"{kind}: {s}")
    blocks = sorted({b for r in rows if (b := block_of(r["name"])) is not None})
    cols = [str(b) for b in blocks] + ([_OUTSIDE] if any(block_of(r["name"]) is None for r in rows) else [])
    grid = np.full((len(labels), len(cols)), np.nan)
    for r in rows:
        b = block_of(r["name"])
        key = (r["kind"], _suffix(r["name"]) if b is not None else "")
        c = cols.index(str(b) if b is not None else _OUTSIDE)
        v = r.get(value)
        grid[index[key], c] = v if isinstance(v, (int, float)) else np.nan
    return grid, labels, cols


def alpha_heatmap(res: Analysis, path: str | Path, value: str | None = None) -> Path:
    """Heatmap of ``value`` (default alpha, else alpha_fit) per block and kind, written to ``path``."""
    plt = _pyplot()
    value = value or ("alpha" if any("alpha" in r for r in res.rows) else "alpha_fit")
    grid, labels, cols = block_grid(res.rows, value)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(cols) + 3), max(3.0, 0.4 * len(labels) + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("block")
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label=f"{value} (lower: heavier tail)")
    ax.set_title(f"{value} per block and kind: {Path(res.source).name}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def tail_fit(row: dict) -> tuple[float, float, int] | None:
    """(alpha, xmin, tail size) to draw: the measured fit, or Eq. 2's (threshold l_{n-k}, k = n // 2)."""
    if math.isfinite(row.get("alpha_fit", float("nan"))):
        return row["alpha_fit"], row["xmin"], int(row["num_tail"])
    e = row.get("eigenvalues")
    if e is not None and math.isfinite(row.get("alpha", float("nan"))):
        n = len(e)
        k = n // 2
        return row["alpha"], float(e[n - k - 1]), k
    return None


def tail_density(x: np.ndarray, alpha: float, xmin: float, m: int, n: int) -> np.ndarray:
    """The fitted power law as a density of the whole ESD: (m / n) (alpha - 1) / xmin (x / xmin)^-alpha for
    x >= xmin (its mass is the tail's share m / n), 0 below."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= xmin, (m / n) * (alpha - 1) / xmin * (x / xmin) ** (-alpha), 0.0)


def esd_plot(row: dict, path: str | Path, bins: int = 80) -> Path:
    """One layer's ESD (needs its "eigenvalues": ``analyze(keep_spectra=...)``) with its fitted tail."""
    if row.get("eigenvalues") is None:
        raise ValueError(f"layer {row['name']!r} has no eigenvalues: analyse with keep_spectra=[{row['name']!r}] "
                         "(--esd NAME on the command line)")
    plt = _pyplot()
    e = np.asarray(row["eigenvalues"], dtype=np.float64)
    n = len(e)
    pos = e[e > e[-1] * 1e-12]
    edges = np.logspace(np.log10(pos[0]), np.log10(pos[-1]), bins + 1)
    hist, _ = np.histogram(pos, bins=edges)
    dens = hist / (n * np.diff(edges))
    fig, ax = plt.subplots(figsize=(6, 4))
    mid = np.sqrt(edges[1:] * edges[:-1])
    ax.loglog(mid[hist > 0], dens[hist > 0], "o", ms=3, label="ESD (density)")
    fit = tail_fit(row)
    if fit is not None:
        a, xmin, m = fit
        x = np.logspace(np.log10(xmin), np.log10(pos[-1]), 50)
        ax.loglog(x, tail_density(x, a, xmin, m, n), "-", lw=2, label=f"power law, alpha {a:.3f}")
        ax.axvline(xmin, ls="--", lw=1, color="gray", label=f"xmin {xmin:.3g} ({m} eigenvalues)")
    ax.set_xlabel("eigenvalue of W^T W")
    ax.set_ylabel("density")
    eq2 = row.get("alpha", float("nan"))
    extra = f", Eq. 2 alpha {eq2:.3f}" if math.isfinite(eq2) else ""
    ax.set_title(f"{row['name']} ({row.get('kind', '')}, {'x'.join(map(str, row.get('shape', ())))}{extra})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def change_plot(cmp: Comparison, path: str | Path, metric: str = "alpha") -> Path:
    """alpha before vs after per layer (coloured by kind), and the change per block and kind."""
    plt = _pyplot()
    rows = [r for r in cmp.rows if f"d_{metric}" in r]
    if not rows:
        raise ValueError(f"the comparison holds no {metric!r}: measure it in both checkpoints")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = sorted({r["kind"] for r in rows})
    cmap = plt.get_cmap("tab10")
    for i, k in enumerate(kinds):
        pts = [(r[f"before_{metric}"], r[f"after_{metric}"]) for r in rows if r["kind"] == k]
        ax.scatter(*zip(*pts), s=14, color=cmap(i % 10), label=k)
    vals = [v for r in rows for v in (r[f"before_{metric}"], r[f"after_{metric}"]) if math.isfinite(v)]
    if vals:
        lo, hi = min(vals), max(vals)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"{metric} before")
    ax.set_ylabel(f"{metric} after")
    ax.legend(fontsize=7)
    grid, labels, cols = block_grid([{**r, "value": r[f"d_{metric}"]} for r in rows], "value")
    lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    im = ax2.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim)
    ax2.set_xticks(range(len(cols)), cols, fontsize=8)
    ax2.set_yticks(range(len(labels)), labels, fontsize=8)
    ax2.set_xlabel("block")
    fig.colorbar(im, ax=ax2, label=f"change in {metric} (after - before)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def default_esd_layers(res: Analysis) -> list[str]:
    """The layers with the smallest and the largest alpha (those with eigenvalues kept)."""
    have = [r for r in res.rows if r.get("eigenvalues") is not None]
    key = "alpha" if any(math.isfinite(r.get("alpha", float("nan"))) for r in have) else "alpha_fit"
    ok = [r for r in have if math.isfinite(r.get(key, float("nan")))]
    if not ok:
        return [r["name"] for r in have[:1]]
    ok.sort(key=lambda r: r[key])
    return list(dict.fromkeys([ok[0]["name"], ok[-1]["name"]]))


def write_all(res: Analysis, folder: str | Path, esd: Sequence[str] | None = None,
              comparison: Comparison | None = None) -> list[Path]:
    """The heatmap, the ESDs of ``esd`` (default ``default_esd_layers``) and the change plot, as PNGs."""
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [alpha_heatmap(res, out_dir / "alpha_heatmap.png")]
    for name in esd or default_esd_layers(res):
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        written.append(esd_plot(res.row(name), out_dir / f"esd_{safe}.png"))
    if comparison is not None:
        written.append(change_plot(comparison, out_dir / "alpha_change.png"))
    return written
