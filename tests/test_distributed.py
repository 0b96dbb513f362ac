"""LLRAdamW under DDP and FSDP2 (2 CPU ranks, gloo) against a single-process run on the same global batch."""
import copy
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import TinyLlama, batches, lm_loss  # noqa: E402

from llr_kernels import LLRAdamW  # noqa: E402

STEPS, WORLD = 6, 2
OPT_KW = dict(lr=3e-3, weight_decay=0.1, s=3.0, interval=2, total_steps=STEPS, grad_phase=0.3, max_grad_norm=1.0, backend="torch")

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, mode: str, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = TinyLlama()
    model.load_state_dict(init)
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        opt = LLRAdamW(model, **OPT_KW)
    else:
        from torch.distributed.fsdp import fully_shard

        for blk in model.model.layers:
            fully_shard(blk)
        wrapped = fully_shard(model)
        opt = LLRAdamW(model, **OPT_KW)
    for idx in batches(STEPS, bsz=4):
        opt.zero_grad()
        lm_loss(wrapped, idx[rank * 2 : rank * 2 + 2]).backward()  # each rank takes half of the global batch
        opt.step()
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}
    torch.save({"params": full, "alphas": opt.llr.alphas, "mult": opt.multipliers()}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_matches_single_process(mode, tmp_path):
    torch.manual_seed(1234)
    init = TinyLlama().state_dict()
    out = str(tmp_path / "res")
    mp.spawn(worker, args=(mode, free_port(), init, out), nprocs=WORLD, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]

    model = TinyLlama()
    model.load_state_dict(copy.deepcopy(init))
    opt = LLRAdamW(model, **OPT_KW)
    for idx in batches(STEPS, bsz=4):
        opt.zero_grad()
        lm_loss(model, idx).backward()  # the mean over the global batch = the average of the ranks' halves
        opt.step()
    for r in res:
        assert torch.equal(r["alphas"].isnan(), opt.llr.alphas.isnan())
        assert torch.allclose(r["alphas"], opt.llr.alphas, rtol=1e-4, equal_nan=True)
        assert torch.allclose(r["mult"], opt.multipliers(), rtol=1e-3)
        for k, v in model.state_dict().items():
            assert torch.allclose(r["params"][k], v, rtol=1e-4, atol=1e-5), k
    for k in res[0]["params"]:
        assert torch.equal(res[0]["params"][k], res[1]["params"][k]), k  # ranks agree exactly
