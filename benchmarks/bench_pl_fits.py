"""Time the power-law fits (median Hill vs KS goodness-of-fit vs fix-finger) per layer set on CPU, side by side.

Two timings per layer set: the fit alone on precomputed float64 eigenvalues (``fits.fit_power_law`` on the
stacked (B, n) ESDs), and end to end (``metrics.measure(mats, "alpha", fit=...)``: batched eigendecomposition +
fit + status rules). Every number is a ratio to the median Hill measured in the same run.

    python benchmarks/bench_pl_fits.py [--threads 1] [--repeats 5] [--out benchmarks/results/pl_fits_cpu.md]

Waits (up to --wait-s, polling every 30 s) for the 1-minute load average to drop below 1 before measuring,
and records the load it started at.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llr_kernels.spectral.esd import batched_eigenvalues  # noqa: E402
from llr_kernels.spectral.fits import fit_power_law  # noqa: E402
from llr_kernels.spectral.metrics import measure  # noqa: E402

LAYER_SETS = {"24 x 512x1376": (24, 512, 1376), "8 x 1024x1024": (8, 1024, 1024)}
FITS = ("median", "ks", "fix_finger")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def wait_for_quiet(max_wait_s: float) -> tuple[bool, str, float]:
    t0 = time.time()
    while True:
        la = loadavg()
        if float(la.split()[0]) < 1.0:
            return True, la, time.time() - t0
        if time.time() - t0 >= max_wait_s:
            return False, la, time.time() - t0
        time.sleep(30)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--wait-s", type=float, default=600.0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "pl_fits_cpu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet, la_start, waited = wait_for_quiet(args.wait_s)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (b, r, c) in LAYER_SETS.items():
        # heavy-tailed-ish weights: Gaussian times a random column scaling with a Pareto tail
        mats = [torch.randn(r, c, generator=gen) * (1.0 + torch.rand(c, generator=gen) ** -0.4) for _ in range(b)]
        t_eig = timed(lambda: batched_eigenvalues(mats), 1)
        stack = torch.stack(batched_eigenvalues(mats))
        fit_t = {f: timed(lambda f=f: fit_power_law(stack, f), args.repeats) for f in FITS}
        e2e_t = {f: timed(lambda f=f: measure(mats, "alpha", fit=f), 2) for f in FITS}
        alphas = {f: fit_power_law(stack, f).alpha for f in FITS}
        rows.append((name, t_eig, fit_t, e2e_t, alphas))
        print(name, f"eig {t_eig*1e3:.1f} ms", {f: f"{t*1e3:.2f} ms" for f, t in fit_t.items()},
              {f: f"{t*1e3:.1f} ms" for f, t in e2e_t.items()}, flush=True)

    lines = [
        "# Power-law fits on CPU: median Hill vs KS vs fix-finger",
        "",
        f"Command: `python benchmarks/bench_pl_fits.py --threads {args.threads} --repeats {args.repeats}`",
        f"Machine: {platform.machine()} {platform.processor() or ''} ({os.cpu_count()} logical CPUs visible), "
        f"{platform.platform()}",
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, float64",
        f"`cat /proc/loadavg` at the start: `{la_start}` "
        + (f"(waited {waited:.0f} s for the 1-min load to drop below 1)" if quiet else
           f"(NOT quiet: the 1-min load stayed >= 1 for {waited:.0f} s; measured anyway, treat ratios as rough)"),
        f"`cat /proc/loadavg` at the end: `{loadavg()}`",
        "",
        "Weights: Gaussian x per-column scale 1 + U^-0.4 (seeded). Fit-only: `fit_power_law` on the stacked float64",
        f"ESDs, median of {args.repeats} runs after a warm-up. End to end: `measure(mats, 'alpha', fit=...)` (batched",
        "eigendecomposition + fit + status rules; fit='median' runs hill.hill_row per matrix), median of 2 runs.",
        "",
        "| layer set | batched eigvalsh | fit: median | fit: ks | fit: fix_finger | ks / median | "
        "fix_finger / median | e2e median | e2e ks | e2e fix_finger | e2e ks / median | e2e fix_finger / median |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t_eig, ft, et, _ in rows:
        lines.append(
            f"| {name} | {t_eig*1e3:.0f} ms | {ft['median']*1e3:.2f} ms | {ft['ks']*1e3:.2f} ms | "
            f"{ft['fix_finger']*1e3:.2f} ms | {ft['ks']/ft['median']:.1f}x | {ft['fix_finger']/ft['median']:.1f}x | "
            f"{et['median']*1e3:.0f} ms | {et['ks']*1e3:.0f} ms | {et['fix_finger']*1e3:.0f} ms | "
            f"{et['ks']/et['median']:.2f}x | {et['fix_finger']/et['median']:.2f}x |")
    lines += ["", "Alphas (mean over the set; the fits answer different questions, so they differ):", ""]
    for name, *_, al in rows:
        lines.append(f"- {name}: " + ", ".join(f"{f} {al[f].nanmean().item():.3f}" for f in FITS))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
