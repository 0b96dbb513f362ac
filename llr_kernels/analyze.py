"""Command line: every weight matrix's alpha and HT-SR metrics of a checkpoint (docs/analysis.md).

    python -m llr_kernels.analyze PATH [--compare OTHER] [--csv F] [--json F] [--plots DIR] ...
    llr-analyze PATH ...                                   (the same, as a console script)

PATH: a .safetensors file, a Hugging Face model folder (sharded: model.safetensors.index.json) or a torch
checkpoint (.pt/.pth/.bin/.ckpt). Exit status 2 with one line on stderr for bad input.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .analysis.loading import CheckpointError
from .analysis.measure import ANALYSIS_METRICS
from .analysis.report import compare
from .analysis.run import DEFAULT_BUDGET, analyze
from .spectral.fits import FIT_METHODS

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)


def parse_bytes(text: str) -> int:
    """'2GiB', '512M', '1e9' -> bytes (k, M, G, T are powers of 1024)."""
    try:
        return int(float(text))
    except ValueError:
        pass
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"memory budget {text!r} is not a size: write e.g. 2GiB, 512M or 1e9")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(unit or "b"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llr-analyze", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a .safetensors file, a Hugging Face model folder or a torch checkpoint")
    p.add_argument("--metrics", default="all",
                   help=f"comma-separated, from {', '.join(ANALYSIS_METRICS)}; or 'all' (default). 'alpha' alone "
                        "takes the fastest path (checked float32 Eq. 2)")
    p.add_argument("--fit", choices=FIT_METHODS, default="ks", help="power-law fit of alpha_fit (default ks)")
    p.add_argument("--layers", default=None, help="regular expression: only matrices whose name it matches")
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda when torch sees a GPU, else cpu), cpu or cuda[:i]: where Grams and "
                        "eigenvalues run; tensors are read on the CPU and moved chunk by chunk")
    p.add_argument("--precision", "--dtype", dest="precision", choices=("auto", "float64"), default="auto",
                   help="auto: float32 Grams where a checked bound keeps every metric within 1e-5 relative of "
                        "float64, float64 elsewhere (default); float64: float64 throughout")
    p.add_argument("--ww-compatible", action="store_true",
                   help="WeightWatcher 0.7.7's conventions: KS fit over tails >= 2 above 1e-5, its entropy, float64")
    p.add_argument("--compare", metavar="OTHER", help="a second checkpoint: per-layer change OTHER - PATH")
    p.add_argument("--memory-budget", type=parse_bytes, default=DEFAULT_BUDGET,
                   help="bytes of matrices and workspaces in memory at once (default 2GiB)")
    p.add_argument("--csv", help="write the per-layer table as CSV here")
    p.add_argument("--json", help="write the per-layer table (and settings) as JSON here")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots here (needs matplotlib)")
    p.add_argument("--esd", action="append", default=[], metavar="NAME",
                   help="plot this layer's ESD with its fitted tail (repeatable; with --plots; default: the "
                        "layers with the smallest and largest alpha)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load torch checkpoints holding Python objects (torch.load weights_only=False): only for "
                        "files you trust")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metrics = ANALYSIS_METRICS if args.metrics == "all" else tuple(m.strip() for m in args.metrics.split(",") if m)
    progress = False if args.no_progress else None
    common = dict(metrics=metrics, fit=args.fit, layers=args.layers, device=args.device, precision=args.precision,
                  ww_compatible=args.ww_compatible, memory_budget=args.memory_budget, progress=progress,
                  trust_pickle=args.trust_pickle)
    try:
        if args.plots and not args.esd:
            keep = True  # the default ESD layers are chosen after measuring
        else:
            keep = args.esd if args.plots else ()
        res = analyze(args.path, keep_spectra=keep, **common)
        other = analyze(args.compare, **common) if args.compare else None
    except (CheckpointError, ValueError) as err:
        print(f"llr-analyze: error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"# {res.source}: {len(res.rows)} matrices ({len(res.skipped)} tensors left out: 1-D, integer or tied)")
        print(res.table())
    cmp_ = None
    if other is not None:
        try:
            cmp_ = compare(res, other)
        except ValueError as err:
            print(f"llr-analyze: error: {err}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(f"\n# change {res.source} -> {other.source} ({len(cmp_.rows)} layers in both)")
            print(cmp_.table())
    if args.csv:
        res.to_csv(args.csv)
        if cmp_ is not None:
            cmp_.to_csv(Path(args.csv).with_suffix(".compare.csv"))
    if args.json:
        res.to_json(args.json)
    if args.plots:
        from .analysis import plots

        written = plots.write_all(res, args.plots, esd=args.esd or None, comparison=cmp_)
        print("\n".join(f"# wrote {p}" for p in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
