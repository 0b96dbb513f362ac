"""The one place where an op's implementation is chosen: Triton, the C++/CUDA extension, or pure torch.

Every op has a pure-torch implementation that always works. ``backend="auto"`` picks the fastest one that is
available for the tensors' device; an explicit backend that cannot run raises ValueError saying why.
Implementations are named as "module:function" and imported lazily, so importing the package never pulls in
Triton or builds the extension.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Callable

import torch

BACKENDS = ("auto", "triton", "cpp", "torch")

# op -> backend -> "module:function". Kernel modules add their entries here, nowhere else.
_OPS: dict[str, dict[str, str]] = {
    "adamw_step": {
        "torch": "llr_kernels.ops.adamw.naive:adamw_step_torch",
        "triton": "llr_kernels.ops.adamw.triton:adamw_step_triton",
        "cpp": "llr_kernels.ops.adamw.cpp:adamw_step_cpp",
    },
    # Muon (issue: LLRMuon); see llr_kernels/ops/muon/naive.py for the contract
    "muon_momentum": {
        "torch": "llr_kernels.ops.muon.naive:muon_momentum_torch",
        "triton": "llr_kernels.ops.muon.triton:muon_momentum_triton",
    },
    "muon_apply": {
        "torch": "llr_kernels.ops.muon.naive:muon_apply_torch",
        "triton": "llr_kernels.ops.muon.triton:muon_apply_triton",
    },
    "newton_schulz": {
        "torch": "llr_kernels.ops.muon.newton_schulz:newton_schulz",
    },
    # spectral: used by llr_kernels/spectral (exact, slq)
    "gram": {
        "torch": "llr_kernels.ops.gram.naive:gram_batch_torch",
        "triton": "llr_kernels.ops.gram.triton:gram_batch_triton",
    },
    "hill_eigs": {
        "torch": "llr_kernels.ops.hill.naive:hill_eigs_torch",
        "triton": "llr_kernels.ops.hill.triton:hill_eigs_triton",
    },
    "hill_nodes": {
        "torch": "llr_kernels.ops.hill.naive:slq_hill_torch",
        "triton": "llr_kernels.ops.hill.triton:hill_nodes_triton",
    },
    "lanczos": {
        "torch": "llr_kernels.ops.lanczos.naive:lanczos_torch",
    },
    "tridiag_eig": {
        "torch": "llr_kernels.ops.eig.naive:tridiag_eig_torch",
        "cpp": "llr_kernels.ops.eig.cpp:tridiag_eig_cpp",
    },
    "gram_eigvalsh": {
        "torch": "llr_kernels.ops.eig.naive:gram_eigvalsh_torch",
        "cpp": "llr_kernels.ops.eig.cpp:gram_eigvalsh_cpp",
    },
    "eigvalsh": {
        "torch": "llr_kernels.ops.eig.naive:eigvalsh_batch_torch",
        "cpp": "llr_kernels.ops.eig.cpp:eigvalsh_cpp",
    },
}

# Preference order of "auto", per device type. The Triton interpreter is never chosen automatically. On CPU
# every C++ op is faster than its torch path (measured on the 2-core dev machine: adamw_step about 7x on
# LLaMA-135M shapes, tridiag_eig 3-200x); tests/ops/test_dispatch.py checks that "auto" follows this order.
_AUTO_ORDER = {"cuda": ("triton", "cpp", "torch"), "cpu": ("cpp", "torch")}


def validate_backend(backend: str) -> str:
    """Check a user-given backend name early (at optimizer construction)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if ``backend`` can run on ``device``; otherwise a sentence saying why not."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not triton_importable():
            return "triton is not installed (pip install triton, on Linux x86-64)"
        if device.type != "cuda" and not triton_interpreted():
            return f"Triton kernels need a CUDA device (got {device.type}); set TRITON_INTERPRET=1 to run them on CPU"
        return None
    if backend == "cpp":
        from . import extension as _ext

        return _ext.unavailable_reason(device)
    return f"unknown backend {backend!r}; choose one of {BACKENDS}"


def ops() -> list[str]:
    """Every op of the dispatch table."""
    return list(_OPS)


def has_impl(op: str, backend: str) -> bool:
    """True if ``op`` has an implementation for the concrete ``backend`` (available or not)."""
    return backend in _OPS.get(op, {})


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """Concrete backend for ``op`` on ``device``: the requested one, or the best available for "auto"."""
    validate_backend(backend)
    impls = _OPS.get(op)
    if impls is None:
        raise KeyError(f"unknown op {op!r}; known ops: {sorted(_OPS)}")
    if backend == "auto":
        for cand in _AUTO_ORDER.get(device.type, ("torch",)):
            if cand in impls and unavailable_reason(cand, device) is None:
                return cand
        return "torch"
    if backend not in impls:
        raise ValueError(f"op {op!r} has no {backend!r} implementation; available: {sorted(impls)}")
    why = unavailable_reason(backend, device)
    if why is not None:
        raise ValueError(f"backend={backend!r} cannot run {op!r}: {why}. Use backend='auto' or 'torch'.")
    return backend


@lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def get_op(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """(chosen backend, implementation) for ``op`` on ``device``."""
    chosen = resolve_backend(op, backend, device)
    return chosen, _load(_OPS[op][chosen])


def implementation(op: str, backend: str) -> Callable:
    """The implementation of ``op`` for a concrete backend already chosen by ``resolve_backend`` / ``get_op``
    (what the ``torch.library`` ops in ``llr_kernels.ops.custom_ops`` run; no availability check here)."""
    impls = _OPS.get(op)
    if impls is None or backend not in impls:
        raise ValueError(f"op {op!r} has no {backend!r} implementation; available: {sorted(impls or {})}")
    return _load(impls[backend])
