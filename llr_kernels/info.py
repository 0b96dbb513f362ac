"""Which backends work on this machine, and why the others do not: ``python -m llr_kernels.info``.

Prints the versions that matter, the state of the C++ extension (ahead-of-time ``_C``, JIT build cached, JIT
would build, or unavailable and why; the sources and the cache directory), then for every device present and
every op of the dispatch table which backends can run it (or the reason they cannot) and what
``backend="auto"`` picks. Checking the "cpp" backend loads the C++ extension, building it first if it is not
cached yet; ``--ext`` prints the versions and the extension's state only, never building anything.
"""
from __future__ import annotations

import platform
import sys

import torch

from . import __version__
from .ops import dispatch
from .ops import extension as _ext

EXT_STATES = {
    "loaded": "loaded",
    "aot": "ahead-of-time build (llr_kernels._C)",
    "jit_cached": "JIT build cached",
    "jit_build": "not built yet: the first use builds it",
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


def report(backends: bool = True) -> str:
    """The whole report as text; ``backends=False``: versions and the extension's state only."""
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
    lines += extension_lines()  # before the table: checking the "cpp" backend loads (or builds) it
    if not backends:
        return "\n".join(lines)
    for dev in devices():
        lines.append(f"\n[{dev}]")
        for op, row in backend_table(dev).items():
            auto = row.pop("auto")
            parts = [f"{b}: {v}" for b, v in row.items()]
            lines.append(f"  {op:<14} auto -> {auto:<7} | " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a not in ("--ext",) for a in argv):
        print("usage: python -m llr_kernels.info [--ext]   (--ext: the C++ extension's state only, no build)")
        return 2
    print(report(backends="--ext" not in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
