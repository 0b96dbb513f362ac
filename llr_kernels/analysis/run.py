"""``analyze``: open a checkpoint, measure its matrices shard after shard in chunks under a memory budget (with a
progress bar), and return an ``Analysis``."""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from ..layers import is_stack
from .loading import Checkpoint, TensorRef, open_checkpoint
from .measure import ANALYSIS_METRICS, Settings, measure_matrices
from .report import Analysis

DEFAULT_BUDGET = 2 << 30  # bytes of matrices and their workspaces in memory at once


def chunk_bytes(ref: TensorRef) -> int:
    """Memory one matrix takes while measured, at worst (a float32 check failed and float64 follows): the tensor as
    read, a float64 copy, and the Gram with its float64 copy and eigensolver workspace."""
    item = torch.empty((), dtype=ref.dtype).element_size()
    return ref.numel * (item + 8) + ref.n * ref.n * 24


def plan_chunks(ck: Checkpoint, budget: int) -> list[tuple[str, list[TensorRef]]]:
    """(shard, matrices) chunks: within a shard, matrices of one shape together, each chunk under ``budget`` bytes
    (a matrix larger than the budget is a chunk of its own)."""
    out = []
    for shard, refs in ck.shards:
        by_shape: dict[tuple, list[TensorRef]] = defaultdict(list)
        for r in refs:
            by_shape[r.shape].append(r)
        for group in by_shape.values():
            cur, size = [], 0
            for r in group:
                b = chunk_bytes(r)
                if cur and size + b > budget:
                    out.append((shard, cur))
                    cur, size = [], 0
                cur.append(r)
                size += b
            if cur:
                out.append((shard, cur))
    return out


def analyze(
    source: str | Path | nn.Module | Mapping[str, torch.Tensor],
    *,
    metrics: Sequence[str] = ANALYSIS_METRICS,
    fit: str = "ks",
    layers: str | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    ww_compatible: bool = False,
    memory_budget: int = DEFAULT_BUDGET,
    keep_spectra: Sequence[str] | bool = (),
    progress: bool | None = None,
    trust_pickle: bool = False,
) -> Analysis:
    """Every weight matrix's metrics (``measure`` module docstring) of a checkpoint (``loading``) or a model.

    layers: a regular expression; only matrices whose name it matches (re.search) are measured.
    device: where Grams and eigenvalues are computed (tensors are read on the CPU and moved chunk by chunk);
        "auto": cuda when torch sees a GPU, else cpu.
    precision: "auto" (checked float32 Grams, float64 where a check fails) or "float64".
    ww_compatible: WeightWatcher 0.7.7's conventions (``Settings.ww_compatible``); overrides fit and precision.
    keep_spectra: names (or True for all) whose eigenvalues stay in their rows, for ESD plots.
    progress: a tqdm bar on stderr (matrices/s, the chunk in flight); None: only when stderr is a terminal.
    """
    settings = Settings.ww_compatible(tuple(metrics)) if ww_compatible else Settings(
        tuple(metrics), fit=fit, precision=precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch.cuda.is_available() is False: pass device='cpu'")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    ck = open_checkpoint(source, trust_pickle=trust_pickle).select(layers)
    names = [n for r in ck.refs for n in _row_names(r)]
    keep = set(names) if keep_spectra is True else set(keep_spectra or ())
    unknown = keep - set(names)
    if unknown:
        raise ValueError(f"keep_spectra names no measured matrix: {sorted(unknown)[:3]}")
    chunks = plan_chunks(ck, memory_budget)
    bar = _progress(len(ck.refs), progress)
    rows_of: dict[str, dict] = {}
    try:
        for shard, refs in chunks:
            if bar is not None:
                bar.set_postfix_str(f"{shard}: {len(refs)} x {'x'.join(map(str, refs[0].shape))}", refresh=True)
            entries = _entries(refs, dev)
            want = any(name in keep for name, _, _ in entries)
            rows = measure_matrices([m for _, _, m in entries], settings, memory_budget, keep_spectra=want)
            shapes = [(name, r, tuple(m.shape)) for name, r, m in entries]
            del entries  # the chunk's matrices are freed before the next chunk is read
            for (name, r, shape), row in zip(shapes, rows):
                if name not in keep:
                    row.pop("eigenvalues", None)
                rows_of[name] = {"name": name, "kind": r.kind, "shape": shape, **row}
            if bar is not None:
                bar.update(len(refs))
    finally:
        if bar is not None:
            bar.close()
    ordered = [rows_of[n] for n in names]
    info = {"metrics": list(settings.metrics), "fit": settings.fit, "min_tail": settings.min_tail,
            "fit_floor": settings.fit_floor, "entropy_rule": settings.entropy_rule, "precision": settings.precision,
            "ww_compatible": ww_compatible, "device": str(dev), "layers": layers}
    return Analysis(ck.source, ordered, info, ck.skipped)


def _stacked(r: TensorRef) -> bool:
    return is_stack(r.kind, tuple(r.shape))


def _row_names(r: TensorRef) -> list[str]:
    """A matrix's row name; a stack of experts (``layers.is_stack``) gets one row per expert, ``name[e]``."""
    return [f"{r.name}[{e}]" for e in range(r.shape[0])] if _stacked(r) else [r.name]


def _entries(refs: list[TensorRef], dev: torch.device) -> list[tuple[str, TensorRef, torch.Tensor]]:
    """(row name, ref, matrix) of a chunk, read onto ``dev``: a stack of experts gives a row per expert."""
    out = []
    for r in refs:
        m = _readable(r.load()).to(dev)
        out += list(zip(_row_names(r), [r] * m.shape[0], m.unbind(0))) if _stacked(r) else [(r.name, r, m)]
    return out


def _readable(t: torch.Tensor) -> torch.Tensor:
    """float8 weights as float32 (their values exactly): torch has no reductions or matmuls in float8."""
    return t.float() if t.is_floating_point() and t.element_size() == 1 else t


def _progress(total: int, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print("llr_kernels.analysis: install tqdm for a progress bar (pip install 'llr_kernels[analysis]')",
              file=sys.stderr)
        return None
    return tqdm(total=total, unit="mat", desc="analyse", file=sys.stderr, dynamic_ncols=True)
