"""The torchrun recipe (python/train_dist.py) on 2 CPU ranks: stopped at step 4 and resumed from its DCP
checkpoint, it ends with the same parameters (digest of the gathered weights) as an uninterrupted run."""
import os
import re
import subprocess
import sys

import pytest
import torch.distributed as dist

from conftest import requires

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")


def run(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "python", "train_dist.py"), "--preset", "tiny", "--steps", "8", "--interval", "3",
           "--batch", "4", "--seq", "32", "--device", "cpu", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("parallel,optimizer", [("fsdp2", "llr-muon"), ("ddp", "llr-adamw")])
def test_resumed_run_equals_uninterrupted(parallel, optimizer, tmp_path):
    common = ["--parallel", parallel, "--optimizer", optimizer]
    ckpt = str(tmp_path / "ckpt")
    first = run(common + ["--ckpt", ckpt, "--stop-after", "4"])
    assert "final step 4:" in first and "this rank measured" in first  # the LLR update was split over the ranks
    resumed = run(common + ["--ckpt", ckpt, "--resume"])
    assert "resumed from" in resumed and "at step 4" in resumed
    whole = run(common)
    digests = [re.search(r"final step 8: params digest (\w+)", out).group(1) for out in (resumed, whole)]
    assert digests[0] == digests[1]
