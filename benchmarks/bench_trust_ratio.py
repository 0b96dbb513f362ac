"""Step time of LAMB and LARS (llr_kernels.optim.trust_ratio) next to torch.optim.AdamW and SGD, on CPU.

One step of each optimizer over a LLaMA-like set of tensors (~20M parameters: hidden 512, SwiGLU 1376, 5 blocks,
vocab 4096, untied head, RMSNorm vectors; random weights and gradients, no model runs), all in one process,
timed interleaved in rounds (A B C ..., A B C ...) so machine drift hits every method alike:

* ``lamb_foreach`` / ``lamb_loop``     LAMB, batched path / per-tensor loop (weight decay 0.01);
* ``lars_foreach`` / ``lars_loop``     LARS, batched path / per-tensor loop (momentum 0.9, weight decay 1e-4);
                                       (the loop is what ``foreach=None`` picks for CPU tensors);
* ``adamw_foreach`` / ``adamw_fused``  torch.optim.AdamW(foreach=True) / (fused=True, when this torch has it on CPU);
* ``sgd_foreach``                      torch.optim.SGD(momentum=0.9, foreach=True).

Ratios are time / time of the baseline (> 1: slower than the baseline): LAMB against AdamW (same moments, plus
two norms per tensor and the trust-ratio scaling), LARS against momentum SGD. Before timing, the batched and the
loop path take one step from the same weights and must agree bitwise.

Load: the 1-minute load average is polled every 30 s until it is < 1 (at most ``--max-wait-s``, default 600 s);
if it never drops the benchmark runs anyway and the results file says so, with the load.

    python benchmarks/bench_trust_ratio.py                 # writes benchmarks/results/trust_ratio_cpu.md
    python benchmarks/bench_trust_ratio.py --iters 5 --max-wait-s 0 --out /tmp/x.md    # quick look
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from llr_kernels.optim.trust_ratio import LAMB, LARS  # noqa: E402

HIDDEN, FFN, BLOCKS, VOCAB = 512, 1376, 5, 4096


def fused_adamw_on_cpu() -> str | None:
    """None when torch.optim.AdamW(fused=True) steps CPU tensors here, else why not."""
    try:
        p = torch.zeros(4, requires_grad=True)
        p.grad = torch.ones(4)
        torch.optim.AdamW([p], fused=True).step()
        return None
    except Exception as exc:  # noqa: BLE001 - reported in the results
        return f"{type(exc).__name__}: {exc}"


def wait_for_quiet(max_wait_s: float, poll_s: float = 30.0) -> tuple[float, float, bool]:
    """Poll the 1-minute load every ``poll_s`` until < 1 or ``max_wait_s`` passed: (waited s, load, quiet)."""
    t0 = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - t0
        if load < C.MAX_LOAD:
            return waited, load, True
        if waited + poll_s > max_wait_s:
            return waited, load, False
        print(f"1-min load {load:.2f} >= {C.MAX_LOAD:g}; waiting ({waited:.0f} s of {max_wait_s:.0f} s)", flush=True)
        time.sleep(poll_s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20, help="timed rounds (every method once per round)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--max-wait-s", type=float, default=600.0, help="longest wait for a 1-min load < 1")
    ap.add_argument("--out", type=Path, default=C.RESULTS / "trust_ratio_cpu.md")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], C.ROOT)] + sys.argv[1:])

    waited, load_seen, quiet = wait_for_quiet(args.max_wait_s)
    loadavg_start = Path("/proc/loadavg").read_text().strip()
    machine = C.machine_info("cpu")

    gen = torch.Generator().manual_seed(0)
    shapes = C.llama_shapes(HIDDEN, FFN, BLOCKS, VOCAB)
    init = [torch.randn(s, generator=gen) * 0.02 for _, s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for _, s in shapes]  # shared: no optimizer here writes grads
    n_params = sum(t.numel() for t in init)

    def params() -> list[torch.Tensor]:
        out = []
        for w, g in zip(init, grads):
            p = w.clone().requires_grad_(True)
            p.grad = g
            out.append(p)
        return out

    fused_missing = fused_adamw_on_cpu()
    makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "lamb_foreach": lambda ps: LAMB(ps, lr=1e-3, weight_decay=0.01, foreach=True),
        "lamb_loop": lambda ps: LAMB(ps, lr=1e-3, weight_decay=0.01, foreach=False),
        "lars_foreach": lambda ps: LARS(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True),
        "lars_loop": lambda ps: LARS(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False),
        "adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=True),
        "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True),
    }
    if fused_missing is None:
        makers["adamw_fused"] = lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True)
    sets = {name: params() for name in makers}
    opts = {name: make(sets[name]) for name, make in makers.items()}

    # batched and loop paths: one step from the same weights, bitwise equal
    for a, b in (("lamb_foreach", "lamb_loop"), ("lars_foreach", "lars_loop")):
        opts[a].step()
        opts[b].step()
        same = all(torch.equal(x, y) for x, y in zip(sets[a], sets[b]))
        if not same:
            raise SystemExit(f"{a} and {b} differ after one step: not timing")

    t0 = time.perf_counter()
    times = C.time_interleaved({k: o.step for k, o in opts.items()}, torch.device("cpu"), args.warmup, args.iters)
    bench_s = time.perf_counter() - t0
    loadavg_end = Path("/proc/loadavg").read_text().strip()

    ms = {k: t.median * 1e3 for k, t in times.items()}
    base = {"AdamW foreach": "adamw_foreach", "AdamW fused": "adamw_fused", "SGD foreach": "sgd_foreach"}
    base = {label: k for label, k in base.items() if k in ms}
    lines = [
        "# LAMB / LARS step time vs torch.optim.AdamW / SGD (cpu)",
        "",
        f"- command: `{command}`",
        f"- machine: {machine['cpu']} ({machine['cpu_cores_usable']} usable cores); {machine['os']}; python {machine['python']}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
        f"- `cat /proc/loadavg` at start: `{loadavg_start}`; at end: `{loadavg_end}`",
        ("- load: 1-min load {:.2f} < 1 after waiting {:.0f} s (polled every 30 s)".format(load_seen, waited) if quiet else
         "- **load: the 1-min load never dropped below 1 in {:.0f} s of polling (last {:.2f}); measured anyway, on a "
         "loaded machine: ratios are less reliable**".format(waited, load_seen)),
        f"- tensors: {len(shapes)} LLaMA-like tensors, {n_params / 1e6:.1f}M fp32 params (hidden {HIDDEN}, SwiGLU {FFN}, "
        f"{BLOCKS} blocks, vocab {VOCAB}, untied head); median of {args.iters} interleaved rounds after {args.warmup} "
        f"warmup; timing took {bench_s:.0f} s",
        "- fused AdamW on CPU: " + ("yes" if fused_missing is None else f"not available ({fused_missing})"),
        "- check: LAMB and LARS batched (foreach) vs loop paths bitwise equal after one step: ok",
        "",
        "| method | ms/step (p10-p90) | " + " | ".join(f"x {label}" for label in base) + " |",
        "|---|---:|" + "---:|" * len(base),
    ]
    for k, t in times.items():
        ratios = " | ".join(f"{ms[k] / ms[b]:.2f}" for b in base.values())
        lines.append(f"| {k} | {ms[k]:.2f} ({t.p10 * 1e3:.2f}-{t.p90 * 1e3:.2f}) | {ratios} |")
    summary = []
    for path in ("foreach", "loop"):
        summary.append(f"LAMB ({path}) / AdamW (foreach) = {ms[f'lamb_{path}'] / ms['adamw_foreach']:.2f}")
        if "adamw_fused" in ms:
            summary.append(f"LAMB ({path}) / AdamW (fused) = {ms[f'lamb_{path}'] / ms['adamw_fused']:.2f}")
        summary.append(f"LARS ({path}) / SGD momentum (foreach) = {ms[f'lars_{path}'] / ms['sgd_foreach']:.2f}")
    lines += ["", "Ratios: time of the row / time of the column's method (> 1: slower). The loop rows are the CPU "
              "default (``foreach=None``): each tensor stays in cache through all its passes, where a foreach op "
              "streams every tensor through memory once per op.", "", *[f"- {x}" for x in summary], ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
