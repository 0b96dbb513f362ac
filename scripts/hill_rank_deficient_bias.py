"""Bias of hill_alpha on rank-deficient matrices against the full-rank estimate, on synthetic spectra.

A full-rank n x m matrix with a known spectrum (Marchenko-Pastur, or power-law ESD with density ~ l^-p) is made
rank r in two ways: "top-r" keeps its r largest singular values (a low-rank weight), "random" multiplies it by a
random rank-r projection on the long side (W P, as a gradient summed over r tokens), for r = n/4, n/2 - 1, n/2 + 1
and 3n/4. For each it reports the full-rank alpha, hill_alpha's alpha and status (default
rank_deficient="nonzero": Eq. 2 on the r nonzero eigenvalues, k = r // 2, when Eq. 2's threshold is zero, i.e.
r <= n/2; Eq. 2 unchanged above), and the relative bias, averaged over seeds.

    python scripts/hill_rank_deficient_bias.py            # writes benchmarks/results/hill_rank_deficient_bias.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llr_kernels.spectral import hill_alpha  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results",
                   "hill_rank_deficient_bias.md")


def full_rank(kind: str, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "marchenko-pastur":
        return rng.standard_normal((n, m)) / np.sqrt(m)
    p = float(kind.split("=")[1])
    u = (np.arange(n) + rng.random(n)) / n
    lam = (1 - u) ** (-1 / (p - 1))
    a, _ = np.linalg.qr(rng.standard_normal((n, n)))
    b, _ = np.linalg.qr(rng.standard_normal((m, n)))
    return (a * np.sqrt(lam)) @ b.T


def rank_r(w: np.ndarray, r: int, how: str, rng: np.random.Generator) -> np.ndarray:
    if how == "top-r":
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return (u[:, :r] * s[:r]) @ vt[:r]
    q, _ = np.linalg.qr(rng.standard_normal((w.shape[1], r)))
    return w @ q @ q.T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--m", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    n, m = args.n, args.m
    ranks = [n // 4, n // 2 - 1, n // 2 + 1, 3 * n // 4]
    lines = [
        "# Hill alpha of rank-deficient matrices: bias against the full-rank estimate",
        "",
        f"`python scripts/hill_rank_deficient_bias.py --n {n} --m {m} --seeds {args.seeds}` (torch {torch.__version__},"
        f" {platform.machine()}); float64 matrices {n} x {m}, mean over {args.seeds} seeds (spread: min..max).",
        "",
        "`top-r`: the r largest singular values kept (a low-rank weight). `random`: W times a random rank-r"
        " projection on the long side (a gradient over r tokens). For r <= n/2 Eq. 2's threshold is zero and"
        " `hill_alpha` (default `rank_deficient=\"nonzero\"`) applies Eq. 2 to the r nonzero eigenvalues with"
        " k = r // 2 (status `ok_rank_deficient`); for r > n/2 Eq. 2 is defined and applied unchanged (status `ok`),"
        " its threshold then sits r - n/2 eigenvalues above the zeros.",
        "",
        "| spectrum | full-rank alpha | r | r / n | projection | status | alpha | bias vs full rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ["marchenko-pastur", "power-law p=2.5", "power-law p=3.5", "power-law p=5"]:
        for how in ["top-r", "random"]:
            for r in ranks:
                full, got, stat = [], [], set()
                for seed in range(args.seeds):
                    rng = np.random.default_rng(1000 * seed + r)
                    w = full_rank(kind, n, m, rng)
                    a_full = float(hill_alpha(torch.from_numpy(w))[0])
                    res = hill_alpha(torch.from_numpy(rank_r(w, r, how, rng)), return_status=True)
                    full.append(a_full)
                    got.append(float(res.alpha[0]))
                    stat.add(res.status[0])
                full_a, got_a = np.array(full), np.array(got)
                bias = got_a / full_a - 1
                lines.append(
                    f"| {kind} | {full_a.mean():.3f} | {r} | {r / n:.2f} | {how} | {'/'.join(sorted(stat))} | "
                    f"{got_a.mean():.3f} | {100 * bias.mean():+.1f}% ({100 * bias.min():+.1f}..{100 * bias.max():+.1f}%) |"
                )
                print(lines[-1], flush=True)
    lines += [
        "",
        "Reading (measured at n = 256, m = 512, 5 seeds): top-r (low-rank weights): above n/2 the top half is"
        " untouched and alpha is exactly the full-rank one; at or below n/2 Eq. 2 on the nonzero part keeps a power"
        " law's alpha within about 1% (the Hill estimator is consistent for any k), while a bounded Marchenko-Pastur"
        " bulk reads lighter-tailed (+65% at r = n/2, +160% at n/4: its top quarter is the compressed upper edge)."
        " random (a gradient over r < n tokens): at or below n/2 the bias is -28%..+28% depending on the spectrum;"
        " just above n/2 the unchanged Eq. 2 puts its threshold on the smallest nonzero eigenvalues and alpha drops"
        " by 40-70% (-20..-55% at 3n/4): the rule jumps at r = n/2. Rank-aware k for every r < n would remove the"
        " jump but change Eq. 2 for every full-rank square matrix whose smallest singular values fall under the"
        " zero floor (k = floor(r/2) moves by one or two), so it is not the default.",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
