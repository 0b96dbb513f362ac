"""Per-layer statistics a person can read: ``format_layer_stats(opt)`` (a text table) and ``layer_records(opt)``
(flat dicts, one per layer, for ``pandas.DataFrame`` or a CSV/JSON logger).

Both take an LLR optimizer, anything that wraps one (``trainer.optimizer``: followed through ``.optimizer`` by
``unwrap``), or rows already taken from ``layer_stats()`` (a training log). Norms and biases (kind ``vector``) stay at multiplier
1 and are summarised in one line unless ``vectors=True``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .optim.base import LLROptimizer

COLUMNS = ("name", "kind", "shape", "alpha", "multiplier", "lr", "wd_multiplier", "weight_decay", "status")
# printed columns: (key, header, width, format); "shape" and the text columns are left-aligned
_TABLE = (("name", "layer", 0, "s"), ("kind", "kind", 11, "s"), ("shape", "shape", 11, "s"),
          ("alpha", "alpha", 7, ".3f"), ("multiplier", "mult", 6, ".3f"), ("lr", "lr", 10, ".3e"),
          ("weight_decay", "wd", 9, ".3g"), ("status", "status", 0, "s"))


def unwrap(optimizer: Any) -> LLROptimizer:
    """The LLR optimizer inside ``optimizer``, following ``.optimizer`` attributes (accelerate's
    ``AcceleratedOptimizer``, which forwards no other attribute, Hugging Face ``Trainer.optimizer``, DeepSpeed-style
    wrappers); raises TypeError when none is found."""
    seen, cur = [], optimizer
    while not isinstance(cur, LLROptimizer):
        seen.append(type(cur).__name__)
        nxt = getattr(cur, "optimizer", None)
        if nxt is None or nxt is cur or len(seen) > 16:
            raise TypeError(
                f"no LLR optimizer (LLRAdamW / LLRMuon) inside {' -> '.join(seen)}: unwrap follows .optimizer "
                "attributes; pass the optimizer that wraps an LLR optimizer"
            )
        cur = nxt
    return cur


def layer_stats(optimizer: Any) -> list[dict[str, Any]]:
    """``layer_stats()`` of the LLR optimizer inside ``optimizer`` (e.g. ``layer_stats(trainer.optimizer)``)."""
    return unwrap(optimizer).layer_stats()


def _rows_and_title(source: Any) -> tuple[list[dict[str, Any]], str | None]:
    """(rows of layer_stats(), a one-line header saying when and from what the alphas were measured)."""
    if isinstance(source, (list, tuple)):
        return list(source), None
    opt = unwrap(source)
    policy = opt.policy
    last, src = getattr(policy, "last_update", None), getattr(policy, "last_source", None)
    measured = ("alphas not measured yet" if last is None
                else f"alphas measured before step {last} from the {'gradients' if src == 'grad' else 'weights'}")
    title = f"{type(opt).__name__} at step {opt.llr_step}, policy {policy.name!r}: {measured}"
    return opt.layer_stats(), title


def _shape(value: Any) -> str:
    return "x".join(str(int(d)) for d in value) if isinstance(value, (list, tuple)) else str(value)


def _cell(value: Any, fmt: str) -> str:
    if fmt == "s":
        return str(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(float(value), fmt)


def layer_records(source: Any, *, vectors: bool = True) -> list[dict[str, Any]]:
    """One flat dict per layer: name, kind, shape ("128x344"), alpha (NaN: not measured), multiplier, lr,
    wd_multiplier, weight_decay, status, plus any extra keys the optimizer reports (LLRMuon: optimizer,
    update_lr). Every value is a str or a float: ``pandas.DataFrame(layer_records(opt))`` has plain columns."""
    rows, _ = _rows_and_title(source)
    out = []
    for row in rows:
        if not vectors and row.get("kind") == "vector":
            continue
        rec = {k: row.get(k) for k in COLUMNS}
        rec.update({k: v for k, v in row.items() if k not in rec})
        rec["shape"] = _shape(rec["shape"])
        for k, v in rec.items():
            if k not in ("name", "kind", "shape", "status", "optimizer") and v is not None:
                rec[k] = float(v)
        out.append(rec)
    return out


def format_layer_stats(source: Any, *, vectors: bool = False, title: str | None = None) -> str:
    """A text table of the layers: name, kind, shape, alpha, LR multiplier, LR and weight decay of the next
    step, and the status of the last measurement; first a line saying at which step and from what (gradients or
    weights) the alphas were measured. ``vectors=False`` folds norms and biases into one closing line."""
    rows, auto_title = _rows_and_title(source)
    table = _TABLE if not any("optimizer" in r for r in rows) else (_TABLE[:2] + (("optimizer", "step", 5, "s"),)
                                                                   + _TABLE[2:])  # LLRMuon: muon or adamw
    shown = [r for r in rows if vectors or r.get("kind") != "vector"]
    hidden = [r for r in rows if r not in shown]
    cells = [[_shape(r.get(k)) if k == "shape" else _cell(r.get(k, ""), f) for k, _, _, f in table] for r in shown]
    widths = [max([len(h), w] + [len(c[i]) for c in cells]) for i, (_, h, w, _) in enumerate(table)]
    left = {"name", "kind", "optimizer", "shape", "status"}

    def line(values: Iterable[str]) -> str:
        parts = [v.ljust(w) if k in left else v.rjust(w) for v, w, (k, _, _, _) in zip(values, widths, table)]
        return "  ".join(parts).rstrip()

    out = [t for t in (title or auto_title,) if t]
    out += [line(h for _, h, _, _ in table), line("-" * w for w in widths)]
    out += [line(c) for c in cells]
    if hidden:
        mults = sorted({round(float(r["multiplier"]), 6) for r in hidden})
        at = "multiplier " + ", ".join(f"{m:g}" for m in mults)
        out.append(f"(+ {len(hidden)} norm/bias vectors at {at}; vectors=True lists them)")
    return "\n".join(out)
