"""MoE expert stacks under FSDP2 on 2 gloo ranks: a stack sharded over its experts (evenly and unevenly) is
gathered whole onto its owner, measured expert by expert, and every rank holds the mean of the experts' float64
Eq. 2 alphas (numpy reference) and bitwise the same multipliers, with each layer measured once in the world."""
import math
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from conftest import free_port, requires
from reference import alpha_np

from llr_kernels import LLRAdamW
from llr_kernels.dist_exit import exit_rank

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")

WORLD = 2
D, F = 64, 80


class Experts(nn.Module):
    """Two expert stacks (4 experts: even shards; 3: uneven) and a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.randn(4, F, D) * torch.linspace(0.3, 2.0, D) ** 2)
        self.down = nn.Parameter(torch.randn(3, D, F) * torch.linspace(0.5, 1.5, F))
        self.dense = nn.Linear(D, D, bias=False)


def worker(rank: int, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = Experts().double()
    model.load_state_dict(init)
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    opt = LLRAdamW(model, lr=1e-3, s=3.0, hill_method="exact")
    opt.update_metrics(1000)  # on the weights
    torch.save({"alphas": opt.llr.alphas.clone(), "mult": opt.multipliers(), "status": list(opt.layer_status),
                "split": opt.last_split, "names": [l.name for l in opt.layers]}, f"{out}.{rank}")
    exit_rank()


def test_sharded_expert_stacks_match_the_mean_of_their_experts(tmp_path):
    torch.manual_seed(77)
    model = Experts().double()
    init = model.state_dict()
    out = str(tmp_path / "res")
    mp.spawn(worker, args=(free_port(), init, out), nprocs=WORLD, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]
    want = {"up": sum(alpha_np(init["up"][e]) for e in range(4)) / 4,
            "down": sum(alpha_np(init["down"][e]) for e in range(3)) / 3,
            "dense.weight": alpha_np(init["dense.weight"])}
    names = res[0]["names"]
    for r in res:
        for name, a in want.items():
            got = float(r["alphas"][names.index(name)])
            assert math.isfinite(got) and got == pytest.approx(a, rel=1e-9), (name, got, a)
        assert r["status"] == res[0]["status"] and all(s == "ok" for s in r["status"])
        assert torch.equal(r["mult"], res[0]["mult"])
    assert sum(r["split"]["layers_measured"] for r in res) == 3  # each layer measured once in the world
