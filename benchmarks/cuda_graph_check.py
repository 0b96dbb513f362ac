"""Can an LLRAdamW / LLRMuon step be captured in a CUDA graph and replayed with changed learning rates?

A small model with fixed gradients takes ``--warm`` eager steps, then one step is captured with
``torch.cuda.graph`` and replayed once per LR of a schedule (the group LRs are changed before each replay as a
scheduler does: in place, ``group["lr"].fill_(...)``, since capturable=True makes them 0-d device tensors;
``opt.after_replay()`` does the host bookkeeping a replay skips). The result must equal an eager run of the same
schedule on a copy (bitwise up to ``--rtol``). To show that the comparison can fail, the eager run with the
schedule must also differ from an eager run that keeps the captured LR. ``--no-capturable`` runs the default
mode, whose step fills the LR buffers from host floats (expected verdict: FAIL, replays use the captured LR).

Verdicts (one JSON line per optimizer, and --json FILE):
  PASS   the replays reproduce the eager run with the changed LRs;
  FAIL   they do not (e.g. "replays used the LR of the capture": with --no-capturable the per-tensor LR
         buffers are computed from host floats in step(), which a replay does not run);
  ERROR  capture or replay raised (the message says what);
  SKIPPED no CUDA device: the eager comparison path still runs (replays are eager steps) so a dry run
         exercises this code; nothing about graphs is claimed.

    python benchmarks/cuda_graph_check.py                      # both optimizers, on CUDA
    python benchmarks/cuda_graph_check.py --optimizer adamw --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import traceback

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SCHEDULE = (1.0, 3.0, 0.25, 2.0)  # LR factors of the replays (x the base LRs)


class Tiny(nn.Module):
    """Three Linear layers wide enough (>= 64) for finite, distinct Hill alphas, plus a norm and biases."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(96, 128)
        self.fc2 = nn.Linear(128, 96)
        self.fc3 = nn.Linear(96, 80, bias=False)
        self.norm = nn.LayerNorm(80)


def make(optimizer: str, model: nn.Module, backend: str, capturable: bool = True):
    from llr_kernels import LLRAdamW, LLRMuon

    if optimizer == "adamw":
        return LLRAdamW(model, lr=1e-3, weight_decay=0.1, s=3.0, interval=10**6, backend=backend, capturable=capturable)
    return LLRMuon(model, lr=2e-2, adamw_lr=1e-3, weight_decay=0.1, s=2.0, interval=10**6, backend=backend,
                   capturable=capturable)


def base_lrs(opt) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


def set_lr(opt, base: list[float], factor: float) -> None:
    """What an LR scheduler does: tensor LRs (capturable=True) are filled in place, float LRs replaced."""
    for g, b in zip(opt.param_groups, base):
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(b * factor)
        else:
            g["lr"] = b * factor


def fixed_grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(p.device)


def fresh(start: nn.Module) -> nn.Module:
    """A copy of the start model with the fixed gradients (deepcopy does not carry .grad)."""
    model = copy.deepcopy(start)
    fixed_grads(model, 1)
    return model


def eager_run(model: nn.Module, optimizer: str, backend: str, warm: int, factors: tuple[float, ...],
              capturable: bool = True) -> nn.Module:
    opt = make(optimizer, model, backend, capturable)
    base = base_lrs(opt)
    for _ in range(warm):
        opt.step()
    for f in factors:
        set_lr(opt, base, f)
        opt.step()
    return model


def max_rel_diff(a: nn.Module, b: nn.Module, matrices_only: bool = False) -> float:
    """Largest per-parameter max|a - b| / max|b| (over the 2-D weights only if ``matrices_only``)."""
    worst = 0.0
    for x, y in zip(a.parameters(), b.parameters()):
        if matrices_only and x.dim() != 2:
            continue
        d = float((x.detach().double() - y.detach().double()).abs().max())
        worst = max(worst, d / max(float(y.detach().double().abs().max()), 1e-30))
    return worst


def describe(exc: BaseException) -> str:
    """First line of an exception and of the ones it was raised from or while handling (a failed capture often
    surfaces as capture_end()'s error, with the first offending operation in the chain)."""
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip()
        parts.append(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}")
        e = e.__cause__ or e.__context__
    return " <- ".join(reversed(parts))  # root cause first


def check(optimizer: str, device: torch.device, backend: str, warm: int, rtol: float, capturable: bool = True) -> dict:
    torch.manual_seed(0)
    start = Tiny().to(device)
    res: dict = {"optimizer": optimizer, "backend": backend, "device": str(device), "warm_steps": warm,
                 "schedule": list(SCHEDULE), "capturable": capturable}
    ref = eager_run(fresh(start), optimizer, backend, warm, SCHEDULE, capturable)
    const = eager_run(fresh(start), optimizer, backend, warm, (SCHEDULE[0],) * len(SCHEDULE), capturable)
    res["schedule_effect"] = max_rel_diff(const, ref)
    res["schedule_effect_matrices"] = max_rel_diff(const, ref, matrices_only=True)
    if not min(res["schedule_effect"], res["schedule_effect_matrices"]) > 10 * rtol:
        res.update(verdict="ERROR", message=f"the LR schedule changed the result by only {res['schedule_effect']:.2e} "
                   f"(matrices {res['schedule_effect_matrices']:.2e}): the comparison could not tell a replay that "
                   "ignores LR changes")
        return res
    model = fresh(start)
    opt = make(optimizer, model, backend, capturable)
    base = base_lrs(opt)
    graphs = device.type == "cuda"
    try:
        if graphs:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warm):
                    opt.step()
            torch.cuda.current_stream(device).wait_stream(side)
            if opt.host_work_due:
                raise RuntimeError(f"after {warm} warm steps the next step still has host work; raise --warm")
            graph = torch.cuda.CUDAGraph()
            set_lr(opt, base, SCHEDULE[0])
            with torch.cuda.graph(graph):
                opt.step()  # captures this step; the replays below are the schedule's steps

            def replay() -> None:
                graph.replay()
                if opt.after_replay():
                    raise RuntimeError("a replayed step was due for host work (an LLR update): run it eagerly")
        else:
            for _ in range(warm):
                opt.step()
            replay = opt.step  # no CUDA: exercise the comparison with eager steps
        for f in SCHEDULE:
            set_lr(opt, base, f)
            replay()
        C.sync(device)
    except Exception as exc:  # noqa: BLE001 - the verdict, not a crash
        res.update(verdict="ERROR", message=describe(exc), traceback=traceback.format_exc(limit=8))
        return res
    res["max_rel_diff_vs_eager"] = max_rel_diff(model, ref)
    res["max_rel_diff_vs_captured_lr"] = max_rel_diff(model, const)
    ok = res["max_rel_diff_vs_eager"] <= rtol
    if not graphs:
        res.update(verdict="SKIPPED", message="no CUDA device: torch.cuda.graph capture skipped; the eager comparison "
                   f"path ran ({'consistent' if ok else 'INCONSISTENT'})", comparison_ok=ok)
    elif ok:
        res.update(verdict="PASS", message="replays with changed LRs match the eager run")
    elif res["max_rel_diff_vs_captured_lr"] <= rtol:
        res.update(verdict="FAIL", message="replays used the LR of the capture: the per-tensor LR buffers were computed "
                   "from host values inside step(), which a replay does not run" + ("" if capturable else
                   " (expected with --no-capturable; capturable=True computes them on device from tensor LRs)"))
    else:
        res.update(verdict="FAIL", message=f"replays differ from the eager run by {res['max_rel_diff_vs_eager']:.2e} (relative)")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizer", choices=["adamw", "muon", "both"], default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--warm", type=int, default=3, help="eager steps before the capture (the first measures alphas)")
    ap.add_argument("--rtol", type=float, default=1e-6, help="max relative difference graph vs eager")
    ap.add_argument("--json", default=None, help="also write the verdicts to this file")
    ap.add_argument("--no-capturable", dest="capturable", action="store_false",
                    help="build the optimizers with capturable=False (shows the failure a capturable mode avoids)")
    args = ap.parse_args()
    device = torch.device(args.device)
    results = []
    for opt in (["adamw", "muon"] if args.optimizer == "both" else [args.optimizer]):
        try:
            r = check(opt, device, args.backend, args.warm, args.rtol, args.capturable)
        except Exception as exc:  # noqa: BLE001 - e.g. the eager reference itself failed
            r = {"optimizer": opt, "backend": args.backend, "verdict": "ERROR",
                 "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "traceback"}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all(r["verdict"] in ("PASS", "SKIPPED") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
