#!/usr/bin/env python3
"""What the steps term of SLQ's target_error bound costs: one SLQ round with and without it, side by side.

The steps term (spectral/target.py) reads alpha a second time from the leading half of every Lanczos tridiagonal:
one more small tridiagonal eigendecomposition and one more Hill reduction per round, no extra matvec. Timed:
``hill_alpha_fast(method="lanczos")`` on LLaMA-MLP-shaped matrices (n x ceil(8n/3)) with ``target_error=None``
(the fixed budget, no steps term) against ``target_error=1e6`` (the same round plus the steps term; every matrix
meets that target at once, so nothing is refined), interleaved, median of --iters.

    python benchmarks/bench_slq_steps_term.py [--n 1024] [--matrices 4] [--threads 2]
Writes benchmarks/results/slq_steps_term_<device>.{json,md} (on CPU only when the machine was quiet).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from typing import Any

import torch

import _common as C
from llr_kernels.spectral.batched import hill_alpha_fast


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--matrices", type=int, default=4)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=str(C.RESULTS))
    C.add_common_args(ap)
    args = ap.parse_args()
    if args.dry_run:
        args.n, args.matrices, args.probes, args.steps, args.iters = 96, 2, 8, 24, 2
    device, guard = C.setup_run(args)
    gen = torch.Generator().manual_seed(0)
    m = math.ceil(8 * args.n / 3)
    mats = [torch.randn(args.n, m, generator=gen).to(device) for _ in range(args.matrices)]
    kw = dict(method="lanczos", probes=args.probes, steps=args.steps, seed=1)
    fns = {"fixed": lambda: hill_alpha_fast(mats, **kw),
           "with_steps_term": lambda: hill_alpha_fast(mats, target_error=1e6, **kw)}
    t = C.time_interleaved(fns, device, warmup=1, iters=args.iters)
    rep: dict = {}
    hill_alpha_fast(mats, target_error=1e6, report=rep, **kw)
    payload: dict[str, Any] = {
        "device": device.type, "machine": C.machine_info(device), "args": vars(args),
        "timings": {k: asdict(v) for k, v in t.items()},
        "ratio": t["with_steps_term"].median / t["fixed"].median,
        "steps_error": rep["steps_error"].tolist(),
    }
    payload["load"] = guard.finish()
    md = "\n".join([
        f"# Cost of SLQ's steps term ({device.type})", "",
        C.machine_line(payload["machine"]), C.load_line(payload["load"]),
        f"- {args.matrices} matrices {args.n} x {m}, {args.probes} probes x {args.steps} steps, median of "
        f"{args.iters} interleaved runs after a warm-up",
        f"- command: `python benchmarks/bench_slq_steps_term.py --n {args.n} --matrices {args.matrices}"
        f"{'' if args.threads is None else f' --threads {args.threads}'}`", "",
        "| SLQ round | median |", "|---|---|",
        f"| fixed budget (target_error=None) | {t['fixed'].median:.3f} s |",
        f"| with the steps term (target_error=1e6) | {t['with_steps_term'].median:.3f} s |",
        f"| ratio | {payload['ratio']:.3f}x |", "",
        f"Steps terms of these matrices: {', '.join(f'{x:.4f}' for x in payload['steps_error'])}", "",
    ])
    print(md)
    if not args.dry_run:
        C.write_results(f"{args.out}/slq_steps_term_{device.type}", payload, md, guard)
    return 0


if __name__ == "__main__":
    C.run_main(main)
