"""LLRAdamW under DDP and FSDP2, LLRMuon under DDP (2 CPU ranks, gloo), against a single-process run on the same
global batch; LLRMuon refuses FSDP2 at construction."""
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

from conftest import requires  # noqa: E402
from llr_kernels import LLRAdamW, LLRMuon  # noqa: E402

STEPS, WORLD = 6, 2
OPT_KW = dict(lr=3e-3, weight_decay=0.1, s=3.0, interval=2, total_steps=STEPS, grad_phase=0.3, max_grad_norm=1.0, backend="torch")
MUON_KW = dict(lr=0.02, adamw_lr=3e-3, weight_decay=0.1, s=2.0, interval=2, total_steps=STEPS, grad_phase=0.3,
               max_grad_norm=1.0, ns_dtype=torch.float32, backend="torch")
# which optimizers each mode runs (LLRMuon does not support FSDP2 yet: see the last test)
OPTIMIZERS = {"ddp": ("LLRAdamW", "LLRMuon"), "fsdp2": ("LLRAdamW",)}


def make_opt(name: str, model: torch.nn.Module):
    return LLRAdamW(model, **OPT_KW) if name == "LLRAdamW" else LLRMuon(model, **MUON_KW)

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, mode: str, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    for name in OPTIMIZERS[mode]:
        model = TinyLlama()
        model.load_state_dict(init)
        if mode == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for blk in model.model.layers:
                fully_shard(blk)
            wrapped = fully_shard(model)
        opt = make_opt(name, model)
        for idx in batches(STEPS, bsz=4):
            opt.zero_grad()
            lm_loss(wrapped, idx[rank * 2 : rank * 2 + 2]).backward()  # each rank takes half of the global batch
            opt.step()
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}
        results[name] = {"params": full, "alphas": opt.llr.alphas, "mult": opt.multipliers()}
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_matches_single_process(mode, tmp_path):
    torch.manual_seed(1234)
    init = TinyLlama().state_dict()
    out = str(tmp_path / "res")
    mp.spawn(worker, args=(mode, free_port(), init, out), nprocs=WORLD, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]

    for name in OPTIMIZERS[mode]:
        model = TinyLlama()
        model.load_state_dict(copy.deepcopy(init))
        opt = make_opt(name, model)
        for idx in batches(STEPS, bsz=4):
            opt.zero_grad()
            lm_loss(model, idx).backward()  # the mean over the global batch = the average of the ranks' halves
            opt.step()
        assert opt.llr.alphas.isfinite().sum() >= 4, "the test needs measured alphas"
        for r in (x[name] for x in res):
            assert torch.equal(r["alphas"].isnan(), opt.llr.alphas.isnan())
            assert torch.allclose(r["alphas"], opt.llr.alphas, rtol=1e-4, equal_nan=True)
            assert torch.allclose(r["mult"], opt.multipliers(), rtol=1e-3)
            for k, v in model.state_dict().items():
                assert torch.allclose(r["params"][k], v, rtol=1e-4, atol=1e-5), (name, k)
        for k in res[0][name]["params"]:
            assert torch.equal(res[0][name]["params"][k], res[1][name]["params"][k]), (name, k)  # ranks agree exactly


@pytest.fixture
def one_rank_group():
    """A one-process gloo group in this process (FSDP2 needs one to shard), torn down afterwards."""
    assert not dist.is_initialized(), "another test left a process group behind"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_llr_muon_rejects_fsdp2_at_construction(one_rank_group):
    """Until LLRMuon shards its Newton-Schulz work (the multi-rank issue), FSDP2 fails at construction with a
    message that says what to use instead, not at the first step with a raw DTensor error."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = TinyLlama(d=32, ffn=64, layers=1)
    fully_shard(model)
    assert any(hasattr(p, "to_local") for p in model.parameters())
    with pytest.raises(NotImplementedError, match=r"^LLRMuon does not support FSDP2/DTensor parameters yet .*Use LLRAdamW, or LLRMuon under DDP"):
        LLRMuon(model)
    LLRAdamW(model, backend="torch")  # LLRAdamW supports FSDP2 (see test_matches_single_process)
