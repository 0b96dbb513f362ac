"""SLQ alphas: stochastic Lanczos quadrature of many Grams at once, then Eq. 2 read off the pooled Gauss nodes.

Per chunk of same-n Grams: one grouped Gram, ``steps`` batched Lanczos steps for every matrix and probe (probes
drawn on the host from ``seed``), every tridiagonal's Gauss nodes and weights; after the last chunk, one Hill
reduction (``hill_nodes``) for all matrices: the threshold quantile and the top log-sum of the smoothed
quadrature, with jackknife replicates over probe groups for the standard error. Rank-deficient matrices get
their numerical rank from the quadrature mass at the zero floor and a second reduction on the nonzero part.
Launches depend on the number of chunks and ``steps``, never on the number of matrices. Error model and its
measurements: ``cost`` and docs/spectral.md.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..ops.lanczos.naive import rademacher_probes
from .context import Call, chunked, no_tf32, op
from .cost import bytes_per_matrix
from .rules import (
    OK_STATUSES,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_OK_RANK_DEFICIENT,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    compute_dtype,
    decide,
    hill_params,
    noise_level,
    scaled,
    zero_floor,
)


class NodeRow(NamedTuple):
    """One matrix's SLQ quadrature, pooled over probes: Ritz nodes and weights (P, s), and with ``half`` those of
    the leading s/2 x s/2 tridiagonals (the steps term of the target mode)."""

    index: int
    n: int
    nodes: torch.Tensor
    weights: torch.Tensor
    lmax: torch.Tensor
    mean: float
    nu: float
    half_nodes: torch.Tensor | None = None
    half_weights: torch.Tensor | None = None

    def pooled(self, more: "NodeRow") -> "NodeRow":
        """This row with ``more``'s probes added (same matrix, later draws)."""
        half = (None, None) if self.half_nodes is None else (
            torch.cat([self.half_nodes, more.half_nodes]), torch.cat([self.half_weights, more.half_weights]))
        return self._replace(nodes=torch.cat([self.nodes, more.nodes]), weights=torch.cat([self.weights, more.weights]),
                             lmax=torch.maximum(self.lmax, more.lmax), half_nodes=half[0], half_weights=half[1])


TF32_EXACT_DTYPES = (torch.bfloat16, torch.float16)  # at most 10 mantissa bits: TF32 products of them are exact


def gram_precision(tf32: bool | None, mats: list[torch.Tensor], device: torch.device) -> str:
    """The SLQ Gram's matmul precision: "tf32" on CUDA when asked (tf32=True), or by default (None) when every
    matrix is bf16/fp16 (their values are TF32 values, so the products are exact and only the float32 accumulation
    rounds); else "ieee". A TF32 Gram of float32 weights moved the alpha of a heavy-tailed 4096 x 4096 matrix from
    1.74 to 2.09 on an H200."""
    if device.type != "cuda" or tf32 is False:
        return "ieee"
    if tf32:
        return "tf32"
    return "tf32" if all(m.dtype in TF32_EXACT_DTYPES for m in mats) else "ieee"


def run_lanczos(call: Call, idx: list[int], n: int, device: torch.device, probes: int,
                node_rows: dict[torch.device, list[NodeRow]], half: bool = False) -> None:
    """SLQ Gauss nodes of one (n, device) group, collected for the one final Hill reduction; with ``half`` also
    the nodes of the first steps/2 Lanczos steps (the same run's leading tridiagonals, no extra matvec)."""
    mats, steps = call.mats, call.steps
    cdt = call.dtype or compute_dtype(device)
    gbackend, gram_fn = op("gram", call.backend, device)
    if gbackend == "triton":
        cdt = torch.float32
    per = bytes_per_matrix(n, "lanczos", probes, steps, call.groups, torch.finfo(cdt).bits // 8)
    for chunk in chunked(idx, per, call.budget(device), call.stats):
        prec = gram_precision(call.tf32, [mats[i] for i in chunk], device)
        xs = [scaled(mats[i], call.exps[i], cdt) for i in chunk]
        if gbackend == "torch":
            flat, _ = gram_fn(xs, dtype=cdt, precision=prec)
        else:
            flat, _ = gram_fn(xs, precision=prec)
        del xs
        g = flat.view(len(chunk), n, n)
        diag = g.diagonal(dim1=-2, dim2=-1)
        finite = torch.isfinite(diag).all(-1)
        mean = (diag.sum(-1) / n).to("cpu", torch.float64)
        if not bool(finite.all()):  # cannot happen after prescale; kept as a guard
            g[~finite] = torch.eye(n, dtype=g.dtype, device=device)
        for j in torch.nonzero(~finite).flatten().tolist():
            call.status[chunk[j]] = STATUS_NON_FINITE
        keep = [j for j in range(len(chunk)) if call.status[chunk[j]] != STATUS_NON_FINITE]
        s = min(steps, n)
        v0 = rademacher_probes(len(chunk), probes, n, device=device, dtype=g.dtype, generator=call.generator())
        _, lanczos_fn = op("lanczos", call.backend, device)
        _, tri_fn = op("tridiag_eig", call.backend, device)
        with no_tf32():
            a, b = lanczos_fn(g, v0, s)
        nodes, weights = tri_fn(a, b)
        hn = hw = None
        if half:
            sh = max(2, s // 2)
            hn, hw = tri_fn(a[..., :sh].contiguous(), b[..., : sh - 1].contiguous())
        lmax = nodes.amax((-1, -2)).clamp_min(0)
        for j in keep:
            i = chunk[j]
            nu = noise_level(n, mats[i].dtype, g.dtype)
            node_rows[device].append(NodeRow(i, n, nodes[j], weights[j], lmax[j], float(mean[j]), nu,
                                              None if hn is None else hn[j], None if hw is None else hw[j]))
        del g, flat


def finish_lanczos(call: Call, rows: list[NodeRow], device: torch.device, steps_err: torch.Tensor | None = None) -> None:
    """Hill reductions of the pooled Ritz nodes; a rank-deficient matrix's numerical rank goes to ``ranks``. With
    ``steps_err`` (target mode) also |alpha - alpha of the half-steps nodes| per matrix (inf where their statuses
    differ)."""
    full = hill_of_nodes(call, rows, [(r.nodes, r.weights) for r in rows], device)
    for r, row in enumerate(rows):
        i = row.index
        a, st, rank, jk = full[r]
        call.alpha[i], call.status[i], call.stderr[i] = a, st, jk
        if rank is not None:
            call.ranks[i] = rank
    if steps_err is None:
        return
    half = hill_of_nodes(call, rows, [(r.half_nodes, r.half_weights) for r in rows], device)
    for r, row in enumerate(rows):
        (a, st, _, _), (ah, sth, _, _) = full[r], half[r]
        steps_err[row.index] = abs(a - ah) if st == sth and st in OK_STATUSES else float("inf")


def hill_of_nodes(call: Call, rows: list[NodeRow], quads: list[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device) -> list[tuple[float, str, int | None, float]]:
    """(alpha, status, numerical rank of a rank-deficient matrix or None, jackknife stderr) per row, from the
    quadratures ``quads`` ((nodes, weights) (P, s) per row)."""
    ns = [r.n for r in rows]
    smax = max(q[0].shape[-1] for q in quads)

    def pad(x: torch.Tensor) -> torch.Tensor:  # different n may give different step counts: zero-weight pad
        return torch.nn.functional.pad(x, (0, smax - x.shape[-1]))

    nodes = torch.stack([pad(q[0]) for q in quads])
    weights = torch.stack([pad(q[1]) for q in quads])
    cdt = nodes.dtype
    lmax_c = torch.stack([r.lmax for r in rows]).to("cpu", torch.float64)
    floors = [
        max(zero_floor(n, float(lm), r.mean, r.nu, cdt), torch.finfo(cdt).tiny) for n, lm, r in zip(ns, lmax_c, rows)
    ]
    floor = torch.tensor(floors, dtype=cdt, device=device)
    n_t = torch.tensor(ns, dtype=cdt, device=device)
    _, fn = op("hill_nodes", call.backend, device)
    groups = call.groups

    def reduce(sel: list[int], levels: list[float]):
        q = torch.tensor(levels, dtype=cdt, device=device)
        ln_thr, logsum, at_floor = fn(nodes[sel], weights[sel], n_t[sel], q, floor[sel], groups)
        return ln_thr.to("cpu", torch.float64), logsum.to("cpu", torch.float64), at_floor.to("cpu", torch.float64)

    rows_all = list(range(len(rows)))
    out: list[list] = [[float("nan"), STATUS_TOO_FEW, None, float("nan")] for _ in rows_all]
    params = [hill_params(n, call.variant) for n in ns]
    ln_thr, logsum, at_floor = reduce(rows_all, [p[3] for p in params])
    num = [float(p[2]) for p in params]
    final_ls = logsum.clone()
    deficient: list[int] = []
    for r in rows_all:
        if not float(lmax_c[r]) > 0:
            out[r][1] = STATUS_ZERO
            continue
        thr = math.exp(float(ln_thr[r, 0]))
        if thr <= floors[r] * (1 + 1e-6) or float(at_floor[r]) >= params[r][3]:
            deficient.append(r)
            continue
        out[r][0], out[r][1] = decide(num[r], float(logsum[r, 0]), rows[r].nu, call.alpha_max)
    if deficient and call.rank_deficient == "nonzero":
        rank_of = {r: int(round(ns[r] * (1.0 - float(at_floor[r])))) for r in deficient}
        redo = [r for r in deficient if rank_of[r] >= max(2, call.min_eigs)]
        if redo:
            levels = []
            for r in redo:
                n, rank = ns[r], rank_of[r]
                t, _, k, _ = hill_params(rank, call.variant)
                num[r] = float(k)
                levels.append((n - rank + t + 0.5) / n)  # Eq. 2's threshold of the nonzero part, as a CDF level
            _, ls2, _ = reduce(redo, levels)
            for j, r in enumerate(redo):
                final_ls[r] = ls2[j]
                out[r][2] = rank_of[r]
                out[r][0], out[r][1] = decide(num[r], float(ls2[j, 0]), rows[r].nu, call.alpha_max,
                                              STATUS_OK_RANK_DEFICIENT)
        for r in deficient:
            if r not in set(redo):
                out[r][0], out[r][1] = float("nan"), STATUS_RANK_DEFICIENT
    else:
        for r in deficient:
            out[r][0], out[r][1] = float("nan"), STATUS_RANK_DEFICIENT
    num_t = torch.tensor(num, dtype=torch.float64).view(-1, 1)
    reps = 1.0 + num_t / final_ls[:, 1:]
    jk = ((groups - 1) / groups * (reps - reps.mean(1, keepdim=True)).square().sum(1)).sqrt()
    for r in rows_all:
        out[r][3] = float(jk[r]) if out[r][1] in (STATUS_OK, STATUS_OK_RANK_DEFICIENT) else float("nan")
    return [tuple(o) for o in out]
