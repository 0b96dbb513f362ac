"""What the passes of one ``hill_alpha_fast`` call share: its inputs and options, the per-matrix results they fill
in, and the helpers every pass uses (op dispatch, chunking under the memory budget, true-fp32 matmuls)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..ops import dispatch
from ..ops.gram.naive import cuda_tf32
from .cost import default_budget
from .rules import STATUS_TOO_FEW


@dataclass
class Call:
    """One call: the matrices (2-D views), the estimator and budget options, and the results per matrix."""

    mats: list[torch.Tensor]
    variant: str
    min_eigs: int
    rank_deficient: str
    alpha_max: float | None
    backend: str = "auto"
    dtype: torch.dtype | None = None  # compute dtype asked for (None: each path's default)
    memory_budget: int | None = None  # bytes of extra memory per chunk (None: ``default_budget``)
    probes: int = 32
    steps: int = 128
    groups: int = 8
    seed: int = 0
    tf32: bool | None = None
    alpha: torch.Tensor = field(init=False)  # float64, NaN until a pass settles the matrix
    stderr: torch.Tensor = field(init=False)  # jackknife standard error (SLQ), 0 for exact
    status: list[str] = field(init=False)
    chosen: list[str] = field(init=False)  # "exact" / "lanczos" per matrix ("" when too small to measure)
    exps: list[int] = field(init=False)  # prescale exponents of the SLQ matrices
    ranks: dict[int, int] = field(default_factory=dict)  # SLQ's numerical rank of rank-deficient matrices
    stats: dict = field(default_factory=lambda: {"peak": 0, "chunks": 0, "rerun": [], "tier2": []})
    probe_generator: torch.Generator | None = None  # host generator of every SLQ probe of this call

    def __post_init__(self) -> None:
        n = len(self.mats)
        self.alpha = torch.full((n,), float("nan"), dtype=torch.float64)
        self.stderr = torch.zeros(n, dtype=torch.float64)
        self.status = [STATUS_TOO_FEW] * n
        self.chosen = [""] * n
        self.exps = [0] * n

    def budget(self, device: torch.device) -> int:
        return self.memory_budget if self.memory_budget is not None else default_budget(device)

    def generator(self) -> torch.Generator:
        """The probes' generator, on the host: the same probes on every device for a seed."""
        if self.probe_generator is None:
            self.probe_generator = torch.Generator(device="cpu").manual_seed(self.seed)
        return self.probe_generator


def op(name: str, backend: str, device: torch.device):
    """Dispatch ``name``; an explicit backend that this op does not implement (e.g. no Triton Lanczos)
    falls back to "auto" for that op only, so backend="triton" means "Triton wherever it exists"."""
    if backend != "auto" and not dispatch.has_impl(name, backend):
        backend = "auto"
    return dispatch.get_op(name, backend, device)


def chunked(idx: list[int], per: int, budget: int, stats: dict) -> Iterator[list[int]]:
    """``idx`` in chunks of at most budget // per matrices (at least one), counted into ``stats``."""
    size = max(1, budget // per)
    for c0 in range(0, len(idx), size):
        chunk = idx[c0 : c0 + size]
        stats["chunks"] += 1
        stats["peak"] = max(stats["peak"], per * len(chunk))
        yield chunk


def no_tf32():
    """True fp32 CUDA matmuls for the block (Gram matvecs of heavy-tailed spectra need them)."""
    return cuda_tf32(False)
