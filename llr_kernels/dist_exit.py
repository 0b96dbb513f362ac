"""Ending a multi-rank process without gloo's exit-time abort, for scripts, benchmarks and test workers.

With the gloo backend (CPU ranks) and FSDP2, a rank that returns normally sometimes dies at interpreter exit with
"terminate called without an active exception" (SIGABRT) even after ``destroy_process_group``: gloo worker threads
and pending work objects are destroyed during interpreter finalisation (pytorch/pytorch PR 179291 describes the
mechanism). Seen about once per fresh-clone CI run across this project's FSDP2 tests. Once every file is written,
nothing remains to finalise, so the rank leaves without running finalisers.
"""
from __future__ import annotations

import os
import sys

import torch.distributed as dist


def exit_rank(code: int = 0) -> None:
    """Barrier (no rank tears the group down while another is inside a collective), destroy the process groups,
    flush stdout / stderr and exit the process with ``code`` without interpreter finalisation. Call it last."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
