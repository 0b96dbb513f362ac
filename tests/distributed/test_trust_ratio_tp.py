"""LAMB and LARS under 1-D tensor parallel with torchtitan's plan (colwise / rowwise matrices, a rowwise embedding,
sequence-parallel norms whose grads come out Partial) on 2 gloo ranks, in float64: every parameter ends where one
process on the same model and batch ends (1e-12), for the foreach and the per-tensor paths, and every rank holds
the same parameters. The trust ratio reads whole-tensor norms, so a norm taken over a rank's shard only (or over
a Partial grad before its reduction) moves the step and fails this test."""
import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from conftest import free_port, requires
from layouts import BSZ, STEPS, TPLlama, batches, build, full_state, lm_loss, max_diff

from llr_kernels import LAMB, LARS
from llr_kernels.dist_exit import exit_rank

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")

WORLD = 2
TOL = 1e-12
# clamp (0.05, 10): the small test weights' norms sit inside, so the ratio uses ||w|| itself; LARS's trust
# coefficient 0.02 and lr 0.5 keep its steps of the same size as LAMB's
CASES = {
    "LAMB-foreach": (LAMB, dict(lr=2e-2, weight_decay=0.1, clamp=(0.05, 10.0), foreach=True)),
    "LAMB-loop": (LAMB, dict(lr=2e-2, weight_decay=0.1, clamp=(0.05, 10.0), foreach=False)),
    "LARS-foreach": (LARS, dict(lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.02, foreach=True)),
    "LARS-loop": (LARS, dict(lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.02, nesterov=True,
                             foreach=False)),
}


def train(name: str, init: dict, layout: str | None) -> dict:
    cls, kw = CASES[name]
    model = TPLlama().double()
    model.load_state_dict(copy.deepcopy(init))
    if layout is not None:
        build(layout, model)
    opt = cls(model.parameters(), **kw)
    for idx in batches(STEPS, BSZ):
        opt.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()
    return full_state(model)


def worker(rank: int, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.save({name: train(name, init, "tp") for name in CASES}, f"{out}.{rank}")
    exit_rank()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.manual_seed(2025)
    init = TPLlama().double().state_dict()
    out = str(tmp_path_factory.mktemp("trust_tp") / "res")
    mp.spawn(worker, args=(free_port(), init, out), nprocs=WORLD, join=True)
    return init, [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_trust_ratio_tensor_parallel_matches_single_process(runs, name):
    init, res = runs
    ref = train(name, init, None)
    moved = max_diff(ref, init)[0]
    assert moved > 1e-3, f"the test needs steps that move the weights, moved {moved}"
    for r in res:
        diff, key = max_diff(r[name], ref)
        assert diff <= TOL, (name, key, diff)
    for k in res[0][name]:
        assert torch.equal(res[0][name][k], res[1][name][k]), (name, k)
