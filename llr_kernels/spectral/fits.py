"""Power-law fits of empirical spectral densities (ESDs): the paper's median Hill estimator and the two xmin
selectors of WeightWatcher / TempBalance, vectorised over every candidate xmin and every ESD of a batch.

Input: ascending eigenvalues of W^T W, (n,) or (B, n), on any device (the fits run there, in float64). Every
method fits p(l) ~ l^-alpha for l >= xmin by maximum likelihood (Clauset, Shalizi & Newman 2009, Eq. 3.1),

    alpha = 1 + num_tail / sum_{l_j >= xmin} ln(l_j / xmin),

and reports the Kolmogorov-Smirnov distance of that fit over its tail (the m eigenvalues >= xmin, ascending
l_(0) = xmin <= ... <= l_(m-1)), with the one-sided empirical CDF that powerlaw, WeightWatcher and TempBalance use:

    D = max_{t = 0..m-1} | 1 - (l_(t) / xmin)^(1 - alpha) - t / m |.

Methods (``method=``):

* "median": paper Eq. 2, k = floor(n/2): xmin = l_{n-k} (1-based), num_tail = k (``variant="reference"``: the
  public code's index convention, as ``hill.py``). Rank-aware like ``hill.py`` rule 6 (mode "nonzero"): when the
  threshold is numerically zero, Eq. 2 runs on the r eigenvalues above ``floor``. Its D is reported for
  comparison. NaN only when fewer than 2 eigenvalues are nonzero or the top is flat; ``hill.py``'s noise-level
  and alpha_max rules are the caller's (``metrics.measure`` applies them).
* "ks": goodness of fit (CSN 2009, Sec. 3.3; powerlaw.Fit's default): every eigenvalue l_i > floor with a tail of
  m_i = n - i >= ``min_tail`` values is a candidate xmin, num_tail = m_i; the candidate with the smallest D wins
  (ties: the smallest xmin). ``min_tail`` (default 10) excludes the top few: D of a handful of points is small
  by chance, so unrestricted CSN drifts to tiny tails whose alpha has relative spread 1/sqrt(m).
  Tied eigenvalues are separate candidates (powerlaw uses unique values; identical for continuous spectra).
* "fix_finger": WeightWatcher's ``fix_fingers='xmin_peak'`` / TempBalance's 'fix-finger': the xmin candidates
  are restricted to a window around the peak of the ESD's density in log10 space, then the smallest D wins.
  Peak: a histogram of log10(l) over the nonzero eigenvalues with ``bins`` = 100 equal bins on [min, max]
  (numpy.histogram semantics, the last bin closed), as both originals do (they use histograms, not a KDE;
  a histogram is also what vectorises exactly); xmin2 = 10^(left edge of the fullest bin, first on ties).
  Window: ``window`` = (0.95, 1.5) x xmin2 (TempBalance's / current WeightWatcher's factors; older
  WeightWatcher used (0.95, 1.05)), compared in log10 space: log10 l_i in [edge + log10 0.95, edge + log10 1.5].
  BUG in the originals, not reproduced: both compute the lower bound as ``log10(0.95 * xmin2)`` and compare the
  raw eigenvalue with it (``xmin < xmin_min``), so the lower bound is a log while the upper bound
  ``1.5 * xmin2`` and the eigenvalue are raw values: the window in effect starts at the bottom of the spectrum
  whenever log10(0.95 xmin2) < l_min. If no candidate (> floor, tail >= min_tail) lies in the window, the
  candidate nearest the peak edge in log space is used (TempBalance would return alpha = 0 there).

Vectorisation: L = ln(l / l_max) (shifted for accuracy); suffix sums S_i = sum_{j>=i} L_j give every candidate's
log-sum as S_i - m_i L_i, hence every alpha in O(n). The D matrix (candidates x eigenvalues, masked to j >= i)
is formed in chunks of candidates so one float64 temporary holds at most max(``chunk_elems``, B n) elements
(default 2^22: 32 MiB; about five such temporaries are alive at once, so peak extra memory ~ 5 x 32 MiB).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

from .rules import VARIANTS, ZERO_REL, hill_params

FIT_METHODS = ("median", "ks", "fix_finger")
DEFAULT_MIN_TAIL = 10  # smallest tail a "ks" / "fix_finger" candidate may have (module docstring)
DEFAULT_BINS = 100  # log10 histogram bins of the fix-finger peak (as WeightWatcher and TempBalance)
DEFAULT_WINDOW = (0.95, 1.5)  # fix-finger xmin window, x the peak's left edge (TempBalance / WeightWatcher)
# elements of one float64 temporary of the chunked D matrix: 4 MiB temporaries stay in cache, 3-5x faster on CPU
# than 32 MiB ones (benchmarks/results/ks_chunk_cpu.md)
DEFAULT_CHUNK_ELEMS = 1 << 19


class FitResult(NamedTuple):
    """Per ESD (float64, on the eigenvalues' device): alpha, the chosen xmin, the KS distance D of the fit over
    its tail, and num_tail (the count in alpha's numerator). NaN (num_tail 0) where no fit exists."""

    alpha: torch.Tensor
    xmin: torch.Tensor
    ks_distance: torch.Tensor
    num_tail: torch.Tensor


def default_floor(eigs: torch.Tensor) -> torch.Tensor:
    """Eigenvalues at or below this are numerically zero: max(n eps_64, 1e-8) x l_max (the float64 Gram
    eigensolver's absolute accuracy, and ``hill.ZERO_REL``). Shape: eigs.shape[:-1]."""
    n = eigs.shape[-1]
    return max(n * torch.finfo(torch.float64).eps, ZERO_REL) * eigs[..., -1].to(torch.float64).clamp_min(0)


def check_fit_args(method: str, min_tail: int, bins: int, window: tuple[float, float], variant: str) -> None:
    """Validate fit options; every message says what to pass instead."""
    if method not in FIT_METHODS:
        raise ValueError(f"fit must be one of {FIT_METHODS}, got {method!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if method != "median" and variant != "paper":
        raise ValueError(f"variant={variant!r} is an index convention of fit='median' only; pass variant='paper' "
                         f"with fit={method!r}")
    if int(min_tail) != min_tail or min_tail < 2:
        raise ValueError(f"min_tail must be an integer >= 2 (a tail needs 2 points for a slope), got {min_tail}")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    lo, hi = window
    if not (0 < lo <= 1 <= hi):
        raise ValueError(f"window must be (lo, hi) with 0 < lo <= 1 <= hi (factors of the peak), got {window}")


def _ks_block(ls: torch.Tensor, idx: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """KS distance D for candidate indices idx (B, c) with exponents alpha (B, c) on shifted logs ls (B, n).
    Only eigenvalues j >= min(idx) are formed, (B, c, n - j0)."""
    n = ls.shape[-1]
    j0 = int(idx.min()) if idx.numel() else 0
    tail = ls[:, j0:]  # (B, n - j0)
    li = torch.gather(ls, 1, idx)  # (B, c)
    t = torch.arange(j0, n, device=ls.device, dtype=torch.float64) - idx.unsqueeze(-1).to(torch.float64)
    m = (n - idx).to(torch.float64).unsqueeze(-1)  # (B, c, 1)
    ratio = tail.unsqueeze(1) - li.unsqueeze(-1)  # ln(l_j / l_i), (B, c, n - j0)
    dev = (-torch.expm1((1.0 - alpha).unsqueeze(-1) * ratio) - t / m).abs_()
    dev.masked_fill_(t < 0, 0.0)  # j < i is not in candidate i's tail (every deviation is >= 0)
    return dev.amax(-1)


def _prepare(eigs: torch.Tensor, floor: torch.Tensor | None):
    """float64 (B, n) eigenvalues, finite mask (B,), positive mask (B, n), shifted logs ln(l / l_max) (0 where not
    positive), per-candidate tail size m (n,) and log-sum (B, n)."""
    e = eigs.to(torch.float64)
    finite = torch.isfinite(e).all(-1)
    e = torch.where(finite.unsqueeze(-1), e, torch.zeros((), dtype=e.dtype, device=e.device)).clamp_min(0)
    fl = default_floor(e) if floor is None else torch.as_tensor(floor, dtype=torch.float64, device=e.device)
    fl = fl.expand(e.shape[:-1])
    pos = e > fl.unsqueeze(-1)
    logs = torch.log(torch.where(pos, e, torch.ones((), dtype=e.dtype, device=e.device)))
    ls = torch.where(pos, logs - logs[:, -1:], torch.zeros((), dtype=e.dtype, device=e.device))
    n = e.shape[-1]
    m = torch.arange(n, 0, -1, device=e.device, dtype=torch.float64)
    suffix = ls.flip(-1).cumsum(-1).flip(-1)
    logsum = suffix - m * ls  # sum_{j >= i} ln(l_j / l_i)
    return e, finite, pos, ls, m, logsum


def _select(e, finite, ls, logsum, idx: torch.Tensor, num: torch.Tensor, ok: torch.Tensor, d: torch.Tensor | None):
    """FitResult for one chosen index per row (B,), alpha = 1 + num / logsum; D computed if not given."""
    safe = torch.where(ok, idx, torch.zeros_like(idx))
    ls_sum = torch.gather(logsum, 1, safe.unsqueeze(-1)).squeeze(-1)
    ok = ok & finite & (ls_sum > 0)
    alpha = 1.0 + num / torch.where(ok, ls_sum, torch.ones_like(ls_sum))
    if d is None:
        d = _ks_block(ls, safe.unsqueeze(-1), alpha.unsqueeze(-1)).squeeze(-1)
    nan = torch.full_like(alpha, float("nan"))
    xmin = torch.gather(e, 1, safe.unsqueeze(-1)).squeeze(-1)
    return FitResult(
        torch.where(ok, alpha, nan), torch.where(ok, xmin, nan), torch.where(ok, d, nan),
        torch.where(ok, num, torch.zeros_like(num)),
    )


def _candidate_ks(ls, alpha_all, valid, c0: int, c1: int, chunk_elems: int) -> torch.Tensor:
    """D (B, c1 - c0) for candidates c0..c1-1, chunked; +inf where not valid."""
    b, n = ls.shape
    out = torch.full((b, max(0, c1 - c0)), float("inf"), dtype=torch.float64, device=ls.device)
    step = max(1, chunk_elems // max(1, b * n))
    for s in range(c0, c1, step):
        t = min(c1, s + step)
        idx = torch.arange(s, t, device=ls.device).expand(b, -1)
        out[:, s - c0 : t - c0] = _ks_block(ls, idx, alpha_all[:, s:t])
    return torch.where(valid[:, c0:c1], out, torch.full_like(out, float("inf")))


def fit_power_law(
    eigs: torch.Tensor,
    method: str = "ks",
    *,
    variant: str = "paper",
    min_tail: int = DEFAULT_MIN_TAIL,
    floor: torch.Tensor | float | None = None,
    bins: int = DEFAULT_BINS,
    window: tuple[float, float] = DEFAULT_WINDOW,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> FitResult:
    """Power-law fit of ascending eigenvalues (n,) or (B, n), one ESD per row (module docstring for the methods).

    floor: eigenvalues <= floor (scalar or (B,)) are zero, never an xmin; default ``default_floor``.
    Rows holding inf/NaN give NaN. Results are float64 on the eigenvalues' device, shape eigs.shape[:-1].
    """
    check_fit_args(method, min_tail, bins, window, variant)
    if not isinstance(eigs, torch.Tensor) or eigs.dim() not in (1, 2) or not eigs.is_floating_point():
        raise ValueError("eigs must be a floating tensor of ascending eigenvalues, shape (n,) or (B, n); got "
                         f"{type(eigs).__name__} {tuple(getattr(eigs, 'shape', ()))}: for matrices call "
                         "esd.batched_eigenvalues first")
    single = eigs.dim() == 1
    x = eigs.unsqueeze(0) if single else eigs
    if x.shape[-1] == 0 or x.shape[0] == 0:
        z = torch.full(x.shape[:-1], float("nan"), dtype=torch.float64, device=x.device)
        res = FitResult(z, z.clone(), z.clone(), torch.zeros_like(z))
    else:
        res = _fit(x, method, variant, int(min_tail), floor, int(bins), window, chunk_elems)
    return FitResult(*(r.squeeze(0) for r in res)) if single else res


def _fit(x, method, variant, min_tail, floor, bins, window, chunk_elems) -> FitResult:
    e, finite, pos, ls, m, logsum = _prepare(x, floor)
    b, n = e.shape
    dev = e.device
    r = pos.sum(-1)  # nonzero eigenvalues (pos is False...True along a row)
    if method == "median":
        thr_full = hill_params(n, variant)[0]
        r_eff = torch.where(pos[:, thr_full], torch.full_like(r, n), r)
        if variant == "paper":
            k = r_eff // 2
            idx, num = n - k - 1, k
        else:
            idx, num = n - r_eff + r_eff // 2, r_eff - r_eff // 2
        ok = r_eff >= 2
        return _select(e, finite, ls, logsum, idx.clamp(0, n - 1), num.to(torch.float64), ok, None)

    alpha_all = 1.0 + m / torch.where(logsum > 0, logsum, torch.ones_like(logsum))
    valid = pos & (m >= min_tail) & (logsum > 0) & finite.unsqueeze(-1)
    last = n - min_tail + 1  # candidates 0..last-1 have m >= min_tail
    if last <= 0:
        none = torch.zeros(b, dtype=torch.bool, device=dev)
        return _select(e, finite, ls, logsum, torch.zeros(b, dtype=torch.long, device=dev), m[0].expand(b), none,
                       torch.zeros(b, dtype=torch.float64, device=dev))
    first = int((n - r.max()).clamp(0, n)) if b else 0  # no row has a positive eigenvalue below this
    if method == "ks":
        c0, c1 = first, max(first, last)
        d = _candidate_ks(ls, alpha_all, valid, c0, c1, chunk_elems)
        has = valid[:, c0:c1].any(-1)
        j = d.argmin(-1) if c1 > c0 else torch.zeros(b, dtype=torch.long, device=dev)
        idx = c0 + j
        dsel = torch.gather(d, 1, j.unsqueeze(-1)).squeeze(-1) if c1 > c0 else torch.zeros(b, dtype=torch.float64,
                                                                                          device=dev)
        return _select(e, finite, ls, logsum, idx, m[idx], has, dsel)

    # fix_finger: peak of the log10 histogram of the nonzero eigenvalues, window around its left edge
    lg = ls / math.log(10.0)  # log10(l / l_max): the shift moves the histogram, not the bins
    lo = torch.gather(lg, 1, (n - r).clamp(0, n - 1).unsqueeze(-1)).squeeze(-1)
    hi = lg[:, -1]
    span = hi - lo
    rel = (lg - lo.unsqueeze(-1)) * (bins / torch.where(span > 0, span, torch.ones_like(span))).unsqueeze(-1)
    bin_idx = rel.floor().clamp(0, bins - 1).to(torch.long)
    counts = torch.zeros(b, bins, dtype=torch.float64, device=dev).scatter_add_(1, bin_idx, pos.to(torch.float64))
    peak = counts.argmax(-1)
    edge = peak.to(torch.float64) * (span / bins) + lo
    lg_lo, lg_hi = math.log10(window[0]), math.log10(window[1])
    inwin = valid & (lg >= (edge + lg_lo).unsqueeze(-1)) & (lg <= (edge + lg_hi).unsqueeze(-1))
    has_win = inwin.any(-1)
    cols = torch.arange(n, device=dev)
    big = torch.full((b, n), n, dtype=torch.long, device=dev)
    w0 = torch.where(inwin, cols, big).amin(-1)
    w1 = torch.where(inwin, cols, torch.full_like(big, -1)).amax(-1)
    if bool(has_win.any()):
        c0, c1 = int(w0[has_win].min()), int(w1[has_win].max()) + 1
        d = _candidate_ks(ls, alpha_all, inwin, c0, c1, chunk_elems)
        jw = d.argmin(-1)
        idx_win = c0 + jw
        d_win = torch.gather(d, 1, jw.unsqueeze(-1)).squeeze(-1)
    else:
        idx_win = torch.zeros(b, dtype=torch.long, device=dev)
        d_win = torch.zeros(b, dtype=torch.float64, device=dev)
    # fallback: the valid candidate nearest the peak edge (log space)
    dist = torch.where(valid, (lg - edge.unsqueeze(-1)).abs(), torch.full_like(lg, float("inf")))
    idx_near = dist.argmin(-1)
    has_any = valid.any(-1)
    idx = torch.where(has_win, idx_win, idx_near)
    need = has_any & ~has_win
    if bool(need.any()):
        d_near = _ks_block(ls, idx_near.unsqueeze(-1), torch.gather(alpha_all, 1, idx_near.unsqueeze(-1))).squeeze(-1)
        d_win = torch.where(has_win, d_win, d_near)
    return _select(e, finite, ls, logsum, idx, m[idx], has_any, d_win)


def ks_candidates(
    eigs: torch.Tensor,
    *,
    min_tail: int = DEFAULT_MIN_TAIL,
    floor: torch.Tensor | float | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, D) of every candidate xmin of the "ks" fit, shape (B, n) for ascending eigenvalues (B, n); D is +inf
    where index i is not a candidate. ``fit_power_law(method="ks")`` picks the first argmin of D; callers that
    must know how close the runner-up is (a check of a fit from perturbed eigenvalues) read the whole row."""
    check_fit_args("ks", min_tail, 1, (1.0, 1.0), "paper")
    if not isinstance(eigs, torch.Tensor) or eigs.dim() != 2 or not eigs.is_floating_point():
        raise ValueError(f"eigs must be a floating (B, n) tensor of ascending eigenvalues, got "
                         f"{tuple(getattr(eigs, 'shape', ()))}")
    e, finite, pos, ls, m, logsum = _prepare(eigs, floor)
    alpha_all = 1.0 + m / torch.where(logsum > 0, logsum, torch.ones_like(logsum))
    valid = pos & (m >= min_tail) & (logsum > 0) & finite.unsqueeze(-1)
    return alpha_all, _candidate_ks(ls, alpha_all, valid, 0, e.shape[-1], chunk_elems)


def fit_esds(
    eigs: Sequence[torch.Tensor],
    method: str = "ks",
    **kwargs,
) -> FitResult:
    """``fit_power_law`` over a list of 1-D ascending ESDs of any lengths: ESDs of equal length on one device
    are fitted as one batch. Returns float64 CPU tensors of len(eigs), in input order; kwargs as
    ``fit_power_law`` (``floor``, if given, is a sequence with one value per ESD)."""
    floor = kwargs.pop("floor", None)
    out = [torch.full((len(eigs),), float("nan"), dtype=torch.float64) for _ in range(3)]
    num = torch.zeros(len(eigs), dtype=torch.float64)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, x in enumerate(eigs):
        if not isinstance(x, torch.Tensor) or x.dim() != 1:
            raise ValueError(f"fit_esds takes 1-D eigenvalue tensors; item {i} has shape "
                             f"{tuple(getattr(x, 'shape', ()))}: pass one ESD per item (fit_power_law takes (B, n))")
        groups[(x.shape[0], x.device)].append(i)
    for (_, device), idx in groups.items():
        fl = None if floor is None else torch.tensor([float(floor[i]) for i in idx], dtype=torch.float64,
                                                     device=device)
        res = fit_power_law(torch.stack([eigs[i] for i in idx]), method, floor=fl, **kwargs)
        where = torch.tensor(idx)
        for o, v in zip(out, res[:3]):
            o[where] = v.cpu()
        num[where] = res.num_tail.cpu()
    return FitResult(out[0], out[1], out[2], num)
