"""The result of an analysis: one row per weight matrix, as a terminal table, CSV or JSON, and the per-layer
change between two analyses."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ("name", "kind", "shape", "n", "alpha", "alpha_fit", "xmin", "ks_distance", "num_tail", "alpha_hat",
           "spectral_norm", "frobenius_norm", "stable_rank", "entropy", "status", "fit_status", "precision")
NUMERIC = ("alpha", "alpha_fit", "alpha_hat", "spectral_norm", "frobenius_norm", "stable_rank", "entropy")
_BLOCK = re.compile(r"\.(\d+)\.")


def block_of(name: str) -> int | None:
    """Transformer block index of a parameter name (the first ``.<int>.`` in it), None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


@dataclass
class Analysis:
    """Rows (dicts keyed by ``COLUMNS``; "eigenvalues" where spectra were kept), the source and its settings."""

    source: str
    rows: list[dict]
    settings: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        present = {k for r in self.rows for k in r}
        return [c for c in COLUMNS if c in present]

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no layer named {name!r}; layers: {[r['name'] for r in self.rows][:5]} ...")

    def table(self, max_name: int = 48) -> str:
        """A fixed-width table, one line per matrix."""
        cols = self.columns()
        cells = [[_fmt(r.get(c), c, max_name) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV of every column (shape as "a x b"); written to ``path`` when given, returned as text."""
        cols = self.columns()
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(cols)
        for r in self.rows:
            wr.writerow([_plain(r.get(c), c) for c in cols])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON: {"source", "settings", "layers": [row, ...]} (NaN as null); eigenvalues are left out."""
        rows = [{c: _json_value(r.get(c)) for c in self.columns()} for r in self.rows]
        text = json.dumps({"source": self.source, "settings": self.settings, "layers": rows}, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text


@dataclass
class Comparison:
    """Per-layer change from ``before`` to ``after`` (matched by name): rows with each metric's two values and
    their difference ("d_<metric>" = after - before), plus the names found in only one of them."""

    rows: list[dict]
    only_before: list[str]
    only_after: list[str]

    def table(self, metrics: tuple[str, ...] = ("alpha", "alpha_fit")) -> str:
        cols = ["name", "kind"] + [f"{p}{m}" for m in metrics for p in ("before_", "after_", "d_")]
        cols = [c for c in cols if any(c in r for r in self.rows)]
        cells = [[_fmt(r.get(c), c, 48) for c in cols] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def to_csv(self, path: str | Path | None = None) -> str:
        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(cols)
        for r in self.rows:
            wr.writerow([_plain(r.get(c), c) for c in cols])
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()


def compare(before: Analysis, after: Analysis) -> Comparison:
    """Per-layer deltas of every numeric metric both analyses hold."""
    b = {r["name"]: r for r in before.rows}
    a = {r["name"]: r for r in after.rows}
    common = [n for n in b if n in a]
    if not common:
        raise ValueError(f"the two checkpoints share no layer name ({before.source}: {list(b)[:3]}; {after.source}: "
                         f"{list(a)[:3]}): compare checkpoints of one architecture")
    rows = []
    for name in common:
        rb, ra = b[name], a[name]
        row = {"name": name, "kind": rb.get("kind"), "shape": rb.get("shape")}
        for m in NUMERIC:
            if m in rb and m in ra:
                x, y = rb[m], ra[m]
                row[f"before_{m}"], row[f"after_{m}"], row[f"d_{m}"] = x, y, y - x
        rows.append(row)
    return Comparison(rows, [n for n in b if n not in a], [n for n in a if n not in b])


def _fmt(v, col: str, max_name: int) -> str:
    if v is None:
        return ""
    if col == "name" and len(v) > max_name:
        return "..." + v[-(max_name - 3):]
    if col == "shape":
        return "x".join(str(s) for s in v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if col in ("spectral_norm", "frobenius_norm", "xmin") else f"{v:.4f}"
    return str(v)


def _plain(v, col: str):
    if col == "shape" and v is not None:
        return "x".join(str(s) for s in v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return "" if v is None else v


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, tuple):
        return list(v)
    return v
