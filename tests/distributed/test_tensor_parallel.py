"""LLRAdamW and LLRMuon under 1-D tensor parallel with torchtitan's plan (rowwise embedding with replicated token
ids, colwise / rowwise attention and MLP, sequence-parallel norms whose grads come out Partial) on 2 gloo ranks,
in float64, against one process on the same model and batch (1e-12), against torch.optim.AdamW on the same
layout, with clipping over DTensors on several meshes and plain tensors, each matrix measured once."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from conftest import backend_missing, free_port, requires
from layouts import (
    TPLlama,
    assert_matches_single_process,
    assert_measured_once,
    count_measurements,
    full_state,
    max_diff,
    run_case,
    single_process,
)

from llr_kernels.dist_exit import exit_rank

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")

WORLD = 2
# (layout, optimizer) run on the ranks; the single-process reference runs the same optimizer on the plain model
CPP_MISSING = backend_missing("cpp", torch.device("cpu"))
CASES = [("tp", "LLRAdamW"), ("tp", "LLRAdamW-momentum"), ("tp", "LLRAdamW-budget"), ("tp", "LLRMuon"),
         ("tp-plain-norms", "LLRAdamW"), ("tp-plain-norms", "LLRMuon"), ("tp", "LLRAdamW-accumulate"),
         ("tp", "LLRMuon-budget")] + ([("tp", "LLRAdamW-cpp")] if CPP_MISSING is None else [])
PARAMS = [pytest.param(lay, n, id=f"{lay}-{n}") for lay, n in CASES] + (
    [pytest.param("tp", "LLRAdamW-cpp", id="tp-LLRAdamW-cpp", marks=requires(CPP_MISSING, "backend 'cpp'"))]
    if CPP_MISSING is not None else [])
TOL = 1e-12


def clip_case(rank: int) -> dict:
    """clip_all_grads over DTensors on a 1-D and a 2-D mesh (Shard, Replicate placements) and plain tensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from llr_kernels.optim.clip import clip_all_grads

    mesh1 = init_device_mesh("cpu", (WORLD,))
    mesh2 = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("a", "b"))
    g = torch.Generator().manual_seed(5)
    fulls = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(5)]
    layouts_ = [(mesh1, [Shard(0)]), (mesh1, [Replicate()]), (mesh2, [Replicate(), Shard(1)]), (mesh2, [Shard(0), Replicate()]), None]
    params = []
    for t, lay in zip(fulls, layouts_):
        p = torch.nn.Parameter(t.clone()) if lay is None else torch.nn.Parameter(distribute_tensor(t.clone(), *lay))
        p.grad = t.clone() * 3 if lay is None else distribute_tensor(t.clone() * 3, *lay)
        params.append(p)
    norm = clip_all_grads(params, 1.0)
    return {"norm": float(norm), "grads": [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone() for p in params],
            "raw": [t * 3 for t in fulls]}


def stages_case(rank: int, init: dict) -> dict:
    """Matrices on meshes over different ranks (as pipeline stages are): the world mesh (TP-style shards) and each
    rank's own 1-rank mesh. LLRAdamW measures without a split (each rank everything, the same alphas as one
    process); LLRMuon's split step refuses, naming the meshes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    from llr_kernels import LLRAdamW, LLRMuon

    mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("world", "own"))
    model = TPLlama().double()
    model.load_state_dict(init)
    for k, (name, mod) in enumerate(m for m in model.named_modules() if isinstance(m[1], torch.nn.Linear)):
        on = (mesh["world"], [Shard(k % 2)]) if k % 2 else (mesh["own"], [Replicate()])
        mod.weight = torch.nn.Parameter(distribute_tensor(mod.weight.detach(), *on))
    adamw = LLRAdamW(model, min_eigs=8, hill_method="exact")
    out = {"alphas": adamw.update_alphas(0), "split": adamw.last_split}
    whole = DTensor.full_tensor  # count the matrices this rank gathers whole: all of them, without a split
    calls = [0]

    def counting(self, *a, **k):
        calls[0] += self.dim() == 2
        return whole(self, *a, **k)

    DTensor.full_tensor = counting
    adamw.update_alphas(0)
    DTensor.full_tensor = whole
    out["full_tensor_calls"] = calls[0]
    opt = LLRMuon(model, min_eigs=8, ns_dtype=torch.float64)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    try:
        opt.step()
        out["muon_error"] = None
    except NotImplementedError as e:
        out["muon_error"] = str(e)
    return out


def worker(rank: int, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    counted = count_measurements()
    results = {(layout, name): run_case(layout, name, init, counted) for layout, name in CASES}
    for name in ("torch.AdamW", "LLRAdamW-s1"):
        results[("tp", name)] = run_case("tp", name, init, counted)
    results["clip"] = clip_case(rank)
    results["stages"] = stages_case(rank, init)
    torch.save(results, f"{out}.{rank}")
    exit_rank()


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory):
    torch.manual_seed(2024)
    init = TPLlama().double().state_dict()
    out = str(tmp_path_factory.mktemp("tp") / "res")
    mp.spawn(worker, args=(free_port(), init, out), nprocs=WORLD, join=True)
    return init, [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("layout,name", PARAMS)
def test_tensor_parallel_matches_single_process(tp_runs, layout, name):
    """Every parameter (norms included), alpha and multiplier equals one process's to 1e-12; every rank ends with
    the same parameters and bitwise the same multipliers; clipping was active."""
    init, res = tp_runs
    assert_matches_single_process([x[(layout, name)] for x in res], name, init)


@pytest.mark.parametrize("layout,name", PARAMS)
def test_each_matrix_measured_once(tp_runs, layout, name):
    """Two LLR updates: each matrix went to the measurement on exactly one rank per update, the ranks share the
    work, and under LLRMuon each Muon matrix was orthogonalized on one rank."""
    init, res = tp_runs
    assert_measured_once([x[(layout, name)] for x in res], name, init, updates=2)


def test_tensor_parallel_equals_torch_adamw_on_the_same_layout(tp_runs):
    """LLRAdamW with s = 1 on the TP layout ends where torch.optim.AdamW on the TP layout does, and both where one
    process does (the grads of the rowwise embedding come out Replicate, the norms' Partial)."""
    init, res = tp_runs
    model, _, _ = single_process("torch.AdamW", init)
    ref = full_state(model)
    for r in res:
        ours, theirs = r[("tp", "LLRAdamW-s1")]["params"], r[("tp", "torch.AdamW")]["params"]
        assert max_diff(ours, theirs)[0] <= TOL and max_diff(theirs, ref)[0] <= TOL
        assert max_diff(ref, init)[0] > 1e-3  # the runs moved


def test_clip_over_several_meshes_and_plain_tensors(tp_runs):
    """The norm over DTensors on a 1-D and a 2-D mesh (sharded and replicated) and a plain tensor is the norm of
    the whole grads (torch's clip_grad_norm_ on plain copies), and every grad is scaled as torch scales it."""
    _, res = tp_runs
    raw = [t.clone() for t in res[0]["clip"]["raw"]]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in raw]
    for p, t in zip(params, raw):
        p.grad = t.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert float(norm) > 1.0
    for r in res:
        assert abs(r["clip"]["norm"] - float(norm)) <= 1e-12 * float(norm)
        for g, p in zip(r["clip"]["grads"], params):
            assert torch.allclose(g, p.grad, rtol=1e-13, atol=0)



def test_meshes_over_different_ranks_measure_without_split(tp_runs):
    """DTensors on the world mesh and on each rank's own mesh: LLRAdamW's alphas equal one process's (every rank
    measures every matrix), and LLRMuon's split step raises an error naming the meshes instead of stepping."""
    init, res = tp_runs
    model = TPLlama().double()
    model.load_state_dict(init)
    from llr_kernels import LLRAdamW

    ref = LLRAdamW(model, min_eigs=8, hill_method="exact").update_alphas(0)
    assert ref.isfinite().sum() >= 10
    for r in res:
        st = r["stages"]
        assert torch.allclose(st["alphas"], ref, rtol=0, atol=1e-12, equal_nan=True) and st["split"] is None
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())  # the DTensors (the embedding is plain)
        assert st["full_tensor_calls"] == linears == 15
        assert st["muon_error"] is not None and st["muon_error"].startswith(
            "LLRMuon's Muon matrices are DTensors on meshes over different ranks")
