"""Test setup and shared helpers.

* Triton kernels run through the interpreter when no CUDA device is present (TRITON_INTERPRET=1).
* ``requires(why_not, what)``: a mark for a test that needs an optional piece (the C++ extension, triton,
  torch.optim.Muon). It skips normally and FAILS under ``LLR_REQUIRE_ALL=1`` (CI sets it), so nothing the
  CI machine should have is skipped silently. ``require(why_not, what)`` does the same inside a test body.
* ``seed``: a fresh random seed per test, printed (pytest shows it on failure); ``LLR_TEST_SEED=N`` replays one.
* ``nan_fill``: every uninitialised allocation (torch.empty & co.) is filled with NaN while the test runs, so a
  kernel that leaves part of an output unwritten produces NaN instead of stale memory that may look right.
"""
from __future__ import annotations

import os
import random
import socket

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One thread by default: on 2-core machines, two threads contend with the Triton interpreter and other ranks
# (measured: 5-10x slower small-model steps). LLR_TEST_THREADS=2 runs the suite with two intra-op threads, as a user's
# code would (threaded CPU paths must give the same answers; one did not: see docs/spectral.md).
torch.set_num_threads(int(os.environ.get("LLR_TEST_THREADS", "1")))

REQUIRE_ALL = os.environ.get("LLR_REQUIRE_ALL", "0") == "1"
# Where the kernels under test run: the GPU when there is one (Triton compiled), else the CPU (Triton interpreted).
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CPU = torch.device("cpu")


def device_for(backend: str) -> torch.device:
    """The device a test of ``backend`` runs on: Triton kernels need DEV (CUDA, or the CPU interpreter); the
    torch and C++ backends are tested on the CPU, where their results are exact enough to compare bit for bit."""
    return DEV if backend == "triton" else CPU


def requires(why_not: str | None, what: str) -> list[pytest.MarkDecorator]:
    """Marks for a test needing ``what``; ``why_not`` is None when it is available, else the reason it is not."""
    return [] if why_not is None else [pytest.mark.llr_requires(f"{what} unavailable: {why_not}")]


def needs(why_not: str | None, what: str):
    """Decorator form of ``requires`` for a whole test function."""

    def deco(fn):
        for mark in requires(why_not, what):
            fn = mark(fn)
        return fn

    return deco


def require(why_not: str | None, what: str) -> None:
    """Inside a test: skip (or, under LLR_REQUIRE_ALL=1, fail) when ``what`` is unavailable."""
    if why_not is not None:
        _missing(f"{what} unavailable: {why_not}")


def _missing(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (LLR_REQUIRE_ALL=1: a missing requirement fails the run)", pytrace=False)
    pytest.skip(reason)


def torch_muon_missing() -> str | None:
    return None if hasattr(torch.optim, "Muon") else f"torch {torch.__version__} has no torch.optim.Muon"


def triton_missing() -> str | None:
    from llr_kernels.ops.dispatch import triton_importable

    return None if triton_importable() else "triton is not installed"


def triton_launch_missing() -> str | None:
    """Why Triton kernels cannot be launched here (not installed; no CUDA and TRITON_INTERPRET is not 1), or None."""
    from llr_kernels.ops.dispatch import triton_interpreted

    missing = triton_missing()
    if missing is None and not (torch.cuda.is_available() or triton_interpreted()):
        missing = "no CUDA device and TRITON_INTERPRET is not 1"
    return missing


def backend_missing(backend: str, device: torch.device) -> str | None:
    from llr_kernels.ops import dispatch

    return dispatch.unavailable_reason(backend, device)


def backend_param(backend: str, device: torch.device, *values, ident: str | None = None):
    """pytest.param(backend, *values) marked as requiring that backend on ``device``, with id = the backend."""
    return pytest.param(backend, *values, marks=requires(backend_missing(backend, device), f"backend {backend!r}"),
                        id=ident or backend)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llr_requires(reason): needs an optional piece; skips, or fails under LLR_REQUIRE_ALL=1")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("llr_requires"):
        _missing(mark.args[0])


def free_port() -> int:
    """A TCP port nothing listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank_group():
    """A one-process gloo group in this process (DDP and FSDP2 need one), torn down afterwards."""
    import torch.distributed as dist

    require(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")
    assert not dist.is_initialized(), "another test left a process group behind"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def seed() -> int:
    """A fresh seed (printed; replay with LLR_TEST_SEED=N)."""
    value = int(os.environ.get("LLR_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"seed = {value}  (replay: LLR_TEST_SEED={value})")
    return value


@pytest.fixture
def nan_fill():
    """Fill fresh allocations with NaN (torch's deterministic mode with fill_uninitialized_memory)."""
    import torch.utils.deterministic as det

    was_on, was_warn, was_fill = (torch.are_deterministic_algorithms_enabled(),
                                  torch.is_deterministic_algorithms_warn_only_enabled(), det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    assert torch.isnan(torch.empty(4)).all(), "fill_uninitialized_memory did not take effect"
    yield
    det.fill_uninitialized_memory = was_fill
    torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
