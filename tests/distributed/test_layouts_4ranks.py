"""LLRAdamW and LLRMuon on the 2-D meshes of large-scale training, 4 gloo ranks in float64: FSDP2 x tensor parallel
(2 x 2, torchtitan's plan inside, FSDP2's strided shards over TP shards) and HSDP (2 replicas x 2 shards), each
against one process on the same model and global batch (1e-12), with clipping, each matrix measured once in the
world; and a DCP save / resume on the FSDP x TP mesh that ends bitwise where the uninterrupted run does."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from conftest import free_port, requires
from layouts import (
    BSZ,
    STEPS,
    TPLlama,
    assert_matches_single_process,
    assert_measured_once,
    batches,
    build,
    count_measurements,
    full_state,
    lm_loss,
    make_opt,
    run_case,
)

from llr_kernels.dist_exit import exit_rank

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")

WORLD = 4
CASES = [("fsdp-tp", "LLRAdamW"), ("fsdp-tp", "LLRMuon"), ("hsdp", "LLRAdamW"), ("hsdp", "LLRMuon")]
DCP_CUT = 2  # the resumed run starts with an LLR update (interval 2)
DCP_OPTIMIZERS = ("LLRAdamW", "LLRMuon")


def dcp_case(name: str, init: dict, out: str) -> dict:
    """An uninterrupted FSDP x TP run, and one saved with DCP after DCP_CUT steps and resumed into a fresh model and
    optimizer (DCP re-creates the optimizer state with its own step): both end states."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    data = batches(STEPS, BSZ)

    def fresh():
        model = TPLlama().double()
        model.load_state_dict(init)
        dp_rank, dp_size = build("fsdp-tp", model)
        return model, make_opt(name, model), dp_rank, BSZ // dp_size

    def train(model, opt, dp_rank, rows, part):
        for idx in part:
            opt.zero_grad()
            lm_loss(model, idx[dp_rank * rows:(dp_rank + 1) * rows]).backward()
            opt.step()

    def final(model, opt):
        return {"params": full_state(model), "alphas": opt.llr.alphas.clone(), "mult": opt.multipliers(),
                "step": opt.llr_step}

    model, opt, r, rows = fresh()
    train(model, opt, r, rows, data)
    result = {"uninterrupted": final(model, opt)}
    model, opt, r, rows = fresh()
    train(model, opt, r, rows, data[:DCP_CUT])
    ckpt = f"{out}.ckpt.{name}"
    dcp.save({"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
    model, opt, r, rows = fresh()
    template = {"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(template, checkpoint_id=ckpt)
    model.load_state_dict(template["model"])
    set_optimizer_state_dict(model, opt, template["optim"])
    result["resumed_at"] = opt.llr_step
    train(model, opt, r, rows, data[DCP_CUT:])
    result["resumed"] = final(model, opt)
    return result


def worker(rank: int, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    counted = count_measurements()
    results = {(layout, name): run_case(layout, name, init, counted) for layout, name in CASES}
    for name in DCP_OPTIMIZERS:
        results[("dcp", name)] = dcp_case(name, init, out)
    torch.save(results, f"{out}.{rank}")
    exit_rank()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.manual_seed(77)
    init = TPLlama().double().state_dict()
    out = str(tmp_path_factory.mktemp("layouts4") / "res")
    mp.spawn(worker, args=(free_port(), init, out), nprocs=WORLD, join=True)
    return init, [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("layout,name", CASES, ids=[f"{lay}-{n}" for lay, n in CASES])
def test_2d_mesh_matches_single_process(runs, layout, name):
    """Parameters, alphas, multipliers and the clipped norm equal one process's; all 4 ranks agree bitwise."""
    init, res = runs
    assert_matches_single_process([x[(layout, name)] for x in res], name, init)


@pytest.mark.parametrize("layout,name", CASES, ids=[f"{lay}-{n}" for lay, n in CASES])
def test_2d_mesh_measures_each_matrix_once(runs, layout, name):
    """Each matrix measured on one of the 4 ranks per update (not once per replica or per TP rank)."""
    init, res = runs
    assert_measured_once([x[(layout, name)] for x in res], name, init, updates=2)


@pytest.mark.parametrize("name", DCP_OPTIMIZERS)
def test_dcp_resume_on_2d_mesh_equals_uninterrupted(runs, name):
    """Saved after 2 steps with DCP on the FSDP x TP mesh, resumed: bitwise the uninterrupted run, LLR state too."""
    _, res = runs
    for r in res:
        a, b = r[("dcp", name)]["uninterrupted"], r[("dcp", name)]["resumed"]
        assert r[("dcp", name)]["resumed_at"] == DCP_CUT
        assert a["step"] == b["step"] == STEPS and a["alphas"].isfinite().sum() >= 10
        assert torch.equal(a["alphas"].nan_to_num(), b["alphas"].nan_to_num()) and torch.equal(a["mult"], b["mult"])
        for k in a["params"]:
            assert torch.equal(a["params"][k], b["params"][k]), (name, k)
