"""Spectral overhead of one LLR update (PL_Alpha_Hill of every weight matrix) at LLaMA layer shapes.

Compares (a) the public code's way (fp32 ``torch.linalg.svdvals`` one matrix at a time, then Eq. 2),
(b) batched exact (``hill_alpha_fast(method="exact")``: grouped Gram + batched eigvalsh + one Hill launch),
(c) ours fast (``method="lanczos"``, SLQ, 32 probes x 128 steps by default): time per update, alpha error
of (c) against (b), the jackknife error estimate, peak extra memory, and the update's cost as a percentage
of 500 training steps. The step time is an assumption stated in the output: 6 * params * tokens flops per
step (tokens = 512 x 256, the paper's C4 recipe) at the device's matmul rate (measured fp32 GEMM rate on
CPU; 40% of 989 TFLOP/s bf16 on an H100/H200-class GPU).

Weights are synthetic with heavy-tailed spectra (Gaussian times power-law column scales, tail index drawn
in [2, 6] per matrix), so alphas look like trained LLaMA layers (2..6) without a checkpoint.

    python benchmarks/spectral_overhead.py                       # CPU: LLaMA-60M and 135M shapes
    python benchmarks/spectral_overhead.py --device cuda --all   # H200: 60M .. 7B
Writes benchmarks/results/spectral_overhead_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llr_kernels.spectral.fast import hill_alpha_fast  # noqa: E402
from llr_kernels.spectral.gram_torch import tf32_round  # noqa: E402
from llr_kernels.spectral.hill import hill_alpha, hill_from_eigenvalues  # noqa: E402

VOCAB = 32000
MODELS = {  # hidden, intermediate, layers (paper Table 8; 7B: LLaMA-7B)
    "llama-60m": (768, 2048, 6),
    "llama-135m": (768, 2048, 12),
    "llama-350m": (1024, 2736, 24),
    "llama-1b": (2048, 5461, 24),
    "llama-7b": (4096, 11008, 32),
}
CPU_MODELS = ("llama-60m", "llama-135m")
TOKENS_PER_STEP = 512 * 256


def shapes(model: str) -> list[tuple[int, int]]:
    h, f, layers = MODELS[model]
    per_layer = [(h, h)] * 4 + [(f, h), (f, h), (h, f)]  # q, k, v, o, gate, up, down
    return per_layer * layers + [(VOCAB, h)]  # + embedding


def make_weights(model: str, device: torch.device, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i, (r, c) in enumerate(shapes(model)):
        tail = 2.0 + 4.0 * ((i * 0.618034) % 1.0)
        w = torch.randn(r, c, generator=g, device=device)
        u = torch.rand(min(r, c), generator=g, device=device).clamp_min(1e-6)
        scale = u.pow(-1.0 / (2 * (tail - 1)))  # squared scales: Pareto tail of index ~ tail
        if r <= c:
            w[:, : r] *= scale  # heavy-tailed directions on the short side
        else:
            w *= scale
        out.append((w / math.sqrt(max(r, c))).to(dtype))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int):
    if device.type == "cuda":
        fn()  # warm-up (compiles Triton kernels); on CPU the runs are long enough not to need it
        sync(device)
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def public_way(mats: list[torch.Tensor]) -> torch.Tensor:
    """Per-matrix fp32 svdvals loop, as the public LLR code does (then Eq. 2 on each)."""
    alphas = []
    for w in mats:
        s = torch.linalg.svdvals(w.float())
        alphas.append(float(hill_from_eigenvalues(torch.sort(s.square()).values).alpha[0]))
    return torch.tensor(alphas, dtype=torch.float64)


def matmul_rate(device: torch.device) -> float:
    """Achieved fp32 GEMM flop rate on this device (CPU) or an assumed bf16 training rate (GPU)."""
    if device.type == "cuda":
        return 0.4 * 989e12
    a = torch.randn(1024, 1024)
    t, _ = timed(lambda: a @ a, device, 3)
    return 2 * 1024**3 / t


def tf32_study(device: torch.device, seed: int) -> dict:
    """Alpha change from TF32 Gram formation, emulated by rounding weights to TF32 (float64 Hill)."""
    mats = [w.double() for w in make_weights("llama-60m", torch.device("cpu"), torch.float32, seed)[:7]]
    a = hill_alpha(mats)
    b = hill_alpha([tf32_round(w).double() for w in mats])
    rel = (b / a - 1).abs()
    return {"matrices": "LLaMA-60M layer 0 (q,k,v,o,gate,up,down), synthetic", "max_rel": float(rel.max()),
            "mean_rel": float(rel.mean())}


def run(args) -> dict:
    device = torch.device(args.device)
    models = list(MODELS) if args.all else list(CPU_MODELS if device.type == "cpu" else MODELS)
    if args.models:
        models = args.models.split(",")
    rate = matmul_rate(device)
    rows = []
    for model in models:
        mats = make_weights(model, device, getattr(torch, args.dtype), args.seed)
        nparams = sum(r * c for r, c in shapes(model))
        step_s = 6 * nparams * TOKENS_PER_STEP / rate
        row = {"model": model, "matrices": len(mats), "params": nparams, "assumed_step_s": step_s}
        print(f"[{model}] {len(mats)} matrices, {nparams / 1e6:.0f}M params", flush=True)
        if not args.skip_public:
            row["public_s"], _ = timed(lambda: public_way(mats), device, 1 if device.type == "cpu" else args.repeats)
            print(f"  public loop  {row['public_s']:.3f}s", flush=True)
        rep_e: dict = {}
        row["exact_s"], ex = timed(lambda: hill_alpha_fast(mats, method="exact", report=rep_e), device,
                                   1 if device.type == "cpu" else args.repeats)
        print(f"  batched exact {row['exact_s']:.3f}s", flush=True)
        rep_f: dict = {}
        row["fast_s"], fa = timed(
            lambda: hill_alpha_fast(mats, method="lanczos", probes=args.probes, steps=args.steps, report=rep_f),
            device, 1 if device.type == "cpu" else args.repeats)
        rel = (fa.alpha / ex.alpha - 1).abs()
        row.update(
            alpha_rel_rms=float(rel.square().mean().sqrt()), alpha_rel_max=float(rel.max()),
            stderr_rel_mean=float((rep_f["stderr"] / fa.alpha).mean()),
            alpha_range=[float(ex.alpha.min()), float(ex.alpha.max())],
            fast_peak_extra_bytes_est=rep_f["peak_extra_bytes_est"], fast_peak_extra_bytes=rep_f["peak_extra_bytes"],
            exact_peak_extra_bytes_est=rep_e["peak_extra_bytes_est"], exact_peak_extra_bytes=rep_e["peak_extra_bytes"],
            fast_chunks=rep_f["chunks"], exact_chunks=rep_e["chunks"],
        )
        for k in ("public_s", "exact_s", "fast_s"):
            if k in row:
                row[k.replace("_s", "_pct_of_500_steps")] = 100 * row[k] / (500 * step_s)
        print(f"  fast (SLQ)   {row['fast_s']:.3f}s  alpha err rms {row['alpha_rel_rms']:.4f} "
              f"max {row['alpha_rel_max']:.4f}", flush=True)
        rows.append(row)
        del mats
    return {
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads)",
        "torch": torch.__version__, "triton": _triton_version(), "dtype": args.dtype,
        "probes": args.probes, "steps": args.steps, "matmul_rate_flops": rate, "tokens_per_step": TOKENS_PER_STEP,
        "tf32": tf32_study(device, args.seed), "rows": rows,
    }


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:  # noqa: BLE001
        return None


def markdown(res: dict) -> str:
    lines = [
        f"# Spectral overhead per LLR update ({res['device']})",
        "",
        f"machine `{res['machine']}`, torch {res['torch']}, triton {res['triton']}, weights {res['dtype']}, "
        f"SLQ {res['probes']} probes x {res['steps']} steps. Step time assumed: 6 x params x {res['tokens_per_step']} "
        f"tokens at {res['matmul_rate_flops'] / 1e9:.0f} GFLOP/s.",
        "",
        "| model | mats | (a) public svdvals loop | (b) batched exact | (c) SLQ | (a)/(c) | alpha err (c) vs (b) rms / max "
        "| jackknife se | (c) % of 500 steps | (b) % of 500 steps | (c) peak extra MiB (est / meas) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        pub = f"{r['public_s']:.3f} s" if "public_s" in r else "-"
        ratio = f"{r['public_s'] / r['fast_s']:.1f}x" if "public_s" in r else "-"
        meas = "-" if r["fast_peak_extra_bytes"] is None else f"{r['fast_peak_extra_bytes'] / 2**20:.0f}"
        lines.append(
            f"| {r['model']} | {r['matrices']} | {pub} | {r['exact_s']:.3f} s | {r['fast_s']:.3f} s | {ratio} | "
            f"{100 * r['alpha_rel_rms']:.2f}% / {100 * r['alpha_rel_max']:.2f}% | {100 * r['stderr_rel_mean']:.2f}% | "
            f"{r['fast_pct_of_500_steps']:.3f}% | {r['exact_pct_of_500_steps']:.3f}% | "
            f"{r['fast_peak_extra_bytes_est'] / 2**20:.0f} / {meas} |"
        )
    t = res["tf32"]
    lines += ["", f"TF32 Gram (emulated: weights rounded to TF32, float64 Hill; {t['matrices']}): alpha change "
              f"max {100 * t['max_rel']:.4f}%, mean {100 * t['mean_rel']:.4f}%."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--all", action="store_true", help="every model size (60M .. 7B)")
    p.add_argument("--models", default="", help="comma-separated subset of " + ",".join(MODELS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--probes", type=int, default=32)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-public", action="store_true", help="skip (a) (slow at 7B)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    res = run(args)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"spectral_overhead_{torch.device(args.device).type}")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
