"""Every metric of a chunk of weight matrices from one batched eigendecomposition per shape, in float32 where a
checked error bound allows it.

Metrics (``ANALYSIS_METRICS``): "alpha" (paper Eq. 2, as ``hill_alpha``), "alpha_fit" (the power-law fit
``Settings.fit`` of ``spectral.fits``, with its xmin, KS distance D and tail size), "alpha_hat" (alpha_fit x
log10 lambda_max, WeightWatcher's alpha_weighted), "spectral_norm" (lambda_max = sigma_max^2), "frobenius_norm"
(||W||_F^2, WeightWatcher's "norm"), "stable_rank", "entropy"; the conventions are ``spectral.metrics``'s.

Precision ``"auto"`` (default), per matrix of at most float32 precision:
* "alpha" alone: ``hill_alpha(method="auto")``, the spectral package's checked tiers (float32 eigenvalues where
  their bound allows, float64 elsewhere): every alpha within 1e-5 relative of float64 Eq. 2.
* any other metric: the float32 Gram (true fp32 products) decomposed in float64, the spectral package's tier 2.
  Every eigenvalue then carries the absolute error bound delta = SPECTRUM_GRAM32_ERR_C u32 mean(l), measured for
  every eigenvalue at once (``scripts/spectrum_fp32_error.py``), and each metric is kept only where delta cannot
  move it by more than ``Settings.tol`` (1e-5) relative: Eq. 2 by ``exact``'s own check; lambda_max always (its
  relative error is at most SPECTRUM_GRAM32_ERR_C u32 = 7.6e-6); ||W||_F^2 is summed from W in float64, so the
  stable rank inherits lambda_max's error; the "median" fit by Eq. 2's bound at its threshold. The entropy and
  the "ks" / "fix_finger" fits go straight to float64: they read every eigenvalue, and their checks (a bound on
  sum |d(p ln p)|; KS distances bounded over the error box) never passed under the measured per-eigenvalue bound
  on the test sets, so a float32 pass would only be repeated. A matrix failing any check is recomputed with a
  float64 Gram ("precision" column: "fp32-gram" or "fp64").
Precision ``"float64"``: float64 Gram and eigenvalues for everything (tier 3; ``--ww-compatible``).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch

from ..ops import dispatch
from ..ops.gram.naive import cuda_tf32
from ..spectral import hill_alpha
from ..spectral.cost import EXACT_REL_TOL
from ..spectral.exact import U32, exact_eigs, exact_grams
from ..spectral.fits import DEFAULT_MIN_TAIL, FIT_METHODS, fit_esds
from ..spectral.metrics import ENTROPY_RULES, entropy_from_eigenvalues
from ..spectral.reference import hill_row
from ..spectral.rules import (
    DEFAULT_ALPHA_MAX,
    DEFAULT_MIN_EIGS,
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    applied_exponent,
    as_matrix,
    decide,
    hill_params,
    noise_level,
    prescale,
    zero_floor,
)

ANALYSIS_METRICS = ("alpha", "alpha_fit", "alpha_hat", "spectral_norm", "frobenius_norm", "stable_rank", "entropy")
PRECISIONS = ("auto", "float64")
WW_EVALS_THRESH = 1e-5  # WeightWatcher 0.7.7 (constants.EVALS_THRESH): eigenvalues at or below it are not fitted
WW_MIN_TAIL = 2  # WeightWatcher's candidate xmins are every eigenvalue but the largest: tails of >= 2
WW_MIN_EVALS = 8  # WeightWatcher 0.7.7 analyze(min_evals=DEFAULT_MIN_EVALS)
_LOG10_4 = math.log10(4.0)
# Per-eigenvalue error bound of the "fp32-gram" tier: |l_i - l_i(float64)| <= C u32 mean(l) for every i. Not
# spectral.exact's GRAM32_ERR_C (24), which bounds Eq. 2's alpha and was exceeded per eigenvalue (up to 54).
# Measured by scripts/spectrum_fp32_error.py: docs/analysis.md.
SPECTRUM_GRAM32_ERR_C = 128.0


@dataclass(frozen=True)
class Settings:
    """What to measure and how (module docstring). ``ww_compatible()`` gives WeightWatcher 0.7.7's conventions."""

    metrics: tuple[str, ...] = ANALYSIS_METRICS
    fit: str = "ks"  # "ks", "fix_finger" or "median" (spectral.fits)
    min_tail: int = DEFAULT_MIN_TAIL
    fit_floor: float | None = None  # absolute eigenvalue floor of the fit; None: the library's relative floor
    entropy_rule: str = "library"  # or "ww" (spectral.metrics.entropy_from_eigenvalues)
    min_eigs: int = DEFAULT_MIN_EIGS  # Eq. 2's (hill_alpha's) minimum number of eigenvalues
    fit_min_eigs: int = DEFAULT_MIN_EIGS
    alpha_max: float | None = DEFAULT_ALPHA_MAX
    fit_alpha_max: float | None = DEFAULT_ALPHA_MAX
    precision: str = "auto"
    tol: float = EXACT_REL_TOL

    def __post_init__(self) -> None:
        bad = [m for m in self.metrics if m not in ANALYSIS_METRICS]
        if bad or not self.metrics:
            raise ValueError(f"unknown or no metrics {bad or list(self.metrics)}: choose from {ANALYSIS_METRICS}")
        if self.fit not in FIT_METHODS:
            raise ValueError(f"fit must be one of {FIT_METHODS}, got {self.fit!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.entropy_rule not in ENTROPY_RULES:
            raise ValueError(f"entropy_rule must be one of {ENTROPY_RULES}, got {self.entropy_rule!r}")
        if int(self.min_tail) != self.min_tail or self.min_tail < 2:
            raise ValueError(f"min_tail must be an integer >= 2, got {self.min_tail}")

    @classmethod
    def ww_compatible(cls, metrics: Sequence[str] = ANALYSIS_METRICS) -> "Settings":
        """WeightWatcher 0.7.7's analyze(): KS fit over tails of >= 2 eigenvalues above 1e-5, its entropy formula
        (float64 rank rule, EPSILON 1e-10), no alpha_max on the fit, float64 throughout."""
        return cls(tuple(metrics), fit="ks", min_tail=WW_MIN_TAIL, fit_floor=WW_EVALS_THRESH, entropy_rule="ww",
                   fit_min_eigs=WW_MIN_EVALS, fit_alpha_max=None, precision="float64")

    @property
    def needs_spectrum(self) -> bool:
        return self.metrics != ("alpha",)

    @property
    def needs_fit(self) -> bool:
        return "alpha_fit" in self.metrics or "alpha_hat" in self.metrics


@dataclass
class Spectrum:
    """One matrix's ascending float64 eigenvalues of its Gram after scaling W by 2^-exp (true = e * 4^exp), the
    status settled before any decomposition (None, "non_finite", "zero_matrix"), and the absolute error bound of
    each eigenvalue in the same units (0 for float64)."""

    e: torch.Tensor
    exp: int
    pre: str | None
    delta: float
    precision: str


def measure_matrices(mats: Sequence[torch.Tensor], settings: Settings, memory_budget: int | None = None,
                     keep_spectra: bool = False) -> list[dict]:
    """A row of metrics per matrix (module docstring); matrices may have any shapes and devices. With
    ``keep_spectra`` each row also holds "eigenvalues" (true scale, float64 CPU) for plots."""
    ms = [as_matrix(w.detach()) for w in mats]
    rows: list[dict] = [{"n": min(w.shape)} for w in ms]
    if not settings.needs_spectrum and not keep_spectra:
        dt = torch.float64 if settings.precision == "float64" else None
        method = "exact" if settings.precision == "float64" else "auto"
        res = hill_alpha(ms, method=method, min_eigs=settings.min_eigs, alpha_max=settings.alpha_max, dtype=dt,
                         return_status=True, **({"memory_budget": memory_budget} if method == "auto" else {}))
        for r, a, st in zip(rows, res.alpha.tolist(), res.status):
            r.update(alpha=a, status=st, precision="fp64" if method == "exact" else "checked")
        return rows
    checked = (settings.precision == "auto" and "entropy" not in settings.metrics
               and not (settings.needs_fit and settings.fit != "median"))
    fast = [i for i, w in enumerate(ms) if checked and w.dtype != torch.float64]
    redo = sorted(set(range(len(ms))) - set(fast))
    if fast:
        spectra = _spectra_gram32([ms[i] for i in fast])
        redo += _fill_rows([rows[i] for i in fast], [ms[i] for i in fast], spectra, settings, keep_spectra,
                           report_failed=True, index=fast)
    if redo:
        redo = sorted(redo)
        spectra = _spectra64([ms[i] for i in redo])
        _fill_rows([rows[i] for i in redo], [ms[i] for i in redo], spectra, settings, keep_spectra)
    return rows


def _by_shape(mats: list[torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        groups[(tuple(w.shape), w.device)].append(i)
    return groups


def _spectra_gram32(mats: list[torch.Tensor]) -> list[Spectrum]:
    """Tier 2 of ``spectral.exact``: true-fp32 Grams (one grouped call per shape and device), float64 eigenvalues
    by the dispatched ``eigvalsh`` op (CPU: one matrix per thread; CUDA: batched cuSOLVER)."""
    out: list[Spectrum | None] = [None] * len(mats)
    for (shape, device), idx in _by_shape(mats).items():
        n = min(shape)
        g, exps = exact_grams([mats[i] for i in idx], n, torch.float32, "auto", device)
        _, eig_fn = dispatch.get_op("eigvalsh", "auto", device)
        with cuda_tf32(False):
            eig = eig_fn(g, torch.float64).to("cpu", torch.float64).clamp_min(0)
        del g
        for j, i in enumerate(idx):
            x = exps[j]
            if isinstance(x, str):
                out[i] = _settled(n, x, "fp32-gram")
            else:
                e = eig[j]
                out[i] = Spectrum(e, applied_exponent(x, torch.float32), None,
                                  SPECTRUM_GRAM32_ERR_C * U32 * float(e.mean()), "fp32-gram")
    return out  # type: ignore[return-value]


def _spectra64(mats: list[torch.Tensor]) -> list[Spectrum]:
    """Tier 3 of ``spectral.exact``: float64 Grams and eigenvalues (CPU: the C++ op, one matrix per thread)."""
    out: list[Spectrum | None] = [None] * len(mats)
    for (shape, device), idx in _by_shape(mats).items():
        n = min(shape)
        group = [mats[i] for i in idx]
        eig, _ = exact_eigs(group, n, torch.float64, "auto", device, keep=False)
        eig = eig.to("cpu", torch.float64)
        for j, (i, x) in enumerate(zip(idx, prescale(group))):
            if isinstance(x, str):
                out[i] = _settled(n, x, "fp64")
            else:
                out[i] = Spectrum(eig[j].clamp_min(0), applied_exponent(x, torch.float64), None, 0.0, "fp64")
    return out  # type: ignore[return-value]


def _settled(n: int, status: str, precision: str) -> Spectrum:
    fill = float("nan") if status == STATUS_NON_FINITE else 0.0
    return Spectrum(torch.full((n,), fill, dtype=torch.float64), 0, status, 0.0, precision)


def _fill_rows(rows: list[dict], mats: list[torch.Tensor], spectra: list[Spectrum], s: Settings, keep: bool,
               report_failed: bool = False, index: list[int] | None = None) -> list[int]:
    """Write every requested metric into ``rows``; with report_failed, return the ``index`` entries whose checks
    failed (their rows are left for the float64 pass)."""
    failed: set[int] = set()
    fits = _fits(mats, spectra, s, failed) if s.needs_fit else {}
    for j, (row, w, sp) in enumerate(zip(rows, mats, spectra)):
        if j in failed:
            continue
        vals = _row(w, sp, s, fits.get(j))
        if vals is None:
            failed.add(j)
            continue
        row.update(vals, precision=sp.precision)
        if keep:
            row["eigenvalues"] = _true_scale(sp)
    if failed and not report_failed:
        raise AssertionError("a float64 spectrum failed a float32 check")  # delta is 0 there: cannot happen
    return [index[j] for j in sorted(failed)] if index is not None else sorted(failed)


def _true_scale(sp: Spectrum) -> torch.Tensor:
    return torch.ldexp(sp.e, torch.tensor(2 * sp.exp)) if sp.exp else sp.e.clone()


def _row(w: torch.Tensor, sp: Spectrum, s: Settings, fit: dict | None) -> dict | None:
    """The requested metrics of one matrix, or None when a float32 check fails."""
    e, n, names = sp.e, sp.e.shape[0], s.metrics
    out: dict = {}
    if sp.pre is not None:
        zero = sp.pre == STATUS_ZERO
        for k in names:
            out[k] = 0.0 if zero and k in ("spectral_norm", "frobenius_norm") else float("nan")
        if "alpha" in names:
            out["status"] = sp.pre if n >= max(2, s.min_eigs) else STATUS_TOO_FEW
        if s.needs_fit:
            out["fit_status"] = sp.pre if n >= max(2, s.fit_min_eigs) else STATUS_TOO_FEW
            out.update(xmin=float("nan"), ks_distance=float("nan"), num_tail=0)
        return out
    lmax = float(e[-1])
    scale_log2 = 2 * sp.exp
    if "spectral_norm" in names:
        out["spectral_norm"] = math.ldexp(lmax, scale_log2)
    if "frobenius_norm" in names or "stable_rank" in names:  # from W: exact to float64 rounding at every tier
        fro = float(torch.linalg.vector_norm(w, dtype=torch.float64)) ** 2
        if "frobenius_norm" in names:
            out["frobenius_norm"] = fro
        if "stable_rank" in names:
            out["stable_rank"] = fro / math.ldexp(lmax, scale_log2)
    if "entropy" in names:
        out["entropy"] = entropy_from_eigenvalues(e, w.shape, s.entropy_rule)
    if "alpha" in names:
        a, st = hill_row(e, variant="paper", min_eigs=s.min_eigs, input_dtype=w.dtype, rank_deficient="nonzero",
                         alpha_max=s.alpha_max)
        if sp.delta and not _eq2_ok(e, w.dtype, a, st, sp.delta, s):
            return None
        out.update(alpha=a, status=st)
    if fit is not None:
        out.update(fit)
        if "alpha_hat" in names:
            log10_lmax = math.log10(lmax) + sp.exp * _LOG10_4
            out["alpha_hat"] = fit["alpha_fit"] * log10_lmax
        if "alpha_fit" not in names:
            for k in ("alpha_fit", "xmin", "ks_distance", "num_tail"):
                out.pop(k)
    return out


def _eq2_ok(e: torch.Tensor, w_dtype: torch.dtype, a: float, st: str, delta: float, s: Settings) -> bool:
    """``spectral.exact``'s tier-2 acceptance: ok, clear of the zero floor and alpha_max, bound within tol."""
    if st != STATUS_OK:
        return False
    n = e.shape[0]
    thr_idx, _, num, _ = hill_params(n, "paper")
    thr, lmax, mu = float(e[thr_idx]), float(e[-1]), float(e.mean())
    nu64 = noise_level(n, w_dtype, torch.float64)
    floor = max(zero_floor(n, lmax, mu, nu64, torch.float64), 64 * U32 * mu)
    bound = delta / thr * (a - 1.0) ** 2 / a
    return (thr > 2.0 * floor and bound <= s.tol
            and (s.alpha_max is None or a * (1.0 + 2.0 * s.tol) <= s.alpha_max))


def _fit_floor(e: torch.Tensor, w_dtype: torch.dtype, exp: int, s: Settings) -> float:
    """The fit's floor in the spectrum's scaled units: WeightWatcher's absolute one, or the library's."""
    if s.fit_floor is not None:
        return math.ldexp(s.fit_floor, -2 * exp)
    n = e.shape[0]
    nu = noise_level(n, w_dtype, torch.float64)
    return zero_floor(n, float(e[-1]), float(e.mean()), nu, torch.float64)


def _fits(mats: list[torch.Tensor], spectra: list[Spectrum], s: Settings, failed: set[int]) -> dict[int, dict]:
    """Fit results per matrix index (statuses as ``spectral.metrics``); float32 checks add to ``failed``."""
    out: dict[int, dict] = {}
    todo: dict[int, list[tuple[int, float]]] = defaultdict(list)  # n -> (j, floor)
    nan = float("nan")
    for j, (w, sp) in enumerate(zip(mats, spectra)):
        n = sp.e.shape[0]
        empty = {"alpha_fit": nan, "xmin": nan, "ks_distance": nan, "num_tail": 0}
        if sp.pre is not None:
            continue  # ``_row`` fills it
        if n < max(2, s.fit_min_eigs):
            out[j] = dict(empty, fit_status=STATUS_TOO_FEW)
            continue
        floor = _fit_floor(sp.e, w.dtype, sp.exp, s)
        if int((sp.e > floor).sum()) < max(2, s.fit_min_eigs):
            out[j] = dict(empty, fit_status=STATUS_RANK_DEFICIENT)
            continue
        todo[n].append((j, floor))
    for rows in todo.values():
        ids = [j for j, _ in rows]
        floors = [f for _, f in rows]
        eigs = [spectra[j].e for j in ids]
        res = fit_esds(eigs, s.fit, min_tail=s.min_tail, floor=floors)
        check = [k for k, j in enumerate(ids) if spectra[j].delta]
        if check:  # only "median" reaches here checked: Eq. 2's bound at its threshold
            for k in check:
                a, x = float(res.alpha[k]), float(res.xmin[k])
                if not (math.isfinite(a) and 2 * (a - 1) ** 2 * spectra[ids[k]].delta / (a * x) <= s.tol):
                    failed.add(ids[k])
        for k, j in enumerate(ids):
            if j in failed:
                continue
            sp, w = spectra[j], mats[j]
            a, x, d, m = (float(v[k]) for v in res)
            if not math.isfinite(a):
                st = STATUS_FLAT
            else:
                nu = noise_level(sp.e.shape[0], w.dtype, torch.float64)
                _, st = decide(m, m / (a - 1.0), nu, s.fit_alpha_max)
            good = st == STATUS_OK
            out[j] = {"alpha_fit": a if good else nan, "xmin": math.ldexp(x, 2 * sp.exp) if good else nan,
                      "ks_distance": d if good else nan, "num_tail": int(m) if good else 0, "fit_status": st}
    return out
