"""The memory budget of an LLR update: how many bytes measuring one matrix adds on its rank, and the chunks of
matrices (gathered, measured, freed together) that keep a rank under ``spectral_memory_budget``.

What one m x n matrix (n the short side, e bytes an element) can add while it is measured, counted high:
- the whole matrix, when it was gathered from shards (``placements.gather_whole``) or copied whole: m n e;
- its scaled copy in the compute dtype, at worst float64 (the reference tier): 8 m n;
- the float32 Gram kept for the float64-eigenvalue tier: 4 n^2;
- the float64 Gram, eigensolver input copy and workspace (``spectral.cost.bytes_per_matrix`` at 8 bytes): 24 n^2.
A chunk also holds at most ``syev_max_batch(n)`` matrices of one n: cuSOLVER's batched eigensolver
(``cusolverDnXsyevBatched``) requires n * lda * batch <= 2^31 - 1.
"""
from __future__ import annotations

from ..spectral.cost import bytes_per_matrix

INT32_MAX = 2**31 - 1


def short_long(shape: tuple[int, ...]) -> tuple[int, int]:
    """(n, m): the short and long side of a matrix of ``shape`` (>2-D viewed as (shape[0], rest))."""
    rows, cols = int(shape[0]), 1
    for d in shape[1:]:
        cols *= int(d)
    return min(rows, cols), max(rows, cols)


def update_bytes(shape: tuple[int, ...], elem: int, whole_copy: bool, stacked: bool = False) -> int:
    """Bytes measuring one matrix of ``shape`` adds at most (see the module docstring); ``whole_copy``: the
    matrix itself is a gathered copy, not a tensor the rank holds anyway; ``stacked``: shape[0] matrices of
    shape[1:], measured together."""
    if stacked:
        return int(shape[0]) * update_bytes(tuple(shape[1:]), elem, whole_copy)
    n, m = short_long(shape)
    return (m * n * elem if whole_copy else 0) + 8 * m * n + 4 * n * n + bytes_per_matrix(n, "exact", 0, 0, 0, 8)


def syev_max_batch(n: int) -> int:
    """The most n x n matrices one batched cuSOLVER eigensolver call takes (n * n * batch <= 2^31 - 1)."""
    return max(1, INT32_MAX // max(1, n * n))


class Chunker:
    """Decides when the matrices held for measuring must be measured and freed before another is added."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.held = 0  # estimated bytes of the chunk now held
        self.peak = 0  # the largest chunk's estimate
        self.per_n: dict[int, int] = {}  # matrices of each short side in the chunk

    def must_flush(self, shape: tuple[int, ...], need: int) -> bool:
        """True when adding a matrix of ``shape`` needing ``need`` bytes would break the budget or cuSOLVER's
        batch limit (never for an empty chunk)."""
        if not self.held:
            return False
        n, _ = short_long(shape)
        over = self.budget is not None and self.held + need > self.budget
        return over or self.per_n.get(n, 0) + 1 > syev_max_batch(n)

    def add(self, shape: tuple[int, ...], need: int) -> None:
        n, _ = short_long(shape)
        self.per_n[n] = self.per_n.get(n, 0) + 1
        self.held += need
        self.peak = max(self.peak, self.held)

    def reset(self) -> None:
        self.held, self.per_n = 0, {}


def check_budget_arg(budget: object, layers: list) -> None:
    """``spectral_memory_budget``: None or a positive int of bytes, at least what the largest matrix alone needs
    (else a ValueError naming that matrix, its shape and its layout: a too-small budget fails at construction)."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise TypeError(f"spectral_memory_budget must be None or a positive int (bytes), got {budget!r}")
    from ._dtensor import describe

    for layer in layers:
        if not layer.is_matrix:
            continue
        p = layer.param
        need = update_bytes(tuple(p.shape), p.element_size(), True, layer.stacked)
        if need > budget:
            raise ValueError(
                f"spectral_memory_budget={budget} bytes is smaller than what measuring one matrix needs: "
                f"{layer.name!r} (shape {tuple(p.shape)}, {describe(p)}) needs about {need} bytes (its gathered copy, "
                "a float64 cast, Grams and eigensolver workspace); give at least that, or None "
                "(spectral.cost.default_budget)"
            )
