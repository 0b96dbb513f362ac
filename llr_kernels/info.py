"""Which backends work on this machine, and why the others do not: ``python -m llr_kernels.info``.

    python -m llr_kernels.info            versions, the C++ extension's state, and per device which backend runs
                                          each op (checking "cpp" loads the extension, building it if needed)
    python -m llr_kernels.info --ext      build the C++ extension now if it is not built, load it, say from where
                                          (exit status 1 when it cannot be had, with the reason)
    python -m llr_kernels.info --status   versions and the extension's state only: builds and loads nothing
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from . import __version__
from .ops import dispatch
from .ops import extension as _ext

# a short name per state of ``ops.extension.status()``; the detail it returns follows in parentheses
EXT_STATES = {
    "loaded": "loaded",
    "aot": "ahead-of-time build (llr_kernels._C)",
    "jit_cached": "JIT build cached",
    "jit_build": "not built yet",
    "unavailable": "unavailable",
}


def devices() -> list[torch.device]:
    """CPU, plus the current CUDA device when there is one."""
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda", torch.cuda.current_device()))
    return out


def backend_table(device: torch.device) -> dict[str, dict[str, str]]:
    """op -> backend -> "ok" or the reason it cannot run on ``device``; plus "auto" -> the chosen backend."""
    table: dict[str, dict[str, str]] = {}
    reasons = {b: dispatch.unavailable_reason(b, device) for b in dispatch.BACKENDS if b != "auto"}
    for op in dispatch.ops():
        row = {}
        for b, why in reasons.items():
            if dispatch.has_impl(op, b):
                row[b] = "ok" if why is None else why
        row["auto"] = dispatch.resolve_backend(op, "auto", device)
        table[op] = row
    return table


def extension_lines() -> list[str]:
    """The C++ extension's state (``llr_kernels.ops.extension.status``), without building or loading it."""
    st = _ext.status()
    return [f"C++ extension: {EXT_STATES.get(st['state'], st['state'])} ({st['detail']})",
            f"  sources: {st['sources']}; JIT cache: {st['cache_dir']} (LLR_KERNELS_CACHE)"]


def build_and_load_lines() -> tuple[bool, list[str]]:
    """Build the extension if needed and load it (``ops.extension.load_extension``): (loaded, report lines)."""
    before = _ext.status()
    if before["state"] == "jit_build":
        print("building the C++ extension (1-3 minutes, once) ...", flush=True)
    t0 = time.perf_counter()
    mod = _ext.load_extension()
    seconds = time.perf_counter() - t0
    if mod is None:
        return False, [f"C++ extension: could not be built or loaded: {_ext.status()['detail']}",
                       "  the 'torch' and 'triton' backends still work; LLR_EXT_VERBOSE=1 shows the compiler output"]
    how = {"loaded": "already loaded in this process", "aot": "the ahead-of-time build",
           "jit_cached": "the cached JIT build", "jit_build": f"built now in {seconds:.0f} s"}.get(before["state"], "")
    cuda = "with CUDA kernels" if getattr(mod, "with_cuda", False) else "CPU kernels only"
    return True, [f"C++ extension: loaded {how}, {cuda}: {getattr(mod, '__file__', mod)}",
                  f"  sources: {before['sources']}; JIT cache: {before['cache_dir']} (LLR_KERNELS_CACHE)"]


def version_lines() -> list[str]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001 - any import failure: report it
        triton_version = f"not importable ({type(exc).__name__})"
    lines = [
        f"llr_kernels {__version__}",
        f"python {platform.python_version()} on {platform.machine()}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton {triton_version}; TRITON_INTERPRET={'1' if dispatch.triton_interpreted() else '0'}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    return lines


def report(backends: bool = True) -> str:
    """The whole report as text; ``backends=False``: versions and the extension's state only (nothing built)."""
    lines = version_lines() + extension_lines()  # before the table: checking the "cpp" backend loads (or builds) it
    if not backends:
        return "\n".join(lines)
    for dev in devices():
        lines.append(f"\n[{dev}]")
        for op, row in backend_table(dev).items():
            auto = row.pop("auto")
            parts = [f"{b}: {v}" for b, v in row.items()]
            lines.append(f"  {op:<14} auto -> {auto:<7} | " + "; ".join(parts))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llr_kernels.info",
                                 description="Versions, the C++ extension, and which backend runs each op here.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--ext", action="store_true",
                      help="build the C++ extension now if needed, load it and say from where (exit 1 if it cannot)")
    mode.add_argument("--status", action="store_true",
                      help="versions and the extension's state only; builds and loads nothing")
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return the status instead of exiting
        return int(exc.code or 0)
    if args.ext:
        ok, lines = build_and_load_lines()
        print("\n".join(version_lines() + lines))
        return 0 if ok else 1
    print(report(backends=not args.status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
