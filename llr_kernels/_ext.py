"""Build and load the C++/CUDA extension compiled from ``csrc/`` (see csrc/README.md).

Resolution order, on first use (never at package import):

1. ``llr_kernels._C``, if ``setup.py`` built it (``LLR_BUILD_EXT=1 pip install --no-build-isolation -e .``)
   from the sources now in ``csrc/`` (it records their digest; a build from other sources is not used);
2. a JIT build of every ``csrc/*.cpp`` (plus ``csrc/*.cu`` when torch has CUDA and nvcc is found) into one
   module with ``torch.utils.cpp_extension.load`` and ninja, cached under ``$LLR_KERNELS_CACHE`` or
   ``~/.cache/llr_kernels``, in one directory per torch version / Python / CUDA flavour and per digest of the
   source contents (headers included) and build flags: another checkout or an edited source gets its own build,
   never a stale one. Only the first run pays the compile (about a minute on 2 cores, announced by one line
   on stderr); later runs load the cached .so.

If neither works, :func:`unavailable_reason` says why, a single warning is emitted, and every op keeps
working through its "torch" (and "triton") backends. ``LLR_DISABLE_EXT=1`` turns the extension off.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import threading
import warnings
from types import ModuleType

import torch

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_NAME = "llr_kernels_C"
_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False
_warned = False


def sources(with_cuda: bool) -> list[str]:
    """Every source the module is built from: csrc/*.cpp, and csrc/*.cu when building with CUDA."""
    srcs = sorted(glob.glob(os.path.join(_CSRC, "*.cpp")))
    if with_cuda:
        srcs += sorted(glob.glob(os.path.join(_CSRC, "*.cu")))
    return srcs


def cuda_build_possible() -> bool:
    """True when torch has CUDA and an nvcc (CUDA_HOME) is available to compile the .cu sources."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def _base_flags(with_cuda: bool) -> dict[str, list[str]]:
    # Portable flags only (the cache may be shared by machines with different CPUs): no -march=native.
    # csrc/adamw_cpu.cpp compiles its hot loops for AVX2 / AVX-512 itself and picks one at run time.
    cflags = ["-O3", "-fno-math-errno", "-fopenmp"]
    nvcc = ["-O3"]
    if with_cuda:
        cflags.append("-DLLR_WITH_CUDA")
        nvcc.append("-DLLR_WITH_CUDA")
    return {"extra_cflags": cflags, "extra_cuda_cflags": nvcc, "extra_ldflags": ["-fopenmp"]}


def source_digest(with_cuda: bool) -> str:
    """Hex digest of what the module is built from: the contents of every csrc source and header (.cu/.cuh only
    when building with CUDA) and the build flags. None of the inputs depends on the checkout's path or mtimes."""
    h = hashlib.sha256()
    exts = ("*.cpp", "*.h", "*.hpp") + (("*.cu", "*.cuh") if with_cuda else ())
    files = sorted({f for e in exts for f in glob.glob(os.path.join(_CSRC, e))})
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        h.update(f"{os.path.basename(f)}\0{len(data)}\0".encode())
        h.update(data)
    h.update(json.dumps(_base_flags(with_cuda), sort_keys=True).encode())
    return h.hexdigest()[:16]


def build_flags(with_cuda: bool) -> dict[str, list[str]]:
    """Compiler / linker flags shared by the JIT build and setup.py (the C++ flags carry the source digest,
    which bindings.cpp exposes as ``source_digest`` so a stale ahead-of-time build can be recognised)."""
    flags = _base_flags(with_cuda)
    flags["extra_cflags"] = flags["extra_cflags"] + [f"-DLLR_SOURCE_DIGEST=d{source_digest(with_cuda)}"]
    return flags


def cache_dir(with_cuda: bool) -> str:
    """Build directory of the JIT module: per torch version, Python version, CUDA flavour and source digest."""
    root = os.environ.get("LLR_KERNELS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llr_kernels")
    flavour = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{flavour}"
    tag = tag.replace("+", "_")
    return os.path.join(root, tag, source_digest(with_cuda))


def _jit_build() -> ModuleType:
    from torch.utils.cpp_extension import load

    with_cuda = cuda_build_possible()
    srcs = sources(with_cuda)
    if not srcs:
        raise RuntimeError(f"no C++ sources found under {_CSRC}")
    build_dir = cache_dir(with_cuda)
    os.makedirs(build_dir, exist_ok=True)
    name = f"{_NAME}_{source_digest(with_cuda)}"
    if not os.path.exists(os.path.join(build_dir, f"{name}.so")):
        sys.stderr.write(f"llr_kernels: building the C++{'/CUDA' if with_cuda else ''} extension (about a minute, "
                         f"once; cached in {build_dir})\n")
        sys.stderr.flush()
    return load(
        name=name,
        sources=srcs,
        build_directory=build_dir,
        with_cuda=with_cuda,
        verbose=os.environ.get("LLR_EXT_VERBOSE", "0") == "1",
        **build_flags(with_cuda),
    )


def _prebuilt() -> ModuleType | None:
    """``llr_kernels._C`` if setup.py built it from the sources now in csrc/ (or csrc/ is not shipped)."""
    try:
        from llr_kernels import _C  # type: ignore[attr-defined]  # built by setup.py
    except ImportError:
        return None
    with_cuda = bool(getattr(_C, "with_cuda", False))
    if not sources(with_cuda):
        return _C  # an installed package without csrc/: nothing to compare against
    want = f"d{source_digest(with_cuda)}"
    if getattr(_C, "source_digest", None) != want:
        warnings.warn(
            f"llr_kernels: the ahead-of-time build llr_kernels._C ({_C.__file__}) was built from other sources than "
            f"{_CSRC}; using a JIT build instead. Rebuild it with `LLR_BUILD_EXT=1 pip install --no-build-isolation "
            "-e .` (or delete it).",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return _C


def load_extension() -> ModuleType | None:
    """The extension module, building it on first call; None (and one warning) if it cannot be had."""
    global _module, _error, _tried, _warned
    with _lock:
        if not _tried:
            _tried = True
            if os.environ.get("LLR_DISABLE_EXT", "0") == "1":
                _error = "disabled by LLR_DISABLE_EXT=1"
            else:
                _module = _prebuilt()
                if _module is None:
                    try:
                        _module = _jit_build()
                    except Exception as exc:  # noqa: BLE001 - any build failure means "unavailable"
                        msg = str(exc).strip().splitlines()
                        _error = f"building it failed ({type(exc).__name__}: {msg[-1] if msg else ''})"
        if _module is None and not _warned:
            _warned = True
            warnings.warn(
                f"llr_kernels: the C++/CUDA extension is unavailable: {_error}. The 'torch' and 'triton' "
                "backends still work; set LLR_EXT_VERBOSE=1 to see the compiler output.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _module


def unavailable_reason(device: torch.device) -> str | None:
    """None if the extension can run ops on ``device``; otherwise why not (builds the extension on first call)."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return f"the C++ extension supports cpu and cuda devices, not {device.type}"
    mod = load_extension()
    if mod is None:
        return f"the C++ extension is unavailable: {_error}"
    if device.type == "cuda" and not getattr(mod, "with_cuda", False):
        return "the C++ extension was built without CUDA (no CUDA torch or no nvcc at build time)"
    return None
