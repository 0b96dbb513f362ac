"""The torchrun recipe: LLRAdamW or LLRMuon under DDP or FSDP2, with torch.distributed.checkpoint save and resume.

    torchrun --nproc_per_node 2 python/train_dist.py --parallel fsdp2 --optimizer llr-muon --steps 200 --ckpt runs/dist
    torchrun --nproc_per_node 2 python/train_dist.py ... --resume          # continue from the newest checkpoint

CPU ranks talk over gloo, GPU ranks (one per process, LOCAL_RANK) over nccl. Every rank builds the same model
from the seed and reads its own rows of each global batch; the batch of step t depends only on (seed, t), so a
resumed run sees the same data as an uninterrupted one. The optimizer is built on the DDP model (so the LLR
update is split across ranks) or on the FSDP2 model (split over its mesh); checkpoints hold the model, the
optimizer (with the LLR state) and the scheduler, and reshard with DCP. Prints the loss, and the per-layer
multipliers at every LLR update, on rank 0.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:  # run from a clone without installing the package
    sys.path.insert(1, str(HERE.parent))

import data as data_mod  # noqa: E402
from models import build_model, model_config  # noqa: E402
from train import warmup_cosine  # noqa: E402

from llr_kernels.dist_exit import exit_rank  # noqa: E402
from llr_kernels import LLRAdamW, LLRMuon  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", choices=("ddp", "fsdp2"), default="ddp")
    ap.add_argument("--optimizer", choices=("llr-adamw", "llr-muon"), default="llr-adamw")
    ap.add_argument("--preset", default="tiny", help="model size preset of python/models.py (default tiny)")
    ap.add_argument("--data", default="sample", help="text source of python/data.py (default: the shipped sample)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200, help="total optimizer steps (the schedule's length)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop (after saving) at this step, as a preemption would")
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences), split evenly over the ranks")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak LR (LLRMuon: of the AdamW part; Muon gets 10x)")
    ap.add_argument("--s", type=float, default=None, help="LLR's s (default: 3 for LLRAdamW, 2 for LLRMuon)")
    ap.add_argument("--interval", type=int, default=20, help="steps between LLR updates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: one GPU per rank (nccl) when CUDA is present, else CPU ranks (gloo)")
    ap.add_argument("--ckpt", default=None, help="checkpoint folder (DCP); nothing is saved without it")
    ap.add_argument("--save-every", type=int, default=0, help="save every N steps (and at the end); 0: at the end")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --ckpt")
    a = ap.parse_args(argv)
    if a.resume and not a.ckpt:
        ap.error("--resume needs --ckpt")
    return a


def setup(device: str) -> tuple[int, int, torch.device]:
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda and local >= torch.cuda.device_count():
        sys.exit(f"rank with LOCAL_RANK {local} has no GPU of its own ({torch.cuda.device_count()} visible): start at most "
                 f"{torch.cuda.device_count()} processes per node, or pass --device cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(local)
    return rank, world, torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def wrap(model: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    if parallel == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # explicit: the default mesh is CUDA's if present
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_optimizer(a: argparse.Namespace, target: torch.nn.Module):
    common = dict(interval=a.interval, total_steps=a.steps)
    if a.optimizer == "llr-adamw":
        return LLRAdamW(target, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1, s=a.s or 3.0, **common)
    return LLRMuon(target, lr=10 * a.lr, adamw_lr=a.lr, adamw_betas=(0.9, 0.95), weight_decay=0.1, s=a.s or 2.0, **common)


def global_batch(tokens: data_mod.TokenData, a: argparse.Namespace, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: a function of (seed, step) only, so a resumed run reads the same data."""
    return tokens.batch(np.random.default_rng([a.seed, step]), a.batch, a.seq)


def latest(ckpt: Path) -> Path | None:
    steps = sorted((int(p.name.split("_")[1]), p) for p in ckpt.glob("step_*") if (p / ".metadata").exists())
    return steps[-1][1] if steps else None


def save(path: Path, model, opt, sched, step: int) -> None:
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt),
             "sched": sched.state_dict(), "step": step}
    dcp.save(state, checkpoint_id=str(path))


def load(path: Path, model, opt, sched) -> int:
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt),
             "sched": sched.state_dict(), "step": 0}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    sched.load_state_dict(state["sched"])
    return int(state["step"])


def digest(model: torch.nn.Module) -> str:
    """A hash of the whole (gathered) parameters, the same on every rank: resumed and uninterrupted runs compare."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        h.update(name.encode())
        h.update(full.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    rank, world, device = setup(a.device)
    if a.batch % world:
        raise SystemExit(f"--batch {a.batch} must split evenly over {world} ranks")
    log = print if rank == 0 else (lambda *x, **k: None)
    if rank == 0:  # tokenize once (cached), then the other ranks read the cache
        tokens = data_mod.load_data(a.data, a.vocab_size, log=log)
    dist.barrier()
    if rank != 0:
        tokens = data_mod.load_data(a.data, a.vocab_size, log=lambda *x, **k: None)
    torch.manual_seed(a.seed)
    model = build_model(model_config(a.preset, vocab_size=tokens.vocab_size, max_seq_len=a.seq)).to(device)
    wrapped = wrap(model, a.parallel, device)
    opt = make_optimizer(a, wrapped if a.parallel == "ddp" else model)
    warm = max(1, a.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: warmup_cosine(t, a.steps, warm))
    ckpt = Path(a.ckpt) if a.ckpt else None
    step = 0
    if a.resume:
        found = latest(ckpt)
        if found is None:
            raise SystemExit(f"--resume: no checkpoint in {ckpt}")
        step = load(found, model, opt, sched)
        log(f"resumed from {found} at step {step}")
    log(f"{a.parallel} x {world} ({dist.get_backend()}), {a.optimizer}, preset {a.preset}, "
        f"{sum(p.numel() for p in model.parameters()):,} params, steps {step}..{a.steps}")
    per = a.batch // world
    stop = a.steps if a.stop_after is None else min(a.steps, a.stop_after)
    while step < stop:
        x, y = global_batch(tokens, a, step)
        x, y = x[rank * per : (rank + 1) * per].to(device), y[rank * per : (rank + 1) * per].to(device)
        _, loss = wrapped(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        updating = opt.llr.is_update_step(opt.llr_step)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if updating:
            mult = ", ".join(f"{s['name']}={s['multiplier']:.2f}" for s in opt.layer_stats() if s["kind"] != "vector")
            split = opt.last_split
            where = (f"this rank measured {split['layers_measured']} of {split['layers']} layers" if split
                     else "every rank measured every layer")
            log(f"step {step}: LLR update ({where}): {mult}")
        if step % 10 == 0 or step == stop:
            log(f"step {step}: loss {loss.item():.4f}")
        if ckpt and ((a.save_every and step % a.save_every == 0) or step == stop):
            save(ckpt / f"step_{step}", model, opt, sched, step)
    log(f"final step {step}: params digest {digest(model)}")
    exit_rank()  # barrier, destroy the groups, exit without gloo's finalisation abort (llr_kernels.dist_exit)


if __name__ == "__main__":
    main()
