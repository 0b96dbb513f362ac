"""Build and load the C++/CUDA extension compiled from ``llr_kernels/csrc/`` (see its README.md).

The sources are package data: a source checkout, an sdist and every wheel carry them, so the JIT path works
wherever the package is installed. Resolution order, on first use (never at package import):

1. ``llr_kernels._C``, if ``setup.py`` built it (``LLR_BUILD_EXT=1 pip install --no-build-isolation .`` or
   ``LLR_BUILD_EXT=1 pip wheel --no-build-isolation .``, a platform wheel) from the sources now in ``csrc/``
   (it records their digest; a build from other sources is not used);
2. a JIT build of every ``csrc/*.cpp`` (plus ``csrc/*.cu`` when torch has CUDA and nvcc is found) into one
   module with ``torch.utils.cpp_extension.load`` and ninja, cached under ``$LLR_KERNELS_CACHE`` or
   ``~/.cache/llr_kernels``, in one directory per torch version / Python / CUDA flavour and per digest of the
   source contents (headers included) and build flags: another checkout or an edited source gets its own build,
   never a stale one, and an installed copy of the same sources reuses the build. Only the first run pays the
   compile (about a minute on 2 cores, announced by one line on stderr); later runs import the cached .so.

If neither works, :func:`unavailable_reason` says why, a single warning is emitted, and every op keeps
working through its "torch" (and "triton") backends. ``LLR_DISABLE_EXT=1`` turns the extension off.
:func:`status` says which of these applies without building anything (``python -m llr_kernels.info``).
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sys
import threading
import warnings
from types import ModuleType

import torch

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")  # llr_kernels/csrc: package data
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


def _module_name(with_cuda: bool) -> str:
    return f"{_NAME}_{source_digest(with_cuda)}"


def _built_path(with_cuda: bool) -> str:
    """Where the JIT build of the current sources is (or will be)."""
    return os.path.join(cache_dir(with_cuda), _module_name(with_cuda) + ".so")


def _import_built(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jit_build() -> ModuleType:
    from torch.utils.cpp_extension import load

    with_cuda = cuda_build_possible()
    srcs = sources(with_cuda)
    if not srcs:
        raise RuntimeError(f"no C++ sources found under {_CSRC}")
    build_dir = cache_dir(with_cuda)
    name, built = _module_name(with_cuda), _built_path(with_cuda)
    if os.path.exists(built):
        # The name carries the digest of the sources' contents and the flags: this .so was built from exactly
        # these sources, wherever they live (checkout or installed package). Importing it directly skips ninja,
        # which would rebuild everything for sources at another path.
        try:
            return _import_built(name, built)
        except ImportError:
            pass  # e.g. a build interrupted while linking: rebuild below
    os.makedirs(build_dir, exist_ok=True)
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


def _check_prebuilt() -> tuple[ModuleType | None, str]:
    """(``llr_kernels._C`` if usable else None, a one-line description), without warning."""
    try:
        from llr_kernels import _C  # type: ignore[attr-defined]  # built by setup.py
    except ImportError as exc:
        return None, f"no ahead-of-time build ({exc})"
    with_cuda = bool(getattr(_C, "with_cuda", False))
    if not sources(with_cuda):
        return _C, f"{_C.__file__} (no sources shipped to compare with)"
    if getattr(_C, "source_digest", None) != f"d{source_digest(with_cuda)}":
        return None, f"{_C.__file__} was built from other sources than {_CSRC} (stale)"
    return _C, f"{_C.__file__}{' with CUDA' if with_cuda else ' (CPU only)'}"


def _prebuilt() -> ModuleType | None:
    """``llr_kernels._C`` if setup.py built it from the sources now in csrc/ (or csrc/ is not shipped)."""
    mod, what = _check_prebuilt()
    if mod is None and "(stale)" in what:
        warnings.warn(
            f"llr_kernels: the ahead-of-time build {what.replace(' (stale)', '')}; using a JIT build instead. "
            "Rebuild it with `LLR_BUILD_EXT=1 pip install --no-build-isolation .` (or delete it).",
            RuntimeWarning,
            stacklevel=4,
        )
    return mod


def _compiler_missing() -> str | None:
    """Why a JIT build cannot start here (no C++ compiler or no ninja), or None."""
    import shutil

    from torch.utils.cpp_extension import is_ninja_available

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} not on PATH; set CXX)"
    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def status() -> dict[str, str]:
    """Which extension the "cpp" backend would use, without building or loading anything new.

    "state" is one of: "loaded" (already in this process), "aot" (``llr_kernels._C``), "jit_cached" (a JIT
    build of these sources is in the cache), "jit_build" (the first use will compile, about a minute),
    "unavailable" (and why); "detail" says more, "cache_dir" is the JIT directory, "sources" the csrc/ used.
    """
    with_cuda = cuda_build_possible()
    out = {"cache_dir": cache_dir(with_cuda), "sources": _CSRC}
    if _module is not None:
        return {**out, "state": "loaded", "detail": getattr(_module, "__file__", _NAME)}
    if _tried:
        return {**out, "state": "unavailable", "detail": str(_error)}
    if os.environ.get("LLR_DISABLE_EXT", "0") == "1":
        return {**out, "state": "unavailable", "detail": "disabled by LLR_DISABLE_EXT=1"}
    mod, what = _check_prebuilt()
    if mod is not None:
        return {**out, "state": "aot", "detail": what}
    aot_note = "" if what.startswith("no ahead-of-time") else f"; ahead-of-time build not used: {what}"
    if not sources(with_cuda):
        return {**out, "state": "unavailable", "detail": f"no C++ sources under {_CSRC}{aot_note}"}
    if os.path.exists(_built_path(with_cuda)):
        return {**out, "state": "jit_cached", "detail": _built_path(with_cuda) + aot_note}
    why = _compiler_missing()
    if why is not None:
        return {**out, "state": "unavailable", "detail": f"not built yet and cannot build: {why}{aot_note}"}
    flavour = "C++/CUDA" if with_cuda else "C++ (CPU)"
    return {**out, "state": "jit_build", "detail": f"the first use builds the {flavour} extension (1-3 minutes, "
                                                  f"once) into {out['cache_dir']}{aot_note}"}


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


def require(device: torch.device | str = "cpu") -> ModuleType:
    """The extension module for the "cpp" ops; RuntimeError saying why when it cannot be had."""
    mod = load_extension()
    if mod is None:
        raise RuntimeError(f"backend='cpp' is unavailable: {unavailable_reason(torch.device(device))}")
    return mod


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
