"""Peak extra memory per rank of one LLR update, on gloo CPU ranks, for LLaMA shapes scaled down by --scale, under a
tensor-parallel layout (q/k/v/gate/up and the head colwise = Shard(0), o/down rowwise = Shard(1), embedding
Shard(0)) or FSDP2's (every matrix Shard(0)); with estimates for LLaMA-7B and -70B from the same memory model.

Methods, each in fresh processes (one process group per method):
- gather-everything: ``spectral_group=None``, every rank calls full_tensor() on every matrix and measures all of
  them (what TP, HSDP and FSDP x TP did before the split);
- split: each matrix gathered whole onto one owner (``placements.gather_whole``), the default budget;
- split + budget B: the same, measured and freed one chunk at a time under ``spectral_memory_budget=B``.
Peak extra memory: the process's resident set sampled every millisecond by a thread during ``update_alphas``,
minus the resident set just before it (after a warm-up update and glibc's malloc_trim), maximum over ranks. The estimate is
``optim.budget``'s (``last_split['chunk_peak_estimate']``). Projections for 7B / 70B (fp32 weights):
gather-everything holds every matrix plus the largest chunk's work; the split's peak is set by the budget
(at least what the largest matrix alone needs), not by the model size.

    python benchmarks/bench_llr_update_memory.py                      # 7B shapes / 8, 2 and 6 blocks, 2 ranks, tp
    python benchmarks/bench_llr_update_memory.py --dry-run --allow-loaded --out /tmp/x
Writes benchmarks/results/llr_update_memory_cpu.{json,md} (only on a quiet machine, or marked with --allow-loaded).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from llr_kernels.optim.budget import update_bytes

LLAMA_70B = (8192, 28672, 80, 128256)  # hidden, FFN, layers, vocab (Llama-3 70B)
ROWWISE = ("o_proj", "down_proj")  # tensor parallel's Shard(1) matrices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """glibc's malloc_trim(0): freed heap memory back to the OS (else the resident set keeps the warm-up's)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRSS:
    """The largest resident set seen by a sampling thread (1 ms) between start() and stop(), minus the start."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._run = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._run:
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._run = False
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def _rank_main(rank: int, world: int, port: int, shapes: list, layout: str, group, budget, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from llr_kernels import LLRAdamW
    from llr_kernels.dist_exit import exit_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # status warnings of Gaussian weights (no tail)
    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(0)
    named = []
    for name, shape in shapes:
        full = torch.randn(shape, generator=gen)
        dim = 1 if layout == "tp" and any(k in name for k in ROWWISE) else 0
        named.append((name, torch.nn.Parameter(distribute_tensor(full, mesh, [Shard(dim)]))))
        del full
    opt = LLRAdamW(named, lr=1e-3, backend="torch", spectral_group=group, spectral_memory_budget=budget)
    opt.update_alphas(0)  # warm-up: the allocator's and the extension's first use
    _trim()  # hand the warm-up's freed memory back to the OS, so the peak below is this update's
    dist.barrier()
    with PeakRSS() as peak:
        opt.update_alphas(0)
    split = opt.last_split or {}
    torch.save({"extra": peak.extra, "estimate": split.get("chunk_peak_estimate"), "held": split.get("bytes_held"),
                "alphas": opt.llr.alphas.clone()}, f"{out}.{rank}")
    exit_rank()


def run(world: int, shapes: list, layout: str, group, budget) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r")
        mp.spawn(_rank_main, args=(world, _free_port(), shapes, layout, group, budget, out), nprocs=world, join=True)
        per = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    return {"extra_max": max(p["extra"] for p in per), "extra": [p["extra"] for p in per],
            "estimate_max": max((p["estimate"] or 0) for p in per), "held_max": max((p["held"] or 0) for p in per),
            "alphas": per[0]["alphas"]}


def projection(shapes: list, budget: int) -> dict:
    """Projected peak extra bytes per rank (fp32 weights) from the memory model of ``optim.budget``: every whole
    matrix plus the work of the largest (gather-everything), or the budget, at least the largest matrix's need
    (split: independent of the number of ranks and of the model's depth)."""
    mats = [s for _, s in shapes if len(s) == 2]
    weights = sum(s[0] * s[1] * 4 for s in mats)
    largest = max(update_bytes(s, 4, True) for s in mats)
    return {"matrix_bytes": weights, "largest_matrix_need": largest, "gather_everything": weights + largest,
            "split_budget": max(budget, largest)}


def mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def gib(x: float) -> str:
    return f"{x / 2**30:,.1f} GiB"


def markdown(payload: dict, load: dict) -> str:
    lines = [f"# Peak extra memory per rank of one LLR update (cpu, gloo, {payload['world']} ranks, {payload['layout']} layout)",
             "", C.machine_line(payload["machine"]), C.load_line(load),
             f"- shapes: LLaMA-7B's hidden, FFN and vocab sizes / {payload['scale']}, {', '.join(str(x) for x in sorted({r['layers'] for r in payload['rows']}))} blocks; "
             "peak = resident set sampled every 1 ms during update_alphas minus the resident set before (after a "
             "warm-up update and malloc_trim), max over ranks",
             f"- command: `{payload['command']}`", "",
             "| blocks | matrices (fp32) | method | budget | measured peak extra / rank | estimate (optim.budget) | whole matrices held / rank |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['layers']} | {mib(r['matrix_bytes'])} | {r['method']} | {mib(r['budget']) if r['budget'] else 'default'} | {mib(r['extra_max'])} | "
                     f"{mib(r['estimate_max']) if r['estimate_max'] else '-'} | {mib(r['held_max']) if r['held_max'] else 'all'} |")
    lines += ["", "Projected peak extra memory per rank (fp32 weights, the memory model of optim.budget):", "",
              "| model | matrices (fp32) | largest matrix alone | gather-everything | split, 4 GiB budget |",
              "|---|---|---|---|---|"]
    for name, p in payload["projections"].items():
        lines.append(f"| {name} | {gib(p['matrix_bytes'])} | {gib(p['largest_matrix_need'])} | {gib(p['gather_everything'])} | "
                     f"{gib(p['split_budget'])} |")
    lines += ["", f"Alphas of every method agree to {payload['max_dalpha']:.1e} (max |d alpha|)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=8, help="divide LLaMA-7B's hidden, FFN and vocab sizes by this")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 6], help="model depths (blocks) to compare")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--layout", choices=("tp", "fsdp"), default="tp")
    ap.add_argument("--budget-mib", type=float, nargs="+", default=None,
                    help="budgets to run (default: 1x and 3x the largest matrix's need)")
    ap.add_argument("--dry-run", action="store_true", help="7B / 32, 1 layer")
    ap.add_argument("--allow-loaded", action="store_true")
    ap.add_argument("--out", default=str(C.RESULTS))
    a = ap.parse_args(argv)
    if a.dry_run:
        a.scale, a.layers = 32, [1]
    h, f, _, vocab = C.LLAMA["7b"]

    def shapes_of(layers: int) -> list:
        return [(n, s) for n, s in C.llama_shapes(h // a.scale, f // a.scale, layers, vocab // a.scale) if len(s) == 2]

    largest = max(update_bytes(s, 4, True) for _, s in shapes_of(1))
    budgets = [int(b * 2**20) for b in a.budget_mib] if a.budget_mib else [largest, 3 * largest]
    guard = C.LoadGuard("cpu", allow_loaded=a.allow_loaded)
    guard.start()
    rows = []
    for layers in a.layers:
        shapes = shapes_of(layers)
        common = {"layers": layers, "matrix_bytes": sum(s[0] * s[1] * 4 for _, s in shapes)}
        rows += [{"method": "gather-everything", "budget": None, **common, **run(a.world, shapes, a.layout, None, None)},
                 {"method": "split", "budget": None, **common, **run(a.world, shapes, a.layout, "auto", None)}]
        rows += [{"method": "split + budget", "budget": b, **common, **run(a.world, shapes, a.layout, "auto", b)}
                 for b in budgets]
    guard.own_runnable = a.world
    load = guard.finish()
    ref = {r["layers"]: r["alphas"] for r in rows if r["method"] == "gather-everything"}
    dalpha = max(float((r["alphas"] - ref[r["layers"]]).nan_to_num().abs().max()) for r in rows)
    for r in rows:
        del r["alphas"]
    projections = {"LLaMA-7B": projection(C.llama_params("7b"), 4 << 30),
                   "LLaMA-70B": projection(C.llama_shapes(*LLAMA_70B), 4 << 30)}
    payload = {"machine": C.machine_info("cpu"), "world": a.world, "layout": a.layout, "scale": a.scale,
               "command": " ".join(["python", "benchmarks/bench_llr_update_memory.py", *(argv if argv is not None else sys.argv[1:])]),
               "rows": rows, "projections": projections, "max_dalpha": dalpha}
    C.write_results(Path(a.out) / "llr_update_memory_cpu", payload, markdown(payload, load), guard)
    print(markdown(payload, load))
    return 0


if __name__ == "__main__":
    C.run_main(main)
