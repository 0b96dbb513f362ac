"""One LLR update (alphas of every weight matrix, then the LR map) across ranks: wall time and extra memory per rank
against world size, for the split update (each rank measures its share; spectral_group="auto") and the
gather-everything way (every rank calls full_tensor() on every matrix and measures all of them).

The weights are LLaMA-shaped FSDP2 shards (row-sharded DTensors on a 1-D gloo mesh), Gaussian, measured as weights
(no total_steps: the weight phase). Per world size, one process group of that many CPU ranks, torch threads per
rank = usable cores // world (at least 1; a world above the core count is oversubscribed and says so). Time: the
slowest rank's wall time of ``update_alphas`` (barrier before), median of --repeats after one warm-up. Memory:
the bytes of whole matrices a rank materialises (split: ``last_split['bytes_held']``; gather-everything: every
matrix), and the growth of the process's peak RSS over the updates (each method in fresh processes).

    python benchmarks/bench_llr_update_dist.py                        # 135M shapes, worlds 1 2 4
    python benchmarks/bench_llr_update_dist.py --dry-run --allow-loaded --out /tmp/x
Writes benchmarks/results/llr_update_dist_cpu.{json,md} (only on a quiet machine, or marked with --allow-loaded).
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = {"split": "auto", "gather-everything": None}  # method -> spectral_group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, shapes: list, threads: int, repeats: int, method: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from llr_kernels import LLRAdamW
    from llr_kernels.dist_exit import exit_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(threads)
    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(0)
    named = []
    for name, shape in shapes:  # every rank draws the same full matrix and keeps its rows
        full = torch.randn(shape, generator=gen)
        named.append((name, torch.nn.Parameter(distribute_tensor(full, mesh, [Shard(0)]))))
        del full
    result = {}
    for method, group in [(method, METHODS[method])]:  # one method per process: comparable peak RSS
        opt = LLRAdamW(named, lr=1e-3, backend="torch", spectral_group=group)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        opt.update_alphas(0)  # warm-up (and the extension's first load)
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            opt.update_alphas(0)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            times.append(float(t))
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
        matrices = sum(int(torch.Size(s).numel()) * 4 for _, s in shapes if len(s) == 2)
        held = opt.last_split["bytes_held"] if opt.last_split else matrices
        result[method] = {"times": times, "bytes_held": held, "rss_growth": rss, "matrix_bytes": matrices,
                          "layers_measured": opt.last_split["layers_measured"] if opt.last_split else len(opt.layers),
                          "alphas": opt.llr.alphas.clone()}
    torch.save(result, f"{out}.{rank}")
    exit_rank()  # barrier, destroy the groups, exit without gloo's finalisation abort (llr_kernels.dist_exit)


def measure(world: int, shapes: list, repeats: int) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // world)
    ranks = [{} for _ in range(world)]
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            out = os.path.join(tmp, method)
            mp.spawn(_rank_main, args=(world, _free_port(), shapes, threads, repeats, method, out), nprocs=world, join=True)
            for r in range(world):
                ranks[r].update(torch.load(f"{out}.{r}", weights_only=True))
    row = {"world": world, "threads_per_rank": threads, "oversubscribed": world * threads > cores}
    for method in METHODS:
        per = [r[method] for r in ranks]
        row[method] = {
            "median_s": statistics.median(per[0]["times"]),
            "times_s": per[0]["times"],
            "bytes_held_max": max(p["bytes_held"] for p in per),
            "rss_growth_max": max(p["rss_growth"] for p in per),
            "layers_measured": [p["layers_measured"] for p in per],
            "matrix_bytes": per[0]["matrix_bytes"],
        }
    a, b = ranks[0]["split"]["alphas"], ranks[0]["gather-everything"]["alphas"]
    row["max_abs_dalpha_split_vs_gather"] = float((a - b).nan_to_num().abs().max())
    return row


def markdown(payload: dict, load: dict) -> str:
    rows = payload["rows"]
    base = {m: rows[0][m]["median_s"] for m in METHODS}
    lines = [f"# One LLR update across ranks (cpu, gloo, {payload['size']} shapes)", "",
             C.machine_line(payload["machine"]), C.load_line(load),
             f"- {payload['matrices']} weight matrices ({payload['matrix_bytes'] / 2**20:.0f} MiB fp32) as FSDP2 row "
             f"shards; median of {payload['repeats']} updates after 1 warm-up; time = slowest rank",
             f"- command: `{payload['command']}`", "",
             "| world | threads/rank | method | s / update | vs world 1 | layers measured per rank | whole matrices held per rank | peak RSS growth per rank |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in METHODS:
            x = r[m]
            lines.append(f"| {r['world']}{' (oversubscribed)' if r['oversubscribed'] else ''} | {r['threads_per_rank']} | {m} | "
                         f"{x['median_s']:.3f} | {base[m] / x['median_s']:.2f}x | {x['layers_measured']} | "
                         f"{x['bytes_held_max'] / 2**20:.0f} MiB | {x['rss_growth_max'] / 2**20:.0f} MiB |")
    lines += ["", "Alphas of the split and the gather-everything update agree to "
              f"{max(r['max_abs_dalpha_split_vs_gather'] for r in rows):.1e} (max |d alpha| over all worlds)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="135m")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N blocks")
    ap.add_argument("--dry-run", action="store_true", help="the 7 matrices of one 60m block, worlds 1 2, 1 repeat")
    ap.add_argument("--allow-loaded", action="store_true")
    ap.add_argument("--out", default=str(C.RESULTS))
    a = ap.parse_args(argv)
    if a.dry_run:
        a.size, a.worlds, a.repeats, a.layers = "60m", [1, 2], 1, 1
    shapes = [(n, s) for n, s in C.llama_params(a.size, a.layers) if len(s) == 2]
    if a.dry_run:  # the block's matrices only: the 32000-row embedding and head dominate a 1-block model
        shapes = [(n, s) for n, s in shapes if ".layers." in n]
    guard = C.LoadGuard("cpu", allow_loaded=a.allow_loaded)
    guard.start()
    rows = [measure(w, shapes, a.repeats) for w in a.worlds]
    last = rows[-1]
    guard.own_runnable = last["world"] * last["threads_per_rank"]  # oversubscribed ranks all count in the load
    load = guard.finish()
    payload = {"machine": C.machine_info("cpu"), "size": a.size, "matrices": len(shapes), "repeats": a.repeats,
               "matrix_bytes": sum(int(torch.Size(s).numel()) * 4 for _, s in shapes),
               "command": " ".join(["python", "benchmarks/bench_llr_update_dist.py", *(argv if argv is not None else sys.argv[1:])]),
               "rows": rows}
    C.write_results(Path(a.out) / "llr_update_dist_cpu", payload, markdown(payload, load), guard)
    print(markdown(payload, load))
    return 0


if __name__ == "__main__":
    C.run_main(main)
