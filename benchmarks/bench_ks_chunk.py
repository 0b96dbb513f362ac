#!/usr/bin/env python3
"""How the KS fit's chunk size (``fits.DEFAULT_CHUNK_ELEMS``) sets its speed: the same fits, side by side.

``fit_power_law(eigs, "ks")`` forms the KS distance of every xmin candidate in chunks of at most ``chunk_elems``
float64 elements per temporary. Timed interleaved (median of --iters) for several chunk sizes on sorted
heavy-tailed ESDs of the shapes checkpoint analysis meets (a LLaMA-135M set, MiniLM, 4096-wide matrices); every
chunk size must give the same alphas, xmins and distances (checked: exactly equal).

    python benchmarks/bench_ks_chunk.py [--threads 2]
Writes benchmarks/results/ks_chunk_<device>.{json,md} (on CPU only when the machine was quiet).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

import torch

import _common as C
from llr_kernels.spectral.fits import DEFAULT_CHUNK_ELEMS, fit_power_law

SETS = {"60 x n=576": (60, 576), "39 x n=384": (39, 384), "4 x n=4096": (4, 4096)}
CHUNKS = (1 << 22, 1 << 20, 1 << 19, 1 << 18, 1 << 16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=str(C.RESULTS))
    C.add_common_args(ap)
    args = ap.parse_args()
    sets = {"4 x n=96": (4, 96)} if args.dry_run else SETS
    if args.dry_run:
        args.iters = 2
    device, guard = C.setup_run(args)
    gen = torch.Generator().manual_seed(0)
    payload: dict[str, Any] = {"device": device.type, "machine": C.machine_info(device), "args": vars(args),
                               "default_chunk_elems": DEFAULT_CHUNK_ELEMS, "sets": {}}
    for label, (b, n) in sets.items():
        eigs = torch.sort(torch.rand(b, n, generator=gen, dtype=torch.float64) ** -1.5, -1).values.to(device)
        fns = {str(c): (lambda c=c, e=eigs: fit_power_law(e, "ks", chunk_elems=c)) for c in CHUNKS}
        ref = fit_power_law(eigs, "ks", chunk_elems=CHUNKS[0])
        for c in CHUNKS:
            got = fit_power_law(eigs, "ks", chunk_elems=c)
            for a, r in zip(got, ref):
                if not torch.equal(a.nan_to_num(), r.nan_to_num()):
                    raise SystemExit(f"chunk_elems={c} changed the fit on {label}: a chunk size must not")
        t = C.time_interleaved(fns, device, warmup=1, iters=args.iters)
        payload["sets"][label] = {k: asdict(v) for k, v in t.items()}
    payload["load"] = guard.finish()
    lines = [f"# KS fit: chunk size vs time ({device.type})", "", C.machine_line(payload["machine"]),
             C.load_line(payload["load"]),
             (f"- median of {args.iters} interleaved runs after a warm-up; float64 ESDs u^-1.5 sorted (seed 0); "
              f"every chunk size gave identical fits; default now {DEFAULT_CHUNK_ELEMS}"),
             f"- command: `python benchmarks/bench_ks_chunk.py{'' if args.threads is None else f' --threads {args.threads}'}`",
             "", "| ESDs | " + " | ".join(f"chunk 2^{c.bit_length() - 1}" for c in CHUNKS) + " |",
             "|---|" + "---|" * len(CHUNKS)]
    for label, t in payload["sets"].items():
        base = t[str(CHUNKS[0])]["median"]
        lines.append(f"| {label} | " + " | ".join(
            f"{t[str(c)]['median'] * 1e3:.1f} ms ({base / t[str(c)]['median']:.1f}x)" for c in CHUNKS) + " |")
    md = "\n".join(lines) + "\n\nRatios are to the largest chunk (2^22, the old default), in the same run.\n"
    print(md)
    if not args.dry_run:
        C.write_results(f"{args.out}/ks_chunk_{device.type}", payload, md, guard)
    return 0


if __name__ == "__main__":
    C.run_main(main)
