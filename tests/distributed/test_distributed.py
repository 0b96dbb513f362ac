"""LLRAdamW and LLRMuon under DDP and FSDP2 (2 CPU ranks, gloo) against a single-process run on the same global
batch, with the LLR update and LLRMuon's Newton-Schulz split across ranks; DCP checkpoints across ranks."""
import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import TinyLlama, batches, lm_loss  # noqa: E402

from conftest import free_port, requires  # noqa: E402
from llr_kernels.dist_exit import exit_rank  # noqa: E402
from llr_kernels import LLRAdamW, LLRMuon  # noqa: E402

STEPS, WORLD = 6, 2
# LLR's LRs plus AlphaDecay's per-layer weight decays (set from the weight alphas of steps 2 and 4): the split
# update must carry both multipliers, and LLRMuon's split step must apply the weight-decay ones
OPT_KW = dict(lr=3e-3, weight_decay=0.1, s=3.0, interval=2, total_steps=STEPS, grad_phase=0.3, max_grad_norm=1.0, backend="torch",
              policy="llr+alphadecay")
MUON_KW = dict(lr=0.02, adamw_lr=3e-3, weight_decay=0.1, s=2.0, interval=2, total_steps=STEPS, grad_phase=0.3,
               max_grad_norm=1.0, ns_dtype=torch.float32, backend="torch", policy="llr+alphadecay")
# which optimizers each mode runs
OPTIMIZERS = {"ddp": ("LLRAdamW", "LLRMuon"), "ddp-split": ("LLRAdamW", "LLRMuon"), "fsdp2": ("LLRAdamW", "LLRMuon")}
# how each mode splits the LLR update across ranks (llr_kernels.optim.spectral_split): "ddp" builds the optimizer on
# the inner model (no split: every rank measures every layer), "ddp-split" on the DDP model (its group splits the
# work), "fsdp2" splits over the mesh and gathers each matrix onto its owner only
SPLIT = {"ddp": None, "ddp-split": "replicated", "fsdp2": "dtensor"}


def make_opt(name: str, model: torch.nn.Module):
    return LLRAdamW(model, **OPT_KW) if name == "LLRAdamW" else LLRMuon(model, **MUON_KW)

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")


def worker(rank: int, mode: str, world: int, port: int, init: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torch.distributed.tensor import DTensor

    full_tensor_calls = [0]
    original = DTensor.full_tensor

    def counted(self, *args, **kwargs):  # matrices only: clipping reads the (0-d) global norm with full_tensor()
        full_tensor_calls[0] += self.dim() >= 2
        return original(self, *args, **kwargs)

    DTensor.full_tensor = counted
    results = {}
    for name in OPTIMIZERS[mode]:
        model = TinyLlama().to(init["lm_head.weight"].dtype)
        model.load_state_dict(init)
        wrapped = wrap(mode, model)
        opt = make_opt(name, wrapped if mode == "ddp-split" else model)
        full_tensor_calls[0] = 0
        for idx in batches(STEPS, bsz=2 * world):
            opt.zero_grad()
            lm_loss(wrapped, idx[rank * 2 : rank * 2 + 2]).backward()  # each rank takes its 2 rows of the global batch
            opt.step()
        calls = full_tensor_calls[0]
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}
        matrix_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)
        muon = getattr(opt, "_muon_split", None)
        results[name] = {"params": full, "alphas": opt.llr.alphas, "mult": opt.multipliers(), "split": opt.last_split,
                         "full_tensor_calls": calls, "matrix_bytes": matrix_bytes,
                         "orthogonalized": None if muon is None else muon.last_orthogonalized}
    torch.save(results, f"{out}.{rank}")
    exit_rank()  # barrier, destroy the groups, exit without gloo's finalisation abort (llr_kernels.dist_exit)


@pytest.mark.parametrize("mode,world", [("ddp", 2), ("ddp-split", 2), ("fsdp2", 2), ("ddp-split", 3), ("fsdp2", 3)],
                         ids=["ddp-2", "ddp-split-2", "fsdp2-2", "ddp-split-3", "fsdp2-3"])
def test_matches_single_process(mode, world, tmp_path):
    """3 ranks shard the 64- and 128-row matrices unevenly (22/22/20 and 43/43/42 rows). They run in float64: their
    gradient mean (x / 3) rounds differently from one process's, and in float32 Adam's normalisation magnifies that
    where gradients are near zero (measured up to 1.1e-4, 4% of one step), which would hide real errors."""
    torch.manual_seed(1234)
    dtype = torch.float32 if world == 2 else torch.float64
    init = TinyLlama().to(dtype).state_dict()
    out = str(tmp_path / "res")
    mp.spawn(worker, args=(mode, world, free_port(), init, out), nprocs=world, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]

    for name in OPTIMIZERS[mode]:
        model = TinyLlama().to(dtype)
        model.load_state_dict(copy.deepcopy(init))
        opt = make_opt(name, model)
        for idx in batches(STEPS, bsz=2 * world):
            opt.zero_grad()
            lm_loss(model, idx).backward()  # the mean over the global batch = the average of the ranks' parts
            opt.step()
        assert opt.llr.alphas.isfinite().sum() >= 4, "the test needs measured alphas"
        assert len(set(opt.llr.wd_multipliers(STEPS).tolist())) > 2, "the test needs per-layer weight decays"
        for r in (x[name] for x in res):
            assert torch.equal(r["alphas"].isnan(), opt.llr.alphas.isnan())
            assert torch.allclose(r["alphas"], opt.llr.alphas, rtol=1e-4, equal_nan=True)
            assert torch.allclose(r["mult"], opt.multipliers(), rtol=1e-3)
            atol = 1e-5 if world == 2 else 1e-9
            for k, v in model.state_dict().items():
                assert torch.allclose(r["params"][k], v, rtol=1e-4, atol=atol), (name, k, float((r["params"][k] - v).abs().max()))
        for k in res[0][name]["params"]:
            assert torch.equal(res[0][name]["params"][k], res[1][name]["params"][k]), (name, k)  # ranks agree exactly
        splits = [x[name]["split"] for x in res]
        if SPLIT[mode] is None:
            assert splits == [None] * world and all(x[name]["orthogonalized"] is None for x in res)
            continue
        if name == "LLRMuon":  # each Muon matrix orthogonalized on exactly one rank
            done = [x[name]["orthogonalized"] for x in res]
            n_muon = sum(l.is_matrix and l.kind not in ("embedding", "lm_head") for l in opt.layers)
            assert sum(done) == n_muon and all(0 < d < n_muon for d in done), done
        # each rank measured its own share of the layers (the same assignment everywhere), and only those
        matrices = sum(l.is_matrix for l in opt.layers)
        assert [s["layout"] for s in splits] == [SPLIT[mode]] * world and [s["rank"] for s in splits] == list(range(world))
        assert all(s["layers"] == matrices and 0 < s["layers_measured"] < matrices for s in splits)
        assert sum(s["layers_measured"] for s in splits) == matrices
        if mode == "fsdp2":  # whole matrices only on their owner: about half the model's matrix bytes per rank
            total = res[0][name]["matrix_bytes"]
            assert all(x[name]["full_tensor_calls"] == 0 for x in res)
            assert sum(s["bytes_received"] for s in splits) == total  # the last update measured weights, all of them
            assert all(s["bytes_received"] < 1.5 / world * total for s in splits)
        else:
            assert all(s["bytes_received"] == 0 for s in splits)


def test_optimizers_reject_dtensors_they_cannot_step(one_rank_group):
    """LLRMuon splits Newton-Schulz over any Shard / Replicate layout (tests/distributed/test_tensor_parallel.py,
    test_layouts_4ranks.py); a Partial parameter, or capturable=True with DTensors, fails at construction with a
    message naming the parameter and its placements, not at the first step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor

    torch.manual_seed(0)
    model = TinyLlama(d=32, ffn=64, layers=1)
    mesh = init_device_mesh("cpu", (1,))
    q = model.model.layers[0].self_attn.q_proj
    q.weight = torch.nn.Parameter(DTensor.from_local(q.weight.detach(), mesh, [Partial()]))
    for cls in (LLRMuon, LLRAdamW):
        with pytest.raises(NotImplementedError, match=r"^parameter 'model\.layers\.0\.self_attn\.q_proj\.weight' has "
                                                      r"placements \(Partial\(sum\),\) on a 1-D mesh"):
            cls(model)
    q.weight = torch.nn.Parameter(distribute_tensor(q.weight.detach().to_local(), mesh, [Replicate()]))
    LLRMuon(model)  # replicated on a 1-D mesh: supported
    from torch.distributed.fsdp import fully_shard

    sharded = TinyLlama(d=32, ffn=64, layers=1)
    fully_shard(sharded, mesh=mesh)
    with pytest.raises(NotImplementedError, match=r"^LLRMuon with capturable=True cannot split Newton-Schulz across ranks"):
        LLRMuon(sharded, capturable=True)
    LLRMuon(sharded)  # row-sharded on a 1-D mesh: supported


def wrap(mode: str, model: torch.nn.Module) -> torch.nn.Module:
    if mode.startswith("ddp"):
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))  # gloo ranks: the default mesh would be CUDA's on a GPU
    for blk in model.model.layers:
        fully_shard(blk, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def dcp_worker(rank: int, mode: str, port: int, init: dict, out: str) -> None:
    """Per optimizer: an uninterrupted run, and a run saved with DCP after CUT steps (sharded under FSDP2) and
    resumed into a fresh model and optimizer; both end states go to the test."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    data = batches(STEPS, bsz=4)

    def fresh(name):
        model = TinyLlama()
        model.load_state_dict(init)
        wrapped = wrap(mode, model)
        return model, wrapped, make_opt(name, model)

    def train(wrapped, opt, part):
        for idx in part:
            opt.zero_grad()
            lm_loss(wrapped, idx[rank * 2 : rank * 2 + 2]).backward()
            opt.step()

    def final(model, opt):
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.state_dict().items()}
        return {"params": full, "alphas": opt.llr.alphas.clone(), "mult": opt.multipliers(), "step": opt.llr_step,
                "status": list(opt.hill_status)}

    results = {}
    for name in OPTIMIZERS[mode]:
        model, wrapped, opt = fresh(name)
        train(wrapped, opt, data)
        results[name] = {"uninterrupted": final(model, opt)}
        model, wrapped, opt = fresh(name)
        train(wrapped, opt, data[:DCP_CUT])
        ckpt = f"{out}.ckpt.{name}"
        dcp.save({"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
        model, wrapped, opt = fresh(name)
        template = {"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)}
        assert opt.llr_step == 0, "DCP's initialisation of the fresh optimizer must not take an LLR step"
        dcp.load(template, checkpoint_id=ckpt)
        model.load_state_dict(template["model"])
        set_optimizer_state_dict(model, opt, template["optim"])
        results[name]["resumed_at"] = opt.llr_step
        train(wrapped, opt, data[DCP_CUT:])
        results[name]["resumed"] = final(model, opt)
    torch.save(results, f"{out}.{rank}")
    exit_rank()  # barrier, destroy the groups, exit without gloo's finalisation abort (llr_kernels.dist_exit)


DCP_CUT = 3  # interval 2: the last update was before step 2, the next comes before step 4; gradient phase until t=1


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_dcp_resume_multi_rank_equals_uninterrupted(mode, tmp_path):
    """torch.distributed.checkpoint on 2 ranks (sharded optimizer state under FSDP2): the resumed run ends bit for
    bit where the uninterrupted one does, on every rank, LLR state included."""
    torch.manual_seed(4321)
    init = TinyLlama().state_dict()
    out = str(tmp_path / "res")
    mp.spawn(dcp_worker, args=(mode, free_port(), init, out), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        res = torch.load(f"{out}.{rank}", weights_only=True)
        for name in OPTIMIZERS[mode]:
            a, b = res[name]["uninterrupted"], res[name]["resumed"]
            assert res[name]["resumed_at"] == DCP_CUT
            assert a["alphas"].isfinite().sum() >= 4, "the test needs measured alphas"
            assert a["step"] == b["step"] == STEPS and a["status"] == b["status"]
            assert torch.equal(a["alphas"].nan_to_num(), b["alphas"].nan_to_num()) and torch.equal(a["mult"], b["mult"])
            for k in a["params"]:
                assert torch.equal(a["params"][k], b["params"][k]), (mode, name, k)


def test_owner_assignment_is_balanced_and_deterministic():
    """LPT over the estimated costs: within 4/3 of the best makespan (brute force over all assignments), the same
    for equal inputs, and each item has exactly one owner."""
    import itertools
    import random

    from llr_kernels.optim.spectral_split import assign_owners, measure_cost

    # the cost model, written out: m n^2 + 4/3 n^3 for the short side n and the long side m (>2-D: rows x rest)
    assert measure_cost((768, 2048)) == 2048 * 768**2 + 4 / 3 * 768**3
    assert measure_cost((2048, 768)) == measure_cost((768, 2048))
    assert measure_cost((8, 3, 4, 4)) == 48 * 8**2 + 4 / 3 * 8**3
    rng = random.Random(7)
    for _ in range(30):
        costs = [rng.choice([1.0, 2.0, 3.0]) * rng.randint(1, 20) for _ in range(rng.randint(1, 9))]
        world = rng.randint(1, 3)
        owners = assign_owners(costs, world)
        assert owners == assign_owners(list(costs), world) and all(0 <= o < world for o in owners)
        makespan = max(sum(c for c, o in zip(costs, owners) if o == r) for r in range(world))
        best = min(max(sum(c for c, o in zip(costs, a) if o == r) for r in range(world))
                   for a in itertools.product(range(world), repeat=len(costs)))
        assert makespan <= 4 / 3 * best + 1e-9, (costs, world, owners)
    assert assign_owners([5.0] * 4, 2) == [0, 1, 0, 1]


def test_spectral_group_argument(one_rank_group):
    """An explicit group splits the update (here over one rank: it measures every layer, with the same alphas as no
    split); a wrong type fails at construction."""
    torch.manual_seed(0)
    model = TinyLlama()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    kw = dict(min_eigs=8, backend="torch")
    split = LLRAdamW(model, spectral_group=dist.group.WORLD, **kw)
    plain = LLRAdamW(model, spectral_group=None, **kw)
    a, b = split.update_alphas(0), plain.update_alphas(0)
    assert a.isfinite().sum() >= 6 and torch.equal(a.nan_to_num(), b.nan_to_num()) and split.hill_status == plain.hill_status
    assert split.last_split["world"] == 1 and split.last_split["layers_measured"] == split.last_split["layers"]
    assert plain.last_split is None
    assert LLRAdamW(model, **kw).last_split is None  # "auto" with a plain model: no split
    with pytest.raises(TypeError, match=r"^spectral_group must be 'auto', None or a torch\.distributed\.ProcessGroup, got 'world'"):
        LLRAdamW(model, spectral_group="world")
    with pytest.raises(TypeError, match="spectral_group must be"):
        LLRMuon(model, spectral_group=2)
