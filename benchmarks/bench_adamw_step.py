"""Benchmark: the fused multi-LR AdamW step against torch.optim.AdamW, on LLaMA-shaped parameter sets.

Per model size and per method, one optimizer step over all parameters (grads fixed, state warm), reported as
ms/step and achieved GB/s = (bytes read + written) / time, next to the measured device copy bandwidth.
AdamW moves, per parameter: read p, g, m, v; write p, m, v (28 B with fp32 everything).

Methods:
  ours[<backend>]            the adamw_step op, every tensor with its own LR (what LLRAdamW calls per step)
  llr_adamw[<backend>]       LLRAdamW(s=1).step(), the whole optimizer step including its Python bookkeeping
  torch_fused_1lr            torch.optim.AdamW(fused=True), one LR for everything
  torch_foreach_1lr          torch.optim.AdamW(foreach=True), one LR
  torch_fused_per_layer      fused=True with one param group per tensor (the naive per-layer LR way)
  torch_foreach_per_layer    foreach=True with one param group per tensor

Shapes (LLR paper, Table 8): hidden / intermediate / layers = 768/2048/6 (60M), 768/2048/12 (135M),
1024/2736/24 (350M), 2048/5461/24 (1B); vocab 32000; per block q, k, v, o (h x h), gate, up (i x h), down
(h x i), two RMSNorm vectors; embedding, final RMSNorm and an untied LM head.

    python benchmarks/bench_adamw_step.py --device cpu --models 60M 135M
    python benchmarks/bench_adamw_step.py --device cuda            # all sizes, Triton + CUDA, one call

Results go to benchmarks/results/adamw_step_<device>.{json,md} (with machine, torch and triton versions).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {"60M": (768, 2048, 6), "135M": (768, 2048, 12), "350M": (1024, 2736, 24), "1B": (2048, 5461, 24)}
VOCAB = 32000
BETAS, EPS, WD = (0.9, 0.999), 1e-8, 0.1


def llama_shapes(hidden: int, inter: int, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("model.embed_tokens.weight", (VOCAB, hidden))]
    for i in range(layers):
        pre = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes.append((pre + f"self_attn.{n}.weight", (hidden, hidden)))
        shapes.append((pre + "mlp.gate_proj.weight", (inter, hidden)))
        shapes.append((pre + "mlp.up_proj.weight", (inter, hidden)))
        shapes.append((pre + "mlp.down_proj.weight", (hidden, inter)))
        shapes.append((pre + "input_layernorm.weight", (hidden,)))
        shapes.append((pre + "post_attention_layernorm.weight", (hidden,)))
    shapes.append(("model.norm.weight", (hidden,)))
    shapes.append(("lm_head.weight", (VOCAB, hidden)))
    return shapes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, mib: int) -> float:
    """Measured device copy bandwidth in GB/s (read + write bytes of dst.copy_(src))."""
    n = mib * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    sec = time_fn(lambda: dst.copy_(src), device, 3, 10)
    return 2 * src.numel() * 4 / sec / 1e9


class ParamSet:
    """Parameters with fixed grads for one model size, and the per-tensor LR buffers LLR would maintain."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, state_dtype: torch.dtype):
        self.name, self.device, self.dtype, self.state_dtype = name, device, dtype, state_dtype
        self.named = []
        gen = torch.Generator(device="cpu").manual_seed(0)
        for pname, shape in llama_shapes(*MODELS[name]):
            p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device=device, dtype=dtype))
            p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device=device, dtype=dtype)
            self.named.append((pname, p))
        self.params = [p for _, p in self.named]
        self.numel = sum(p.numel() for p in self.params)
        n = len(self.params)
        self.lrs = torch.linspace(1e-4, 3e-4, n, device=device)  # a distinct LR per tensor
        self.wds = torch.full((n,), WD, device=device)

    def bytes_per_step(self) -> int:
        pe = torch.empty((), dtype=self.dtype).element_size()
        se = torch.empty((), dtype=self.state_dtype).element_size()
        return self.numel * (3 * pe + 4 * se)  # p read+write, g read, m and v read+write


def method_ours(ps: ParamSet, backend: str):
    from llr_kernels.dispatch import get_op

    _, op = get_op("adamw_step", backend, ps.device)
    m = [torch.zeros_like(p, dtype=ps.state_dtype) for p in ps.params]
    v = [torch.zeros_like(p, dtype=ps.state_dtype) for p in ps.params]
    steps = torch.zeros(len(ps.params), device=ps.device)
    grads = [p.grad for p in ps.params]
    params = [p.data for p in ps.params]

    def step():
        op(params, grads, m, v, None, ps.lrs, ps.wds, steps, beta1=BETAS[0], beta2=BETAS[1], eps=EPS)

    return step, (m, v)


def method_llr_adamw(ps: ParamSet, backend: str):
    from llr_kernels import LLRAdamW

    opt = LLRAdamW(ps.named, lr=2e-4, betas=BETAS, eps=EPS, weight_decay=WD, s=1.0, interval=10**9,
                   state_dtype=ps.state_dtype, backend=backend)
    return opt.step, opt


def method_torch(ps: ParamSet, impl: str, per_layer: bool):
    kw = {"fused": True} if impl == "fused" else {"foreach": True}
    if per_layer:
        groups = [{"params": [p], "lr": float(lr)} for p, lr in zip(ps.params, ps.lrs.tolist())]
    else:
        groups = [{"params": ps.params}]
    opt = torch.optim.AdamW(groups, lr=2e-4, betas=BETAS, eps=EPS, weight_decay=WD, **kw)
    return opt.step, opt


def methods_for(device: torch.device, dtype: torch.dtype, backends: list[str]) -> list[tuple[str, Callable]]:
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


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = f"{names[0]} x{len(names)}"
    except OSError:
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def available_backends(device: torch.device, wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    from llr_kernels.dispatch import unavailable_reason

    cands = wanted or (["triton", "cpp"] if device.type == "cuda" else ["cpp"])
    ok, skipped = [], {}
    for b in cands:
        why = unavailable_reason(b, device)
        if why is None:
            ok.append(b)
        else:
            skipped[b] = why
    return ok, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    ap.add_argument("--backends", nargs="+", default=None, help="our backends (default: triton+cpp on cuda, cpp on cpu)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="param dtype (state is fp32)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    models = args.models or (list(MODELS) if device.type == "cuda" else ["60M", "135M"])
    warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 2)
    iters = args.iters if args.iters is not None else (50 if device.type == "cuda" else 7)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    backends, skipped = available_backends(device, args.backends)

    bw = copy_bandwidth(device, 1024 if device.type == "cuda" else 256)
    print(f"device {device}: copy bandwidth {bw:.1f} GB/s; backends {backends}; skipped {skipped}", flush=True)
    results = []
    for model in models:
        ps = ParamSet(model, device, dtype, torch.float32)
        nbytes = ps.bytes_per_step()
        for name, make in methods_for(device, dtype, backends):
            try:
                step, keep = make(ps)
                sec = time_fn(step, device, warmup, iters)
                row = dict(model=model, method=name, params=ps.numel, tensors=len(ps.params), ms=sec * 1e3,
                           gbps=nbytes / sec / 1e9, frac_copy_bw=nbytes / sec / 1e9 / bw)
            except Exception as exc:  # noqa: BLE001 - report and continue with the other methods
                row = dict(model=model, method=name, params=ps.numel, tensors=len(ps.params),
                           error=f"{type(exc).__name__}: {exc}")
            results.append(row)
            print(json.dumps(row), flush=True)
            keep = step = None  # noqa: F841 - free optimizer state before the next method
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del ps
        gc.collect()

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"adamw_step_{device.type}{args.tag}")
    meta = dict(machine_info(device), device=str(device), copy_bandwidth_gbps=bw, param_dtype=args.dtype,
                state_dtype="fp32", warmup=warmup, iters=iters, skipped_backends=skipped,
                bytes_per_param=3 * torch.empty((), dtype=dtype).element_size() + 4 * 4)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(meta, results))
    print(f"wrote {stem}.json and {stem}.md")


def markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"# AdamW step benchmark ({meta['device']})", ""]
    hw = meta.get("gpu") or meta["cpu"]
    lines.append(f"- machine: {hw}; {meta['platform']}; torch {meta['torch']}; triton {meta['triton']}; "
                 f"threads {meta['cpu_threads']}; load average at the end {meta.get('load_avg_1min')}")
    lines.append(f"- measured copy bandwidth: {meta['copy_bandwidth_gbps']:.1f} GB/s; params {meta['param_dtype']}, "
                 f"state {meta['state_dtype']}; median of {meta['iters']} steps after {meta['warmup']} warmup")
    if meta["skipped_backends"]:
        lines.append(f"- skipped backends: {meta['skipped_backends']}")
    lines += ["", "| model | method | ms/step | GB/s | % of copy BW | vs torch_fused_1lr | vs fused per layer |",
              "|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["model"], r["method"]): r for r in results}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | error: {r['error'][:80]} | | | | |")
            continue
        ref1 = by.get((r["model"], "torch_fused_1lr"), {}).get("ms")
        refl = by.get((r["model"], "torch_fused_per_layer"), {}).get("ms")
        s1 = f"{ref1 / r['ms']:.2f}x" if ref1 else ""
        sl = f"{refl / r['ms']:.2f}x" if refl else ""
        lines.append(f"| {r['model']} ({r['params'] / 1e6:.0f}M, {r['tensors']} tensors) | {r['method']} | "
                     f"{r['ms']:.2f} | {r['gbps']:.1f} | {100 * r['frac_copy_bw']:.0f}% | {s1} | {sl} |")
    lines.append("")
    lines.append("Speed-up columns: time of the torch method / time of this row (> 1 means this row is faster).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
