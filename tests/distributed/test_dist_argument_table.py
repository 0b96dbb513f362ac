"""The distributed split steps under the same argument table as tests/optim/test_optim_table.py (every AdamW and
Muon row, param groups included), on 2 gloo ranks, against a single process on the same global batch; and the
per-layer statuses every rank reports after a split LLR update.

"ddp-split": the optimizer is built on the DDP model, whose group splits the LLR update (each matrix measured on
one rank) and LLRMuon's Newton-Schulz; "fsdp2": parameters are DTensors sharded over the 2 ranks, each matrix is
gathered to its owner only. The rows run with LLR on (s > 1, an update every 2 steps, gradient then weight phase)
so the split update's multipliers act on every step. Float64 parameters and Newton-Schulz: the two runs differ only
by the order of the gradient average (~1e-16 relative), which the bound below leaves room for and a wrong argument
(a momentum, a learning rate, a group's value ignored) exceeds by orders of magnitude.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from conftest import free_port, requires  # noqa: E402
from llr_kernels import LLRAdamW, LLRMuon  # noqa: E402
from llr_kernels.dist_exit import exit_rank  # noqa: E402
from tiny_models import SpectralNet, batches, lm_loss  # noqa: E402

pytestmark = requires(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")


def _optim_table():
    """tests/optim/test_optim_table.py's rows and model, loaded by path (the one table, not a copy of it)."""
    spec = importlib.util.spec_from_file_location("_optim_table_rows", os.path.join(os.path.dirname(HERE), "optim",
                                                                                    "test_optim_table.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


TABLE = _optim_table()
ROWS = {"adamw": TABLE.ADAMW_ROWS, "muon": TABLE.MUON_ROWS}
STEPS, WORLD, BSZ = 4, 2, 4
LLR_ON = dict(s=2.0, interval=2, total_steps=STEPS, grad_phase=0.3, min_eigs=8, backend="torch")
# per element: |dist - single| <= ABS + REL x (largest movement of the tensor). Rows with a bf16 optimizer state
# need float32 parameters (state_dtype is for fp32/bf16/fp16 params): their gradient averages differ by ~1e-7
# relative, and a bf16 moment may flip one rounding on such a difference, which moves that step's update by up to
# 2^-8 of itself
BOUNDS = {torch.float64: (1e-12, 1e-9), torch.float32: (1e-6, 2.0**-7)}


def dtype_of(row) -> torch.dtype:
    return torch.float32 if row.kwargs.get("state_dtype") is not None else torch.float64


def build(kind: str, row, model, opt_model=None):
    """The row's optimizer (LLR on, float64 Newton-Schulz) on ``model`` (the DDP module for "ddp-split")."""
    params = row.groups(model) if row.groups else (opt_model or model)
    kw = {**LLR_ON, **row.kwargs}
    if kind == "adamw":
        return LLRAdamW(params, model=opt_model or model, **kw)
    return LLRMuon(params, model=opt_model or model, ns_dtype=torch.float64, **kw)


def data(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, TABLE.VOCAB, (BSZ, 6), generator=g) for _ in range(STEPS)]


def loss_of(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).logsumexp(-1).mean()  # test_optim_table's loss


def wrap(mode: str, model: torch.nn.Module) -> torch.nn.Module:
    if mode == "ddp-split":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def worker(rank: int, mode: str, kind: str, port: int, init: dict, seed: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    for row in ROWS[kind]:
        try:
            model = TABLE.TableModel().to(dtype_of(row))
            model.load_state_dict(init)
            wrapped = wrap(mode, model)
            opt = build(kind, row, model, wrapped if mode == "ddp-split" else None)
            for x in data(seed):
                opt.zero_grad()
                loss_of(wrapped, x[rank * 2: rank * 2 + 2]).backward()  # this rank's half of the global batch
                opt.step()
            results[row.desc] = {"params": {k: full(v) for k, v in model.state_dict().items()},
                                 "alphas": opt.llr.alphas.clone(), "status": list(opt.layer_status),
                                 "split": opt.last_split}
        except Exception as e:  # noqa: BLE001 - reported per row by the test
            results[row.desc] = {"error": f"{type(e).__name__}: {e}"}
    results["__statuses__"] = status_run(rank, mode)
    torch.save(results, f"{out}.{rank}")
    exit_rank()


def status_model(seed: int) -> SpectralNet:
    """SpectralNet (power-law matrices, two too narrow for min_eigs) with a zero and an orthogonal matrix planted."""
    model = SpectralNet(seed=seed).double()
    with torch.no_grad():
        model.down_proj.weight.zero_()
        torch.nn.init.orthogonal_(model.q_proj.weight, generator=torch.Generator().manual_seed(seed))  # same on every rank
    return model


def status_run(rank: int | None, mode: str | None) -> dict:
    """One weight-phase LLR update (statuses of every kind) and one step; per rank when ``rank`` is given."""
    model = status_model(7)
    wrapped = model if mode is None else wrap(mode, model)
    opt = LLRAdamW(wrapped if mode == "ddp-split" else model, lr=1e-3, interval=1, grad_phase=0.0, min_eigs=16,
                   outlier_z=None, backend="torch")
    x = batches(1, vocab=SpectralNet.VOCAB, bsz=4, seed=3)[0]
    x = x if rank is None else x[rank * 2: rank * 2 + 2]
    opt.zero_grad()
    lm_loss(wrapped, x).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    return {d["name"]: (d["status"], d["alpha"], d["multiplier"]) for d in opt.layer_stats()}


def single(kind: str, row, init: dict, seed: int) -> dict[str, torch.Tensor]:
    model = TABLE.TableModel().to(dtype_of(row))
    model.load_state_dict(init)
    opt = build(kind, row, model)
    for x in data(seed):
        opt.zero_grad()
        loss_of(model, x).backward()  # the global batch's mean = the average of the ranks' halves
        opt.step()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "alphas": opt.llr.alphas,
            "status": list(opt.layer_status)}


@pytest.mark.parametrize("kind", ["adamw", "muon"])
@pytest.mark.parametrize("mode", ["ddp-split", "fsdp2"])
def test_split_steps_run_the_optimizer_argument_table(mode, kind, seed, tmp_path):
    torch.manual_seed(seed)
    init = TABLE.TableModel().double().state_dict()
    out = str(tmp_path / "res")
    mp.spawn(worker, args=(mode, kind, free_port(), init, seed % 10_000, out), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]
    failures, worst = [], {}
    for row in ROWS[kind]:
        got = [r[row.desc] for r in ranks]
        if any("error" in g for g in got):
            failures.append(f"{row.desc}: {[g.get('error') for g in got]}")
            continue
        want = single(kind, row, init, seed % 10_000)
        assert want["alphas"].isfinite().sum() >= 4, "the rows need measured alphas"
        tol_abs, rel = BOUNDS[dtype_of(row)]
        for g in got:
            if not (torch.equal(g["alphas"].isnan(), want["alphas"].isnan())
                    and torch.allclose(g["alphas"], want["alphas"], rtol=1e-9 if dtype_of(row) == torch.float64 else 1e-4,
                                       equal_nan=True)):
                failures.append(f"{row.desc}: alphas {g['alphas'].tolist()} != {want['alphas'].tolist()}")
            if g["status"] != want["status"]:
                failures.append(f"{row.desc}: statuses {g['status']} != {want['status']}")
            for k, v in want["params"].items():
                moved = float((v - init[k]).abs().max())
                err = float((g["params"][k] - v).abs().max())
                if not err <= tol_abs + rel * moved:
                    failures.append(f"{row.desc}: {k} differs by {err:.3e} ({err / max(moved, 1e-300):.2e} of its "
                                    f"movement {moved:.2e})")
                worst[row.desc] = max(worst.get(row.desc, 0.0), err / (tol_abs + rel * moved))
        for k in got[0]["params"]:
            if not torch.equal(got[0]["params"][k], got[1]["params"][k]):
                failures.append(f"{row.desc}: ranks disagree on {k}")
        splits = [g["split"] for g in got]
        if not (splits[0] and [s["rank"] for s in splits] == [0, 1] and sum(s["layers_measured"] for s in splits) == splits[0]["layers"]):
            failures.append(f"{row.desc}: the LLR update was not split across the ranks: {splits}")
    print("largest error / bound per row:", {k: f"{v:.2e}" for k, v in worst.items()})
    assert not failures, f"{mode} {kind} (seed {seed}):\n" + "\n".join(failures)

    want = status_run(None, None)
    statuses = {v[0] for v in want.values()}
    assert {"ok", "too_few_eigenvalues", "zero_matrix", "flat_spectrum", "vector"} <= statuses, statuses
    for r, got in enumerate(rk["__statuses__"] for rk in ranks):
        assert list(got) == list(want), r
        for name, (st, alpha, mult) in want.items():
            g_st, g_alpha, g_mult = got[name]
            assert g_st == st, f"rank {r}: {name} is {g_st!r}, single process {st!r}"
            assert (math.isnan(g_alpha) and math.isnan(alpha)) or g_alpha == pytest.approx(alpha, rel=1e-9), (r, name)
            assert g_mult == pytest.approx(mult, rel=1e-9), (r, name)


def test_float64_clip_equals_torch_clip_grad_norm(seed):
    """The single-process reference above, clipping float64 gradients: bit for bit torch.nn.utils.clip_grad_norm_
    + torch.optim.AdamW (the global norm in the gradients' dtype, as torch computes it; it was float32, ~1e-8
    relative off, which the FSDP2 rows, clipped by torch itself, exposed)."""
    torch.manual_seed(seed)
    model = TABLE.TableModel().double()
    ref_model = TABLE.TableModel().double()
    ref_model.load_state_dict(model.state_dict())
    opt = LLRAdamW(model, lr=1e-3, s=1.0, max_grad_norm=0.05, backend="torch")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, foreach=False)
    for x in data(seed % 10_000):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            loss_of(m, x).backward()
            if o is ref:
                norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05, foreach=False)
                assert float(norm) > 0.05, "the clip must bind"
            o.step()
    for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(a, b), f"{n}: max |diff| {float((a - b).abs().max()):.3e} (seed {seed})"
