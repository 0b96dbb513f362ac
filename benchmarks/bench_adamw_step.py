"""Benchmark: the fused multi-LR AdamW step against torch.optim.AdamW, on LLaMA-shaped parameter sets.

Per model size, param dtype and method, one optimizer step over all parameters (grads fixed, state warm),
reported as ms/step (median, with p10/p90) and achieved GB/s = (bytes read + written) / time, next to a
memory-bandwidth probe taken in the same process with the same threads (``_common.bandwidth_probe``).
AdamW moves, per parameter: read p, g, m, v; write p, m, v (28 B with fp32 everything, 22 B with bf16 params
and fp32 state).

Methods:
  ours[<backend>]            the adamw_step op, every tensor with its own LR (what LLRAdamW calls per step)
  llr_adamw[<backend>]       LLRAdamW(s=1).step(), the whole optimizer step including its Python bookkeeping
  torch_fused_1lr            torch.optim.AdamW(fused=True), one LR for everything
  torch_foreach_1lr          torch.optim.AdamW(foreach=True), one LR
  torch_fused_per_layer      fused=True with one param group per tensor (the naive per-layer LR way)
  torch_foreach_per_layer    foreach=True with one param group per tensor

Before timing, ours[*] and llr_adamw[*] are checked on the benchmarked tensors: after one warm step, a second
step is compared on the first and last 2048 elements of every tensor with a float64 AdamW step written out
here (p, m, v; fp32 params to ~1e-6 relative, bf16 params to 1 bf16 ulp). A method that fails is not timed.

Shapes (LLR paper, Table 8): hidden / intermediate / layers = 768/2048/6 (60M), 768/2048/12 (135M),
1024/2736/24 (350M), 2048/5461/24 (1B); vocab 32000; per block q, k, v, o (h x h), gate, up (i x h), down
(h x i), two RMSNorm vectors; embedding, final RMSNorm and an untied LM head. ``tiny`` is for dry runs.

    python benchmarks/bench_adamw_step.py --device cpu --models 60M 135M
    python benchmarks/bench_adamw_step.py --device cuda --dtype fp32 bf16      # all sizes, Triton + CUDA
    python benchmarks/bench_adamw_step.py --dry-run --allow-loaded --out /tmp/x # CI: every path, seconds

Results go to benchmarks/results/adamw_step_<device><tag>.{json,md} with the machine and the load average;
on CPU nothing is written when the machine was loaded (see _common.LoadGuard) unless --allow-loaded.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SIZES = ["60m", "135m", "350m", "1b"]
BETAS, EPS, WD = (0.9, 0.999), 1e-8, 0.1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHECK_ELEMS = 2048  # per end of every tensor


class ParamSet:
    """Parameters with fixed grads for one model size, and the per-tensor LR buffers LLR would maintain."""

    def __init__(self, size: str, device: torch.device, dtype: torch.dtype, state_dtype: torch.dtype):
        self.size, self.device, self.dtype, self.state_dtype = size, device, dtype, state_dtype
        gen = torch.Generator(device=device).manual_seed(0)
        self.named = []
        for pname, shape in C.llama_params(size):
            p = torch.nn.Parameter((torch.randn(shape, generator=gen, device=device) * 0.02).to(dtype))
            p.grad = (torch.randn(shape, generator=gen, device=device) * 1e-3).to(dtype)
            self.named.append((pname, p))
        self.params = [p for _, p in self.named]
        self.numel = sum(p.numel() for p in self.params)
        n = len(self.params)
        self.lrs = torch.linspace(1e-4, 3e-4, n, device=device)  # a distinct LR per tensor
        self.wds = torch.full((n,), WD, device=device)

    def bytes_per_step(self, torch_method: bool = False) -> int:
        """Bytes one step moves. torch.optim.AdamW keeps its moments in the param dtype (bf16 state for bf16
        params), so its steps move fewer bytes than ours with fp32 state; GB/s counts what each one moves."""
        pe = torch.empty((), dtype=self.dtype).element_size()
        se = pe if torch_method else torch.empty((), dtype=self.state_dtype).element_size()
        return self.numel * C.adamw_bytes_per_param(pe, se)


# ----- correctness: float64 AdamW on slices of the benchmarked tensors ------------------------------------
def _ends(t: torch.Tensor) -> torch.Tensor:
    f = t.detach().reshape(-1)
    if f.numel() <= 2 * CHECK_ELEMS:
        return f.to("cpu", torch.float64)
    return torch.cat([f[:CHECK_ELEMS], f[-CHECK_ELEMS:]]).to("cpu", torch.float64)


def snapshot(params, grads, ms, vs) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(_ends(x) for x in four) for four in zip(params, grads, ms, vs)]


def adamw_float64(p, g, m, v, lr: float, wd: float, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoupled-weight-decay AdamW step in float64 (Loshchilov & Hutter; torch.optim.AdamW's formula)."""
    p = p * (1 - lr * wd)
    m = BETAS[0] * m + (1 - BETAS[0]) * g
    v = BETAS[1] * v + (1 - BETAS[1]) * g * g
    bc1, bc2 = 1 - BETAS[0] ** step, 1 - BETAS[1] ** step
    p = p - lr / bc1 * m / (v.sqrt() / bc2**0.5 + EPS)
    return p, m, v


def check_step(before, params, ms, vs, lrs: list[float], wds: list[float], steps: list[int],
               param_dtype: torch.dtype, state_dtype: torch.dtype = torch.float32) -> list[dict]:
    """Compare the tensors after a step with float64 AdamW applied to ``before`` (p, m, v on both ends)."""
    exp_p, exp_m, exp_v = [], [], []
    for (p, g, m, v), lr, wd, t in zip(before, lrs, wds, steps):
        a, b, c = adamw_float64(p, g, m, v, lr, wd, t)
        exp_p.append(a.to(param_dtype).double())  # rounded to the param dtype, as the step stores it
        exp_m.append(b)
        exp_v.append(c)
    got_p = torch.cat([_ends(x) for x in params])
    low = param_dtype in (torch.bfloat16, torch.float16)
    # fp32 params: a few fp32 ulps; bf16/fp16 params: one ulp of the param dtype (fp32 math, then one rounding)
    prt = 2.0 ** -7 if param_dtype == torch.bfloat16 else (2.0 ** -10 if low else 1e-6)
    srt = 2.0 ** -8 if state_dtype == torch.bfloat16 else 1e-5  # bf16 state: one rounding of the moments
    return [
        C.check_close("p after step (vs float64 AdamW)", got_p, torch.cat(exp_p), rtol=prt, atol=1e-9),
        C.check_close("exp_avg after step", torch.cat([_ends(x) for x in ms]), torch.cat(exp_m), rtol=srt, atol=1e-12),
        C.check_close("exp_avg_sq after step", torch.cat([_ends(x) for x in vs]), torch.cat(exp_v), rtol=srt, atol=1e-15),
    ]


# ----- methods: each returns (step function, keep-alive objects, correctness records) ---------------------
def method_ours(ps: ParamSet, backend: str):
    from llr_kernels.ops.dispatch import get_op

    _, op = get_op("adamw_step", backend, ps.device)
    m = [torch.zeros_like(p, dtype=ps.state_dtype) for p in ps.params]
    v = [torch.zeros_like(p, dtype=ps.state_dtype) for p in ps.params]
    steps = torch.zeros(len(ps.params), device=ps.device)
    grads = [p.grad for p in ps.params]
    params = [p.data for p in ps.params]

    def step():
        op(params, grads, m, v, None, ps.lrs, ps.wds, steps, beta1=BETAS[0], beta2=BETAS[1], eps=EPS)

    step()  # warm state (m, v nonzero, step 1)
    C.sync(ps.device)
    before = snapshot(params, grads, m, v)
    step()
    C.sync(ps.device)
    checks = check_step(before, params, m, v, ps.lrs.tolist(), ps.wds.tolist(), [2] * len(params), ps.dtype,
                        ps.state_dtype)
    checks.append(C.check_close("step counters", steps, torch.full_like(steps, 2.0), rtol=0, atol=0))
    return step, (m, v), checks


def method_llr_adamw(ps: ParamSet, backend: str):
    from llr_kernels import LLRAdamW

    lr = 2e-4
    opt = LLRAdamW(ps.named, lr=lr, betas=BETAS, eps=EPS, weight_decay=WD, s=1.0, interval=10**9,
                   state_dtype=ps.state_dtype, backend=backend)
    opt.step()
    C.sync(ps.device)
    st = [opt.state[p] for p in ps.params]
    before = snapshot(ps.params, [p.grad for p in ps.params], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st])
    opt.step()
    C.sync(ps.device)
    st = [opt.state[p] for p in ps.params]
    n = len(ps.params)
    checks = check_step(before, ps.params, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [lr] * n,
                        [WD] * n, [2] * n, ps.dtype, ps.state_dtype)
    return opt.step, opt, checks


def method_torch(ps: ParamSet, impl: str, per_layer: bool):
    kw = {"fused": True} if impl == "fused" else {"foreach": True}
    if per_layer:
        groups = [{"params": [p], "lr": float(lr)} for p, lr in zip(ps.params, ps.lrs.tolist())]
    else:
        groups = [{"params": ps.params}]
    opt = torch.optim.AdamW(groups, lr=2e-4, betas=BETAS, eps=EPS, weight_decay=WD, **kw)
    return opt.step, opt, []  # torch.optim is the reference itself


def methods_for(backends: list[str]) -> list[tuple[str, Callable]]:
    out: list[tuple[str, Callable]] = []
    for b in backends:
        out.append((f"ours[{b}]", lambda ps, b=b: method_ours(ps, b)))
    for b in backends:
        out.append((f"llr_adamw[{b}]", lambda ps, b=b: method_llr_adamw(ps, b)))
    out.append(("torch_fused_1lr", lambda ps: method_torch(ps, "fused", False)))
    out.append(("torch_foreach_1lr", lambda ps: method_torch(ps, "foreach", False)))
    out.append(("torch_fused_per_layer", lambda ps: method_torch(ps, "fused", True)))
    out.append(("torch_foreach_per_layer", lambda ps: method_torch(ps, "foreach", True)))
    return out


def available_backends(device: torch.device, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    from llr_kernels.ops.dispatch import triton_interpreted, unavailable_reason

    if wanted:
        cands = wanted
    elif device.type == "cuda":
        cands = ["triton", "cpp"]
    else:
        cands = ["cpp"] + (["triton"] if triton_interpreted() else [])
    ok, skipped = [], {}
    for b in cands:
        why = unavailable_reason(b, device)
        if why is None:
            ok.append(b)
        else:
            skipped[b] = why
    return ok, skipped


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(ps: ParamSet, name: str, dname: str) -> dict:
    return dict(model=ps.size, dtype=dname, method=name, params=ps.numel, tensors=len(ps.params),
                bytes_per_step=ps.bytes_per_step(torch_method=name.startswith("torch_")))


def _prepare(ps: ParamSet, make: Callable, row: dict):
    """Build a method and run its correctness check; (step, keep) or (None, None) with row["error"] set."""
    try:
        step, keep, checks = make(ps)
        row["checks"] = checks
        return step, keep
    except C.CheckFailed as exc:
        row["error"] = f"correctness check failed (not timed): {exc}"
    except Exception as exc:  # noqa: BLE001 - report and continue with the other methods
        row["error"] = f"{type(exc).__name__}: {exc}"
    return None, None


def _finish(row: dict, t: C.Timing, probe: dict) -> None:
    gbps = row["bytes_per_step"] / t.median / 1e9
    row.update(t.as_ms(), gbps=gbps, pct_of_probe=100 * gbps / probe["best_gbps"])


def _print(row: dict) -> None:
    print(json.dumps({k: v for k, v in row.items() if k != "checks"}), flush=True)


def measure_sequential(ps, backends, device, warmup, iters, probe, budget, args) -> list[dict]:
    """One method at a time (its state alone in memory): for large models on a quiet GPU."""
    rows = []
    dname = {v: k for k, v in DTYPES.items()}[ps.dtype]
    for name, make in methods_for(backends):
        row = _row(ps, name, dname)
        rows.append(row)
        if budget.expired():
            row["skipped"] = f"budget of {args.budget_s:g} s used up"
            continue
        step, keep = _prepare(ps, make, row)
        if step is not None:
            try:
                _finish(row, C.time_fn(step, device, warmup, iters), probe)
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"
        _print(row)
        step = keep = None  # noqa: F841 - free optimizer state before the next method
        free(device)
    return rows


def measure_interleaved(ps, backends, device, warmup, iters, probe, budget, args) -> list[dict]:
    """All methods built side by side, timed in rounds (A B C, A B C, ...): ratios immune to drift."""
    rows, fns, keep = [], {}, []
    dname = {v: k for k, v in DTYPES.items()}[ps.dtype]
    for name, make in methods_for(backends):
        row = _row(ps, name, dname)
        rows.append(row)
        if budget.expired():
            row["skipped"] = f"budget of {args.budget_s:g} s used up"
            continue
        step, k = _prepare(ps, make, row)
        if step is not None:
            fns[name] = step
            keep.append(k)
    if fns:
        try:
            timings = C.time_interleaved(fns, device, warmup, iters)
            for row in rows:
                if row["method"] in timings:
                    _finish(row, timings[row["method"]], probe)
        except Exception as exc:  # noqa: BLE001
            for row in rows:
                if row["method"] in fns:
                    row["error"] = f"{type(exc).__name__}: {exc}"
    for row in rows:
        _print(row)
    return rows


def run(args: argparse.Namespace, device: torch.device) -> tuple[dict, list[dict]]:
    sizes = [C.llama_size(m) for m in args.models] if args.models else (
        ["tiny"] if args.dry_run else (SIZES if device.type == "cuda" else ["60m", "135m"]))
    warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else (10 if device.type == "cuda" else 2))
    iters = args.iters if args.iters is not None else (2 if args.dry_run else (50 if device.type == "cuda" else 7))
    budget = C.Budget(args.budget_s)
    backends, skipped = available_backends(device, args.backends)
    probe = C.bandwidth_probe(device, dry_run=args.dry_run)
    free(device)
    print(f"device {device}: bandwidth probe {probe['best_gbps']:.1f} GB/s (triad {probe['triad_gbps']:.1f}, "
          f"axpy {probe['axpy_gbps']:.1f}; {probe['working_set_bytes'] / 2**20:.0f} MiB, {probe['threads']} threads); "
          f"backends {backends}; skipped {skipped}", flush=True)
    results = []
    for dname in args.dtype:
        dtype = DTYPES[dname]
        for size in sizes:
            if budget.expired():
                results.append(dict(model=size, dtype=dname, method="*", skipped=f"budget of {args.budget_s:g} s used up"))
                continue
            ps = ParamSet(size, device, dtype, dtype if args.state == "param" else torch.float32)
            if args.interleave:
                results += measure_interleaved(ps, backends, device, warmup, iters, probe, budget, args)
            else:
                results += measure_sequential(ps, backends, device, warmup, iters, probe, budget, args)
            del ps
            free(device)
    meta = dict(param_dtypes=args.dtype, state_dtype="fp32" if args.state == "fp32" else "the param dtype", warmup=warmup, iters=iters, backends=backends,
                interleaved=args.interleave,
                skipped_backends=skipped, bandwidth_probe=probe, dry_run=args.dry_run, budget_s=args.budget_s,
                bytes_per_param={d: C.adamw_bytes_per_param(DTYPES[d].itemsize, 4 if args.state == "fp32" else DTYPES[d].itemsize)
                                 for d in args.dtype})
    return meta, results


def markdown(meta: dict, machine: dict, load: dict, results: list[dict]) -> str:
    pr = meta["bandwidth_probe"]
    lines = [f"# AdamW step benchmark ({machine['device']})", "", C.machine_line(machine), C.load_line(load),
             f"- bandwidth probe (same process and threads): {pr['best_gbps']:.1f} GB/s best of {pr['repeats']} "
             f"(triad a = b + s*c {pr['triad_gbps']:.1f}, in-place axpy {pr['axpy_gbps']:.1f}; "
             f"{pr['working_set_bytes'] / 2**20:.0f} MiB working set, 2 reads + 1 write counted)",
             f"- params {', '.join(meta['param_dtypes'])}, state {meta['state_dtype']} for ours (torch.optim.AdamW keeps "
             f"state in the param dtype, so its bf16 rows move 14 B/param, counted as such); median of {meta['iters']} steps after "
             f"{meta['warmup']} warmup{', methods interleaved in rounds' if meta['interleaved'] else ', one method at a time'}; "
             f"bytes per param {meta['bytes_per_param']}"]
    if meta["skipped_backends"]:
        lines.append(f"- skipped backends: {meta['skipped_backends']}")
    if meta["dry_run"]:
        lines.append("- DRY RUN (tiny shapes): the numbers are meaningless")
    lines += ["", "| model | dtype | method | ms/step (p10-p90) | GB/s | % of probe | vs torch_fused_1lr | "
              "vs fused per layer | check |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    by = {(r["model"], r["dtype"], r["method"]): r for r in results}
    for r in results:
        label = f"{r['model']} ({r['params'] / 1e6:.0f}M, {r['tensors']} tensors)" if "params" in r else r["model"]
        if "error" in r or "skipped" in r:
            lines.append(f"| {label} | {r['dtype']} | {r['method']} | {r.get('error') or 'skipped: ' + r['skipped']} "
                         "| | | | | |")
            continue
        ref1 = by.get((r["model"], r["dtype"], "torch_fused_1lr"), {}).get("ms")
        refl = by.get((r["model"], r["dtype"], "torch_fused_per_layer"), {}).get("ms")
        s1 = f"{ref1 / r['ms']:.2f}x" if ref1 else ""
        sl = f"{refl / r['ms']:.2f}x" if refl else ""
        chk = "ok" if r.get("checks") else "(reference)"
        lines.append(f"| {label} | {r['dtype']} | {r['method']} | {r['ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f}) | "
                     f"{r['gbps']:.1f} | {r['pct_of_probe']:.0f}% | {s1} | {sl} | {chk} |")
    lines += ["", "Speed-up columns: time of the torch method / time of this row (> 1 means this row is faster). "
              "check: ours and llr_adamw were compared with a float64 AdamW step on the benchmarked tensors first."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=None, help=f"sizes from {', '.join(C.LLAMA)} (case-insensitive)")
    ap.add_argument("--backends", nargs="+", default=None, help="our backends (default: triton+cpp on cuda, cpp on cpu)")
    ap.add_argument("--dtype", nargs="+", default=["fp32"], choices=list(DTYPES), help="param dtype(s)")
    ap.add_argument("--state", choices=("fp32", "param"), default="fp32",
                    help="our optimizer state: fp32 (the default of LLRAdamW) or the param dtype (torch.optim.AdamW's "
                         "choice: the same bytes per step as torch, for a like-for-like bf16 comparison)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--out", default=str(C.RESULTS), help="output folder")
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                    help="time all methods in rounds (A B C, A B C, ...) with every method's state in memory at "
                         "once (default on CPU, where drift is the larger error); --no-interleave: one at a time")
    C.add_common_args(ap)
    args = ap.parse_args()
    device, guard = C.setup_run(args)
    if args.interleave is None:
        args.interleave = device.type == "cpu"
    meta, results = run(args, device)
    load = guard.finish()
    machine = C.machine_info(device)
    payload = {"machine": machine, "command": " ".join(["python", "benchmarks/bench_adamw_step.py", *sys.argv[1:]]),
               "meta": meta, "results": results}
    stem = f"{args.out}/adamw_step_{device.type}{args.tag}"
    written = C.write_results(stem, payload, markdown(meta, machine, load, results), guard)
    failed = [r for r in results if "error" in r]
    return 3 if not written else (1 if failed else 0)


if __name__ == "__main__":
    C.run_main(main)
