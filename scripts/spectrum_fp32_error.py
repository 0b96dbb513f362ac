"""Measure how far each eigenvalue of a float32 Gram (decomposed in float64) lies from the float64 reference: the
data behind ``analysis.measure.SPECTRUM_GRAM32_ERR_C``, the per-eigenvalue error bound of the analysis' checked
"fp32-gram" tier.

``spectral.exact.GRAM32_ERR_C`` bounds the error of Eq. 2's alpha, which reads the eigenvalues around its threshold;
the analysis' float32 tier needs a bound that holds for every eigenvalue at once. For random
matrices with the spectra of ``scripts/hill_fp32_error.py`` (Marchenko-Pastur, power-law, log-normal, flat with
spikes, trained-like), stored in float32/bf16/fp16, at n = 8..256 and 384..1024 (and --large: 2048), it reports
max_i |l_i(fp32 Gram) - l_i(float64)| / (u32 mean(l)) per spectrum kind; the constant must exceed every ratio.

    python scripts/spectrum_fp32_error.py --trials 3000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hill_fp32_error import U32, spectrum, stored_matrix  # noqa: E402

from llr_kernels.analysis.measure import SPECTRUM_GRAM32_ERR_C  # noqa: E402
from llr_kernels.spectral.exact import exact_grams  # noqa: E402
from llr_kernels.spectral.rules import applied_exponent  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3000)
    ap.add_argument("--large", action="store_true", help="also n = 2048 (one trial in 50)")
    ap.add_argument("--seed", type=int, default=None, help="default: fresh (printed)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    print(f"seed {seed}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios: dict[str, list[float]] = {}
    t0 = time.time()
    for it in range(args.trials):
        if args.large and it % 50 == 0:
            n = 2048
        else:
            n = int(rng.integers(8, 256)) if it % 5 else int(rng.choice([384, 576, 768, 1024]))
        m = int(n * rng.uniform(1, 4)) if rng.random() < 0.6 else n
        r, c = (n, m) if rng.random() < 0.5 else (m, n)
        lam, kind = spectrum(rng, n)
        w, l64 = stored_matrix(rng, r, c, lam)
        g, exps = exact_grams([w], n, torch.float32, "auto", torch.device("cpu"))
        if not isinstance(exps[0], int):
            continue
        e = torch.linalg.eigvalsh(g.double())[0].numpy() * 4.0 ** applied_exponent(exps[0], torch.float32)
        ratios.setdefault(kind, []).append(float(np.abs(e - l64).max()) / (U32 * float(l64.mean())))
    print(f"{sum(map(len, ratios.values()))} matrices in {time.time() - t0:.0f} s\n")
    print("| spectrum | matrices | max err / (u32 mean l) | 99th percentile | median |")
    print("|---|---|---|---|---|")
    everything = [x for v in ratios.values() for x in v]
    for kind, vals in sorted(ratios.items()) + [("all", everything)]:
        a = np.array(vals)
        print(f"| {kind} | {len(a)} | {a.max():.1f} | {np.quantile(a, 0.99):.1f} | {np.median(a):.2f} |")
    print(f"\nSPECTRUM_GRAM32_ERR_C = {SPECTRUM_GRAM32_ERR_C}: margin {SPECTRUM_GRAM32_ERR_C / max(everything):.2f}x")


if __name__ == "__main__":
    main()
