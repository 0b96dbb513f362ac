"""LLRMuon step time vs torch.optim.Muon (+ AdamW) vs a per-tensor loop, and Newton-Schulz throughput.

Parameters have LLaMA shapes (paper Table 8 / 1B: d_model, layers, SwiGLU width, vocab 32000), with random
gradients; no model runs. Three ways to do the same math (bf16 Newton-Schulz, 5 quintic steps, Nesterov,
AdamW for embedding / head / norms):

* ``llr_muon``    LLRMuon (s = 2, multipliers fixed between LLR updates; the alpha measurement is excluded:
                  it runs every 500 steps and is benchmarked in benchmarks/spectral_overhead.py);
* ``torch_muon``  torch.optim.Muon on the matrices + torch.optim.AdamW (fused on CUDA, foreach on CPU) on the
                  rest, one LR each (the uniform baseline);
* ``per_tensor``  what the public LLR code would need: one param group per layer (its own LR) in
                  torch.optim.Muon and torch.optim.AdamW.

Before timing, LLRMuon with s = 1 (equal math) and torch.optim.Muon + AdamW take two steps (new gradients at
the second) from the same copies of the benchmarked shapes (block 0, embedding, norms, head); each tensor's update must match
(relative Frobenius error <= 3e-2 for Muon matrices, bf16 Newton-Schulz; <= 1e-5 for the AdamW part).

Newton-Schulz throughput: useful flops of the batched NS (5 * (4 s^2 l + 2 s^3) per s x l matrix) over its
time, against a measured bf16 GEMM rate at the largest matrix size.

    python benchmarks/bench_muon.py                       # CPU, 135M shapes (2 layers, see --layers)
    python benchmarks/bench_muon.py --device cuda --sizes 135m,1b --layers 0
    python benchmarks/bench_muon.py --dry-run --allow-loaded --out /tmp/x/muon_cpu
Writes benchmarks/results/muon_<device>.{json,md} (on CPU only when the machine was quiet, or marked
"LOADED: not valid" with --allow-loaded).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

IMPLS = ("llr_muon", "torch_muon", "per_tensor")
LR, ADAMW_LR, WD = 0.02, 1e-3, 0.1


def named_params(size: str, layers: int, device: torch.device, seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for name, shape in C.llama_params(size, layers):
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device) * 0.02)
        p.grad = torch.randn(shape, generator=gen, device=device) * 1e-3
        out.append((name, p))
    return out


def is_muon(name: str, p: torch.Tensor) -> bool:
    return p.dim() == 2 and "embed" not in name and "lm_head" not in name


def make_optimizers(kind: str, params: list[tuple[str, torch.Tensor]], device: torch.device, s: float = 2.0):
    from llr_kernels import LLRMuon

    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    muon = [p for n, p in params if is_muon(n, p)]
    rest = [p for n, p in params if not is_muon(n, p)]
    if kind == "llr_muon":
        opt = LLRMuon(params, lr=LR, adamw_lr=ADAMW_LR, weight_decay=WD, s=s, interval=10**9)
        return [opt]
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.optim.Muon (added in torch 2.9)")
    if kind == "torch_muon":
        return [torch.optim.Muon(muon, lr=LR, weight_decay=WD), torch.optim.AdamW(rest, lr=ADAMW_LR, weight_decay=WD, **fused)]
    if kind == "per_tensor":
        return [
            torch.optim.Muon([{"params": [p], "lr": LR} for p in muon], lr=LR, weight_decay=WD),
            torch.optim.AdamW([{"params": [p], "lr": ADAMW_LR} for p in rest], lr=ADAMW_LR, weight_decay=WD, **fused),
        ]
    raise ValueError(kind)


def clone_params(params):
    out = []
    for n, p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append((n, q))
    return out


def correctness(size: str, device: torch.device) -> list[dict]:
    """LLRMuon(s=1) vs torch.optim.Muon + AdamW: two steps on block 0 + embedding/norms/head shapes."""
    base = named_params(size, 1, device, seed=1)
    ours, ref = clone_params(base), clone_params(base)
    opt_ours = make_optimizers("llr_muon", ours, device, s=1.0)
    opt_ref = make_optimizers("torch_muon", ref, device)
    gen = torch.Generator(device=device).manual_seed(2)
    for step in range(2):
        if step:  # new gradients, so that momentum and Nesterov matter (with fixed ones NS erases them)
            for (_, a), (_, b) in zip(ours, ref):
                a.grad = torch.randn(a.shape, generator=gen, device=device) * 1e-3
                b.grad = a.grad.clone()
        for o in opt_ours + opt_ref:
            o.step()
    C.sync(device)
    recs = []
    for (name, p0), (_, a), (_, b) in zip(base, ours, ref):
        # bf16 Newton-Schulz, batched here and per matrix in torch: GEMM rounding may differ by bf16 ulps;
        # a wrong LR, shape ratio, momentum or a missing weight decay (~5% of the update here) is larger
        tol = 3e-2 if is_muon(name, p0) else 1e-5
        recs.append(C.check_rel_norm(f"update of {name} {tuple(p0.shape)} vs torch.optim", a.detach() - p0.detach(),
                                     b.detach() - p0.detach(), tol=tol))
    return recs


def ns_flops(shapes: list[tuple[int, int]], steps: int = 5) -> float:
    total = 0.0
    for m, n in shapes:
        short, long_ = min(m, n), max(m, n)
        total += steps * (4 * short * short * long_ + 2 * short ** 3)
    return total


def bench_size(size: str, args, device: torch.device, budget: C.Budget) -> dict:
    params = named_params(size, args.layers, device)
    n_params = sum(p.numel() for _, p in params)
    res: dict = {"size": size, "params": n_params, "matrices": sum(is_muon(n, p) for n, p in params), "step": {}}
    try:
        res["checks"] = correctness(size, device)
    except C.CheckFailed as exc:
        res["error"] = f"correctness check failed (not timed): {exc}"
        return res
    for kind in args.impls:
        if budget.expired():
            res["step"][kind] = {"skipped": f"budget of {args.budget_s:g} s used up"}
            continue
        try:
            opts = make_optimizers(kind, params, device)
            if kind == "llr_muon":
                opts[0].step()  # step 0 measures alphas (excluded from the timing) and builds the plan

            def step():
                for o in opts:
                    o.step()

            res["step"][kind] = C.time_fn(step, device, args.warmup, args.iters).as_ms()
        except Exception as exc:  # noqa: BLE001 - report and continue
            res["step"][kind] = {"error": f"{type(exc).__name__}: {exc}"}
        opts = None
        gc.collect()
    ms = {k: v["ms"] for k, v in res["step"].items() if "ms" in v}
    if "llr_muon" in ms and "torch_muon" in ms:
        res["speedup_vs_torch_muon"] = ms["torch_muon"] / ms["llr_muon"]
    if "llr_muon" in ms and "per_tensor" in ms:
        res["speedup_vs_per_tensor"] = ms["per_tensor"] / ms["llr_muon"]
    if budget.expired():
        return res

    # Newton-Schulz alone: one batch per shape bucket, as LLRMuon does
    from llr_kernels.ops.dispatch import get_op

    _, ns = get_op("newton_schulz", "auto", device)
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for n, p in params:
        if is_muon(n, p):
            buckets.setdefault(tuple(p.shape), []).append(p.grad)
    batches = [torch.stack(gs).bfloat16() for gs in buckets.values()]
    outs = [torch.empty_like(b) for b in batches]

    def run_ns():
        for b, o in zip(batches, outs):
            ns(b, out=o)

    t_ns = C.time_fn(run_ns, device, args.warmup, args.iters)
    shapes = [tuple(p.shape) for n, p in params if is_muon(n, p)]
    res["ns"] = t_ns.as_ms()
    res["ns_tflops"] = ns_flops(shapes) / t_ns.median / 1e12
    m, n = max(buckets, key=lambda s: s[0] * s[1])
    s_, l_ = min(m, n), max(m, n)
    a = torch.randn(s_, l_, device=device).bfloat16()
    b = torch.randn(l_, s_, device=device).bfloat16()
    t_mm = C.time_fn(lambda: a @ b, device, args.warmup, args.iters)
    res["bf16_matmul_tflops"] = 2 * s_ * s_ * l_ / t_mm.median / 1e12
    res["ns_fraction_of_matmul_rate"] = res["ns_tflops"] / res["bf16_matmul_tflops"]
    return res


def markdown(payload: dict, load: dict) -> str:
    a = payload["args"]
    lines = [f"# LLRMuon step benchmark ({payload['machine']['device']})", "", C.machine_line(payload["machine"]),
             C.load_line(load),
             f"- blocks benchmarked: {a['layers'] or 'all'}; median of {a['iters']} steps after {a['warmup']} warmup; "
             "checked first: LLRMuon(s=1) vs torch.optim.Muon + AdamW, two steps on the benchmarked shapes"]
    if a["dry_run"]:
        lines.append("- DRY RUN (tiny shapes): the numbers are meaningless")
    lines += ["", "| size | params | Muon matrices | LLRMuon ms | torch.optim.Muon+AdamW ms | per-tensor loop ms | "
              "speedup vs torch | speedup vs per-tensor | NS TFLOP/s | bf16 matmul TFLOP/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, k: str) -> str:
        v = r["step"].get(k, {})
        return f"{v['ms']:.2f} ({v['p10_ms']:.2f}-{v['p90_ms']:.2f})" if "ms" in v else (v.get("error") or v.get("skipped") or "-")

    def num(r: dict, k: str, fmt: str) -> str:
        return format(r[k], fmt) if k in r else "-"

    for r in payload["results"]:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['matrices']} | {r['error']} |")
            continue
        lines.append(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['matrices']} | {cell(r, 'llr_muon')} | "
                     f"{cell(r, 'torch_muon')} | {cell(r, 'per_tensor')} | {num(r, 'speedup_vs_torch_muon', '.2f')}x | "
                     f"{num(r, 'speedup_vs_per_tensor', '.2f')}x | {num(r, 'ns_tflops', '.3f')} | "
                     f"{num(r, 'bf16_matmul_tflops', '.3f')} |")
    if payload.get("note"):
        lines += ["", payload["note"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default=None, help="comma list of " + ",".join(C.LLAMA) + " (default 135m; tiny in --dry-run)")
    ap.add_argument("--layers", type=int, default=None, help="transformer blocks to include (0 = all; CPU default 2)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/muon_<device>)")
    ap.add_argument("--note", default="")
    C.add_common_args(ap)
    args = ap.parse_args()
    device, guard = C.setup_run(args)
    cpu = device.type == "cpu"
    args.sizes = args.sizes or ("tiny" if args.dry_run else "135m")
    args.layers = (2 if cpu else 0) if args.layers is None else args.layers
    args.iters = (2 if args.dry_run else (3 if cpu else 20)) if args.iters is None else args.iters
    args.warmup = (1 if (cpu or args.dry_run) else 5) if args.warmup is None else args.warmup
    args.impls = [k for k in args.impls.split(",") if k]
    if any(k not in IMPLS for k in args.impls):
        raise SystemExit(f"--impls: choose from {IMPLS}, got {args.impls}")
    budget = C.Budget(args.budget_s)
    results = []
    for size in args.sizes.split(","):
        size = C.llama_size(size)
        if budget.expired():
            results.append({"size": size, "params": 0, "matrices": 0, "error": f"skipped: budget of {args.budget_s:g} s used up"})
            continue
        try:
            r = bench_size(size, args, device, budget)
        except Exception as exc:  # noqa: BLE001 - report and continue
            r = {"size": size, "params": 0, "matrices": 0, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({k: v for k, v in r.items() if k != "checks"}), flush=True)
        results.append(r)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    load = guard.finish()
    payload = {"machine": C.machine_info(device), "command": " ".join(["python", "benchmarks/bench_muon.py", *sys.argv[1:]]),
               "args": vars(args), "results": results, "note": args.note}
    stem = Path(args.out) if args.out else C.RESULTS / f"muon_{device.type}"
    written = C.write_results(stem, payload, markdown(payload, load), guard)
    failed = any("error" in r or any("error" in v for v in r.get("step", {}).values()) for r in results)
    return 3 if not written else (1 if failed else 0)


if __name__ == "__main__":
    C.run_main(main)
