"""Measure the error of float32 exact alphas against float64 Eq. 2, the data behind the error-bound constants of
llr_kernels/spectral/exact.py (FP32_ERR_C, GRAM32_ERR_C).

For random matrices with known spectra (Marchenko-Pastur, power-law, log-normal, trained-like: a bulk with a
power-law tail and a few large spikes, flat with spikes) at LLaMA-60M hidden shapes (or --small shapes), stored in
float32/bf16/fp16, it computes alpha three ways: float64 (numpy eigvalsh of the float64 Gram of the stored
matrix, Eq. 2), float32 Gram + float32 eigvalsh (tier 1), float32 Gram + float64 eigvalsh (tier 2), and reports
each tier's relative error divided by the predictor q = 2^-24 (alpha - 1)^2 / alpha * mean(l) / l_{n-k}:
the bound is C * q, so C must exceed every ratio seen. Finally it checks hill_alpha(method="auto") against
float64 on every matrix (its alphas must be within 1e-5 relative).

    python scripts/hill_fp32_error.py --trials 300              # LLaMA-60M shapes (minutes)
    python scripts/hill_fp32_error.py --trials 3000 --small     # n = 8..256
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llr_kernels.spectral import hill_alpha  # noqa: E402
from llr_kernels.spectral.exact import FP32_ERR_C, GRAM32_ERR_C  # noqa: E402
from llr_kernels.ops.eig.naive import eigvalsh_batch_torch, gram_eigvalsh_torch  # noqa: E402

U32 = 2.0**-24
LLAMA60M = [(768, 768), (768, 2048), (2048, 768)]


def spectrum(rng: np.random.Generator, n: int) -> tuple[np.ndarray, str]:
    kind = int(rng.integers(0, 5))
    if kind == 0:
        a = rng.standard_normal((n, int(n * rng.uniform(1, 10))))
        return np.linalg.eigvalsh(a @ a.T), "marchenko-pastur"
    if kind == 1:
        p = rng.uniform(1.5, 6)
        u = (np.arange(n) + rng.random(n)) / n
        return (1 - u) ** (-1 / (p - 1)), "power-law"
    if kind == 2:
        return np.sort(np.exp(rng.uniform(0.05, 3) * rng.standard_normal(n))), "log-normal"
    if kind == 3:
        l = np.exp(rng.uniform(0, 1e-3) * rng.random(n))
        s = int(rng.integers(1, 4))
        l[-s:] *= np.exp(rng.uniform(0.01, 3, s))
        return np.sort(l), "flat+spikes"
    a = rng.standard_normal((n, 2 * n))
    l = np.linalg.eigvalsh(a @ a.T / (2 * n))
    t = max(1, int(rng.uniform(0.02, 0.3) * n))
    l[-t:] *= (1 - (np.arange(t) + rng.random(t)) / t) ** (-1 / (rng.uniform(2, 6) - 1))
    s = int(rng.integers(0, 4))
    if s:
        l[-s:] *= 10 ** rng.uniform(0, 3.5)
    return np.sort(l), "trained-like"


def stored_matrix(rng: np.random.Generator, r: int, c: int, lam: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """An r x c matrix with Gram spectrum proportional to ``lam`` (random singular vectors), stored in a random one of
    float32/bf16/fp16, and the float64 (numpy) Gram eigenvalues of the stored matrix."""
    n = len(lam)
    u, _ = np.linalg.qr(rng.standard_normal((r, n)))
    v, _ = np.linalg.qr(rng.standard_normal((c, n)))
    dt = [torch.float32, torch.bfloat16, torch.float16][int(rng.integers(0, 3))]
    w = torch.from_numpy((u * np.sqrt(lam / lam.max())) @ v.T).to(dt)
    x = w.double().numpy()
    return w, np.linalg.eigvalsh(x @ x.T if r <= c else x.T @ x)


def hill(l: np.ndarray) -> tuple[float, float]:
    n = len(l)
    k = n // 2
    thr = l[n - k - 1]
    return 1 + k / float(np.sum(np.log(l[n - k :] / thr))), float(thr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=None, help="default: fresh (printed)")
    ap.add_argument("--small", action="store_true", help="n = 8..256 and random aspect instead of LLaMA-60M shapes")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    print(f"seed {seed}, torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    rows = []
    auto_err = 0.0
    t0 = time.time()
    for _ in range(args.trials):
        if args.small:
            n = int(rng.integers(8, 256))
            m = int(n * rng.uniform(1, 4))
            r, c = (n, m) if rng.random() < 0.5 else (m, n)
        else:
            r, c = LLAMA60M[int(rng.integers(0, 3))]
            n = min(r, c)
        lam, kind = spectrum(rng, n)
        w, l64 = stored_matrix(rng, r, c, lam)
        a64, thr = hill(l64)
        if not (np.isfinite(a64) and thr > 1e-6 * l64[-1]):
            continue
        e32, g32 = gram_eigvalsh_torch([w], torch.float32, keep_grams=True)
        e2 = eigvalsh_batch_torch(g32, torch.float64)
        q = U32 * (a64 - 1) ** 2 / a64 * float(l64.mean()) / thr
        errs = [abs(hill(e.double().numpy()[0])[0] / a64 - 1) for e in (e32, e2)]
        rows.append((kind, str(w.dtype).replace("torch.", ""), a64, errs[0], errs[1], q))
        res = hill_alpha(w, method="auto", return_status=True, alpha_max=None)
        if res.status == ["ok"]:
            auto_err = max(auto_err, abs(float(res.alpha[0]) / a64 - 1))
    print(f"{len(rows)} matrices in {time.time() - t0:.0f} s\n")
    print("| spectrum | matrices | alpha range | tier 1 max rel err | tier 1 max err/q | tier 1 median err/q "
          "| tier 2 max rel err | tier 2 max err/q |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in sorted({r[0] for r in rows}) + ["all"]:
        sel = [r for r in rows if kind in ("all", r[0])]
        a = np.array([r[2] for r in sel])
        e1, e2, q = (np.array([r[i] for r in sel]) for i in (3, 4, 5))
        print(f"| {kind} | {len(sel)} | {a.min():.2f}-{a.max():.1f} | {e1.max():.1e} | {(e1 / q).max():.2f} | "
              f"{np.median(e1 / q):.2f} | {e2.max():.1e} | {(e2 / q).max():.2f} |")
    print(f"\nconstants in spectral/exact.py: FP32_ERR_C = {FP32_ERR_C}, GRAM32_ERR_C = {GRAM32_ERR_C}")
    print(f"hill_alpha(method='auto') max relative error against float64 Eq. 2: {auto_err:.2e} (must be <= 1e-5)")


if __name__ == "__main__":
    main()
