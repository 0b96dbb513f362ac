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

Newton-Schulz throughput: useful flops of the batched NS (5 * (4 s^2 l + 2 s^3) per s x l matrix) over its
time, against a measured bf16 GEMM rate at the largest matrix size.

    python benchmarks/bench_muon.py                       # CPU, 135M shapes (2 layers, see --layers)
    python benchmarks/bench_muon.py --device cuda --sizes 135m,1b --layers 0
Writes benchmarks/results/muon_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llr_kernels import LLRMuon  # noqa: E402
from llr_kernels.ops.newton_schulz import newton_schulz  # noqa: E402

SIZES = {  # d_model, n_layers, SwiGLU width, vocab
    "135m": (768, 12, 2048, 32000),
    "1b": (2048, 24, 5461, 32000),
}


def named_params(size: str, layers: int, device: str) -> list[tuple[str, torch.Tensor]]:
    d, n_layers, ff, vocab = SIZES[size]
    n_layers = n_layers if layers <= 0 else min(layers, n_layers)
    shapes = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (d,))]
        shapes += [(p + f"self_attn.{k}_proj.weight", (d, d)) for k in "qkvo"]
        shapes += [(p + "post_attention_layernorm.weight", (d,))]
        shapes += [(p + "mlp.gate_proj.weight", (ff, d)), (p + "mlp.up_proj.weight", (ff, d)), (p + "mlp.down_proj.weight", (d, ff))]
    shapes += [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for name, shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=g) * 1e-3).to(device)
        out.append((name, p))
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: str, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def is_muon(name: str, p: torch.Tensor) -> bool:
    return p.dim() == 2 and "embed" not in name and "lm_head" not in name


def make_optimizers(kind: str, params: list[tuple[str, torch.Tensor]], device: str, lr: float, adamw_lr: float):
    fused = {"fused": True} if device == "cuda" else {"foreach": True}
    muon = [p for n, p in params if is_muon(n, p)]
    rest = [p for n, p in params if not is_muon(n, p)]
    if kind == "llr_muon":
        opt = LLRMuon(params, lr=lr, adamw_lr=adamw_lr, weight_decay=0.1, s=2.0, interval=10**9)
        opt.step()  # step 0 measures alphas (excluded from the timing) and builds the plan
        return [opt]
    if kind == "torch_muon":
        return [torch.optim.Muon(muon, lr=lr, weight_decay=0.1), torch.optim.AdamW(rest, lr=adamw_lr, weight_decay=0.1, **fused)]
    if kind == "per_tensor":
        return [
            torch.optim.Muon([{"params": [p], "lr": lr} for p in muon], lr=lr, weight_decay=0.1),
            torch.optim.AdamW([{"params": [p], "lr": adamw_lr} for p in rest], lr=adamw_lr, weight_decay=0.1, **fused),
        ]
    raise ValueError(kind)


def ns_flops(shapes: list[tuple[int, int]], steps: int = 5) -> float:
    total = 0.0
    for m, n in shapes:
        s, l = min(m, n), max(m, n)
        total += steps * (4 * s * s * l + 2 * s ** 3)
    return total


def bench_size(size: str, args) -> dict:
    device = args.device
    params = named_params(size, args.layers, device)
    n_params = sum(p.numel() for _, p in params)
    res: dict = {"size": size, "params": n_params, "matrices": sum(is_muon(n, p) for n, p in params), "step_ms": {}}
    for kind in ("llr_muon", "torch_muon", "per_tensor"):
        if kind not in args.impls:
            continue
        opts = make_optimizers(kind, params, device, 0.02, 1e-3)

        def step():
            for o in opts:
                o.step()

        res["step_ms"][kind] = 1e3 * time_fn(step, device, args.warmup, args.iters)
        del opts
    if "llr_muon" in res["step_ms"] and "torch_muon" in res["step_ms"]:
        res["speedup_vs_torch_muon"] = res["step_ms"]["torch_muon"] / res["step_ms"]["llr_muon"]
    if "llr_muon" in res["step_ms"] and "per_tensor" in res["step_ms"]:
        res["speedup_vs_per_tensor"] = res["step_ms"]["per_tensor"] / res["step_ms"]["llr_muon"]

    # Newton-Schulz alone: one batch per shape bucket, as LLRMuon does
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for n, p in params:
        if is_muon(n, p):
            buckets.setdefault(tuple(p.shape), []).append(p.grad)
    batches = [torch.stack(gs).bfloat16() for gs in buckets.values()]
    outs = [torch.empty_like(b) for b in batches]

    def ns():
        for b, o in zip(batches, outs):
            newton_schulz(b, out=o)

    t_ns = time_fn(ns, device, args.warmup, args.iters)
    shapes = [tuple(p.shape) for n, p in params if is_muon(n, p)]
    res["ns_ms"] = 1e3 * t_ns
    res["ns_tflops"] = ns_flops(shapes) / t_ns / 1e12
    # reference bf16 GEMM rate at the biggest bucket's Gram-side size
    m, n = max(buckets, key=lambda s: s[0] * s[1])
    s_, l_ = min(m, n), max(m, n)
    a = torch.randn(s_, l_, device=device).bfloat16()
    b = torch.randn(l_, s_, device=device).bfloat16()
    t_mm = time_fn(lambda: a @ b, device, args.warmup, args.iters)
    res["bf16_matmul_tflops"] = 2 * s_ * s_ * l_ / t_mm / 1e12
    res["ns_fraction_of_matmul_rate"] = res["ns_tflops"] / res["bf16_matmul_tflops"]
    return res


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def write_md(path: Path, payload: dict) -> None:
    lines = [f"# LLRMuon step benchmark ({payload['device']})", "", "Machine: " + json.dumps(payload["machine"]), "",
             f"Layers benchmarked: {payload['args']['layers'] or 'all'}; median of {payload['args']['iters']} steps.", "",
             "| size | params | Muon matrices | LLRMuon ms | torch.optim.Muon+AdamW ms | per-tensor loop ms | speedup vs torch | speedup vs per-tensor | NS TFLOP/s | bf16 matmul TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["results"]:
        st = r["step_ms"]
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['matrices']} | {st.get('llr_muon', float('nan')):.1f} | "
            f"{st.get('torch_muon', float('nan')):.1f} | {st.get('per_tensor', float('nan')):.1f} | "
            f"{r.get('speedup_vs_torch_muon', float('nan')):.2f}x | {r.get('speedup_vs_per_tensor', float('nan')):.2f}x | "
            f"{r['ns_tflops']:.3f} | {r['bf16_matmul_tflops']:.3f} |"
        )
    if payload.get("note"):
        lines += ["", payload["note"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="135m")
    ap.add_argument("--layers", type=int, default=None, help="transformer blocks to include (0 = all; CPU default 2)")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--impls", default="llr_muon,torch_muon,per_tensor")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/muon_<device>)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    args.layers = (2 if cpu else 0) if args.layers is None else args.layers
    args.iters = (3 if cpu else 20) if args.iters is None else args.iters
    args.warmup = (1 if cpu else 5) if args.warmup is None else args.warmup
    args.impls = args.impls.split(",")
    results = []
    for size in args.sizes.split(","):
        r = bench_size(size, args)
        print(json.dumps(r), flush=True)
        results.append(r)
    payload = {"device": args.device, "machine": machine(), "args": vars(args), "results": results, "note": args.note}
    stem = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"muon_{args.device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    write_md(stem.with_suffix(".md"), payload)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
