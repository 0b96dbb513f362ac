"""Train small LLaMA / GPT-nano models with Uniform and LLR optimizers side by side, on real text.

Every arm of a comparison gets the same model initialisation and the same batches for a given seed
(init and data order both come from the seed), the same warmup (10%) + cosine schedule and gradient
clipping at 1.0. Validation loss is measured on a fixed held-out set at fixed intervals. Results go to a
run directory: metrics.json (everything, written after every run), results.md (the table) and PNG plots.

    python python/train.py --preset cpu-demo                 # the README's main job (CPU; 5 min on 2 idle cores)
    python python/train.py --preset gpu-60m --lrs 5e-4,1e-3,2e-3
    python python/train.py --preset cpu-demo --data shared --arms uniform,llr,muon,llr-muon

Arms: uniform (torch.optim.AdamW), llr (llr_kernels.LLRAdamW), uniform-smax (AdamW at s x lr, the
paper's Table 5 upper bound), muon (torch.optim.Muon on hidden matrices + AdamW on the rest), llr-muon
(llr_kernels.LLRMuon), the layerwise policies of llr_kernels.policies through LLRAdamW (llr-shuffled,
sharpness, rlrs, alphadecay, llr+alphadecay) and the trust-ratio baselines (lars, lamb:
llr_kernels.optim.trust_ratio), each baseline at the paper's Table 1 LR ratio (--arm-lr-scale). Arms whose
optimizer is not importable are skipped with a message.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
if str(REPO) not in sys.path:  # run from a clone without installing the package
    sys.path.insert(1, str(REPO))

import data as data_mod  # noqa: E402
import models  # noqa: E402
import report  # noqa: E402

ARMS = ("uniform", "llr", "uniform-smax", "muon", "llr-muon", "llr-shuffled", "sharpness", "rlrs", "alphadecay",
        "llr+alphadecay", "lars", "lamb")
# Arms that run a layerwise policy of llr_kernels.policies through LLRAdamW (the preset of the same name).
POLICY_ARMS = ("llr-shuffled", "sharpness", "rlrs", "alphadecay", "llr+alphadecay")
# Each baseline's LR and weight decay relative to AdamW's, from the LLR paper's Table 1 (60M row: AdamW 2e-3 / 0.1,
# LARS 5e-3 / 1e-6, LAMB 5e-2 / 0.1, Sharpness 2e-4 / 0.1); --arm-lr-scale overrides the LR ratios.
ARM_LR_SCALE = {"lars": 2.5, "lamb": 25.0, "sharpness": 0.1}
ARM_WEIGHT_DECAY = {"lars": 1e-6}

# Run presets: every field is a CLI option (same name, dashes for underscores); the CLI overrides.
RUN_PRESETS: dict[str, dict[str, Any]] = {
    # The main job: 3 seeds x {Uniform, LLR}, CPU, 2 cores; LR 4e-3 = best Uniform LR of a sweep (2e-3..1.2e-2).
    "cpu-demo": dict(
        model="cpu", data="sample", vocab_size=4096, seq_len=128, batch_size=32, steps=120,
        lrs="4e-3", seeds="0,1,2", arms="uniform,llr", eval_every=20, eval_windows=128,
        interval=20, s=3.0, muon_s=2.0, reference="benchmarks/results/train_cpu_demo.json",
    ),
    # Seconds: for tests and a quick look that the pipeline works.
    "smoke": dict(
        model="tiny", data="sample", vocab_size=512, seq_len=32, batch_size=4, steps=3,
        lrs="1e-3", seeds="0", arms="uniform,llr", eval_every=2, eval_windows=4, interval=1,
        tokenizer_train_chars=200_000,
    ),
    # GPU recipe presets (python/gpu_recipe.sh): the full corpus (~50M tokens per epoch at vocab 32000),
    # 3 LRs x {Uniform, LLR}, 3000 steps x 64 x 256 tokens = 49M tokens per run (about one epoch).
    "gpu-20m": dict(
        model="20m", data="shared", vocab_size=32000, seq_len=256, batch_size=64, steps=3000,
        lrs="1e-3,2e-3,4e-3", seeds="0", arms="uniform,llr", eval_every=250, eval_windows=1024,
        interval=150, s=3.0,
    ),
    "gpu-60m": dict(
        model="60m", data="shared", vocab_size=32000, seq_len=256, batch_size=64, steps=3000,
        lrs="1e-3,2e-3,4e-3", seeds="0", arms="uniform,llr", eval_every=250, eval_windows=1024,
        interval=150, s=3.0,
    ),
    "gpu-135m": dict(
        model="135m", data="shared", vocab_size=32000, seq_len=256, batch_size=64, steps=3000,
        lrs="5e-4,1e-3,2e-3", seeds="0", arms="uniform,llr", eval_every=250, eval_windows=1024,
        interval=150, s=3.0,
    ),
    "gpu-nano": dict(
        model="gpt-nano", data="shared", vocab_size=32000, seq_len=256, batch_size=64, steps=3000,
        lrs="5e-4,1e-3,2e-3", seeds="0", arms="uniform,llr", eval_every=250, eval_windows=1024,
        interval=150, s=3.0,
    ),
}

DEFAULTS: dict[str, Any] = dict(
    model="cpu", data="sample", data_dir=None, vocab_size=8192, tokenizer_train_chars=50_000_000,
    seq_len=128, batch_size=32, steps=120, lrs="1e-3", seeds="0", arms="uniform,llr",
    eval_every=20, eval_windows=128, eval_batch_size=None, warmup=0.1, min_lr_ratio=0.1,
    weight_decay=0.1, beta1=0.9, beta2=0.95, clip=1.0, s=3.0, muon_s=2.0, interval=20,
    grad_phase=0.05, active_until=1.0, ramp_steps=0, backend="auto", muon_lr_ratio=10.0, arm_lr_scale=None,
    tie_embeddings=None, device="auto", dtype="auto", compile=False, threads="auto", cache_dir=None,
    out=None, publish=None, no_progress=False, no_plots=False, reference=None,
)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """LR factor for 0-based ``step``: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio``.

    The factor of step t multiplies the LR used by the t-th optimizer step (LambdaLR calls it with t).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _csv(s: str | list, cast: Callable) -> list:
    return [cast(x) for x in (s.split(",") if isinstance(s, str) else s) if str(x).strip() != ""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI: a preset fills every option; options given on the command line override it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-demo", choices=sorted(RUN_PRESETS), help="run preset (default cpu-demo)")
    ap.add_argument("--out", default=None, help="run directory (default runs/<timestamp>-<preset>)")
    ap.add_argument("--publish", default=None, help="also write results to PREFIX.md and PREFIX.json (e.g. benchmarks/results/train_cpu_demo)")
    ap.add_argument("--no-progress", action="store_true", default=None, help="no tqdm bars (log lines instead)")
    ap.add_argument("--no-plots", action="store_true", default=None)
    ap.add_argument("--reference", default=None, help="metrics.json of a published run (the README's table) to compare "
                    "this run against at the end; 'none': no comparison (cpu-demo: benchmarks/results/train_cpu_demo.json)")
    g = ap.add_argument_group("model and data")
    g.add_argument("--model", choices=sorted(models.MODEL_PRESETS), help="model size preset")
    g.add_argument("--tie-embeddings", dest="tie_embeddings", action="store_true", default=None)
    g.add_argument("--untie-embeddings", dest="tie_embeddings", action="store_false")
    g.add_argument("--data", help="'sample' (embedded), 'shared' (../shared/data), a .txt/.xz file, or a folder with *train*/*valid* files")
    g.add_argument("--data-dir", help="corpus folder for --data shared (default ../shared/data)")
    g.add_argument("--vocab-size", type=int)
    g.add_argument("--tokenizer-train-chars", type=int, help="train the BPE on at most this many characters")
    g.add_argument("--seq-len", type=int)
    g.add_argument("--cache-dir", help="tokenizer/token-id cache (default .cache/llr_data, or $LLR_CACHE_DIR)")
    g = ap.add_argument_group("training")
    g.add_argument("--arms", help=f"comma list from {','.join(ARMS)}")
    g.add_argument("--lrs", help="comma list of (AdamW) learning rates; Muon arms use lr x --muon-lr-ratio for matrices")
    g.add_argument("--seeds", help="comma list of seeds (init and data order)")
    g.add_argument("--steps", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--warmup", type=float, help="warmup fraction of steps (default 0.1)")
    g.add_argument("--min-lr-ratio", type=float, help="cosine floor as a fraction of the peak LR (default 0.1)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--beta1", type=float)
    g.add_argument("--beta2", type=float)
    g.add_argument("--clip", type=float, help="gradient-norm clip (default 1.0; 0 = off)")
    g.add_argument("--muon-lr-ratio", type=float, help="Muon matrix LR / AdamW LR (paper: 10)")
    g.add_argument("--arm-lr-scale", help="per-arm LR / --lrs, e.g. 'lars=2.5,lamb=25,sharpness=0.1' (the default: the "
                   "paper's Table 1 ratios)")
    g = ap.add_argument_group("LLR")
    g.add_argument("--s", type=float, help="LLR upper ratio with AdamW (paper: 3)")
    g.add_argument("--muon-s", type=float, help="LLR upper ratio with Muon (paper: 2)")
    g.add_argument("--interval", type=int, help="steps between alpha updates (paper: 500)")
    g.add_argument("--grad-phase", type=float, help="fraction of training using gradient alphas (paper: 0.05)")
    g.add_argument("--active-until", type=float)
    g.add_argument("--ramp-steps", type=int)
    g.add_argument("--backend", help="llr_kernels backend: auto|triton|cpp|torch")
    g = ap.add_argument_group("evaluation and system")
    g.add_argument("--eval-every", type=int)
    g.add_argument("--eval-windows", type=int, help="number of validation windows (seq_len tokens each)")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--device", help="auto|cpu|cuda|cuda:N")
    g.add_argument("--dtype", help="auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (GPU)")
    g.add_argument("--threads", help="torch CPU threads: a number, or 'auto' (default: the cores not already busy "
                   "by the 1-minute load average, at least 1; oversubscribed cores make every op many times slower)")
    args = ap.parse_args(argv)
    cfg = {**DEFAULTS, **RUN_PRESETS[args.preset]}
    for k, v in vars(args).items():
        if v is not None:
            cfg[k] = v
    cfg["arms"] = _csv(cfg["arms"], str)
    cfg["lrs"] = _csv(cfg["lrs"], float)
    cfg["seeds"] = _csv(cfg["seeds"], int)
    for a in cfg["arms"]:
        if a not in ARMS:
            ap.error(f"unknown arm {a!r}; choose from {', '.join(ARMS)}")
    if not cfg["lrs"] or not cfg["seeds"] or not cfg["arms"]:
        ap.error("--lrs, --seeds and --arms must each name at least one value")
    return argparse.Namespace(**cfg)


# ----------------------------------------------------------------------------- optimizers


def _llr_classes() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        from llr_kernels import LLRAdamW

        out["LLRAdamW"] = LLRAdamW
    except ImportError as e:
        out["LLRAdamW_error"] = str(e)
    try:
        from llr_kernels import LLRMuon  # type: ignore[attr-defined]

        out["LLRMuon"] = LLRMuon
    except ImportError as e:
        try:  # written but not yet exported at the top level
            from llr_kernels.optim.muon import LLRMuon  # type: ignore[no-redef]

            out["LLRMuon"] = LLRMuon
        except ImportError:
            out["LLRMuon_error"] = str(e)
    return out


def _construct(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an optimizer class with the keyword arguments its signature accepts; say which were dropped."""
    import inspect

    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        dropped = sorted(k for k in kwargs if k not in params)
        if dropped:
            print(f"[run] note: {cls.__name__} does not take {dropped}; using its defaults", flush=True)
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return cls(*args, **kwargs)


def arm_lr_scale(a: argparse.Namespace) -> dict[str, float]:
    """Each arm's LR as a multiple of --lrs: the paper's Table 1 ratios, overridden by --arm-lr-scale."""
    out = dict(ARM_LR_SCALE)
    for item in _csv(a.arm_lr_scale or "", str):
        name, _, value = item.partition("=")
        if name not in ARMS or not value:
            raise SystemExit(f"--arm-lr-scale: expected arm=number with an arm from {', '.join(ARMS)}, got {item!r}")
        out[name] = float(value)
    return out


def arm_unavailable(arm: str) -> str | None:
    """None if the arm can run here, else why not."""
    cls = _llr_classes()
    if arm in ("llr",) + POLICY_ARMS and "LLRAdamW" not in cls:
        return f"llr_kernels.LLRAdamW not importable ({cls.get('LLRAdamW_error')})"
    if arm == "llr-muon" and "LLRMuon" not in cls:
        return f"llr_kernels.LLRMuon not importable ({cls.get('LLRMuon_error')})"
    if arm == "muon" and not hasattr(torch.optim, "Muon"):
        return f"torch {torch.__version__} has no torch.optim.Muon"
    return None


def _muon_split(model: models.LanguageModel) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hidden 2-D matrices (Muon) vs embeddings, head, norms, biases (AdamW)."""
    seen, hidden, rest = set(), [], []
    special = {id(model.token_embedding.weight), id(model.lm_head.weight)}
    if model.cfg.arch == "gpt":
        special.add(id(model.wpe.weight))
    for _, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (hidden if p.dim() == 2 and id(p) not in special else rest).append(p)
    return hidden, rest


def build_optimizers(arm: str, model: models.LanguageModel, lr: float, a: argparse.Namespace, cuda: bool) -> list[torch.optim.Optimizer]:
    """The optimizer(s) of one arm; every one gets the same warmup+cosine LambdaLR."""
    betas, wd = (a.beta1, a.beta2), a.weight_decay
    fast = {"fused": True} if cuda else {"foreach": True}
    if arm in ("uniform", "uniform-smax"):
        peak = lr * (a.s if arm == "uniform-smax" else 1.0)
        return [torch.optim.AdamW(model.parameters(), lr=peak, betas=betas, weight_decay=wd, **fast)]
    llr_kw = dict(interval=a.interval, total_steps=a.steps, grad_phase=a.grad_phase, active_until=a.active_until,
                  ramp_steps=a.ramp_steps, backend=a.backend)
    if arm == "llr":
        return [_construct(_llr_classes()["LLRAdamW"], model, lr=lr, betas=betas, weight_decay=wd, s=a.s, **llr_kw)]
    scale = arm_lr_scale(a).get(arm, 1.0)
    wd = ARM_WEIGHT_DECAY.get(arm, wd)
    if arm in POLICY_ARMS:
        policy: Any = arm
        if arm == "rlrs":  # the paper's component cosines, over this run's global cosine floor
            from llr_kernels.policies import RLRS_END, RLRS_START, RLRSConfig

            policy = RLRSConfig(dict(RLRS_START), dict(RLRS_END), total_steps=a.steps, final_lr_ratio=a.min_lr_ratio)
        return [_construct(_llr_classes()["LLRAdamW"], model, lr=lr * scale, betas=betas, weight_decay=wd, s=a.s,
                           policy=policy, **llr_kw)]
    if arm in ("lars", "lamb"):
        from llr_kernels.optim.trust_ratio import LAMB, LARS

        if arm == "lars":
            return [LARS(model.parameters(), lr=lr * scale, momentum=0.9, weight_decay=wd)]
        return [LAMB(model.parameters(), lr=lr * scale, betas=betas, weight_decay=wd)]
    if arm == "muon":
        hidden, rest = _muon_split(model)
        return [
            torch.optim.Muon(hidden, lr=lr * a.muon_lr_ratio, weight_decay=wd),
            torch.optim.AdamW(rest, lr=lr, betas=betas, weight_decay=wd, **fast),
        ]
    if arm == "llr-muon":
        cls = _llr_classes()["LLRMuon"]
        return [_construct(cls, model, lr=lr * a.muon_lr_ratio, adamw_lr=lr, adamw_betas=betas, weight_decay=wd,
                           s=a.muon_s, **llr_kw)]
    raise ValueError(f"unknown arm {arm!r}")


# ----------------------------------------------------------------------------- one run


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list, device: torch.device, autocast) -> float:
    """Mean next-token cross-entropy over the fixed validation windows."""
    model.eval()
    tot, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            _, loss = model(x, y)
        tot += float(loss) * y.numel()
        n += y.numel()
    model.train()
    return tot / n


def _llr_optimizer(opts: list) -> Any:
    """The arm's LLR optimizer (the one with layer_stats), or None."""
    return next((o for o in opts if hasattr(o, "layer_stats")), None)


def train_one(
    arm: str, lr: float, seed: int, a: argparse.Namespace, data: data_mod.TokenData, mcfg: models.ModelConfig,
    device: torch.device, valid_batches: list, label: str, progress: bool,
) -> dict[str, Any]:
    """Train one (arm, lr, seed) and return its metrics."""
    cuda = device.type == "cuda"
    use_bf16 = a.dtype == "bf16" or (a.dtype == "auto" and cuda)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    torch.manual_seed(seed)
    model = models.build_model(mcfg).to(device)
    fwd = torch.compile(model) if a.compile else model
    rng = np.random.default_rng(seed)  # data order: identical for every arm and LR of this seed
    opts = build_optimizers(arm, model, lr, a, cuda)
    warm = int(round(a.warmup * a.steps))
    sched_fn = lambda t: warmup_cosine(t, a.steps, warm, a.min_lr_ratio)  # noqa: E731
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, sched_fn) for o in opts]
    params = list({id(p): p for p in model.parameters()}.values())
    tokens_per_step = a.batch_size * a.seq_len
    rec: dict[str, Any] = dict(arm=arm, lr=lr, seed=seed, steps=a.steps, tokens_per_step=tokens_per_step,
                               train_loss=[], val=[], layer_stats=None, status="ok")
    stats_every = max(1, min(a.interval, a.eval_every))
    # per snapshot: the layers' values, and where the alphas came from ("grad": the gradient phase, "weight")
    stats: dict[str, Any] = {"steps": [], "alpha": [], "multiplier": [], "lr": [], "source": []}
    eval_s = 0.0

    def do_eval(step: int) -> float:
        nonlocal eval_s
        t0 = time.perf_counter()
        v = evaluate(fwd, valid_batches, device, autocast)
        eval_s += time.perf_counter() - t0
        rec["val"].append({"step": step, "loss": v, "ppl": math.exp(min(v, 50.0))})
        return v

    do_eval(0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=a.steps, desc=label, unit="step", dynamic_ncols=True, mininterval=0.5, leave=True)
    t_train = 0.0
    t_log = time.perf_counter()
    last_val = rec["val"][-1]["loss"]
    for step in range(a.steps):
        t0 = time.perf_counter()
        x, y = data.batch(rng, a.batch_size, a.seq_len)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            _, loss = fwd(x, y)
        loss.backward()
        if a.clip and a.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.clip)
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        lv = float(loss.detach())  # one sync per step; the loss curve needs it
        t_train += time.perf_counter() - t0
        if not math.isfinite(lv):
            rec["status"] = f"diverged at step {step} (loss {lv})"
            rec["train_loss"].append(lv)
            break
        rec["train_loss"].append(lv)
        done = step + 1
        if step % stats_every == 0 or done == a.steps:
            llr_opt = _llr_optimizer(opts)
            if llr_opt is not None:
                snap = llr_opt.layer_stats()
                stats["names"] = [d["name"] for d in snap]
                stats["kinds"] = [d["kind"] for d in snap]
                stats["steps"].append(step)
                stats["source"].append(getattr(llr_opt.policy, "last_source", None))
                for key in ("alpha", "multiplier", "lr"):
                    stats[key].append([_finite_or_none(d[key]) for d in snap])
        if done % a.eval_every == 0 or done == a.steps:
            last_val = do_eval(done)
        tps = done * tokens_per_step / max(t_train, 1e-9)
        if bar is not None:
            bar.set_postfix_str(f"loss {lv:.3f} val {last_val:.3f} {tps:,.0f} tok/s", refresh=False)
            bar.update(1)
        elif time.perf_counter() - t_log > 30 or done == a.steps:
            t_log = time.perf_counter()
            print(f"{label} step {done}/{a.steps} loss {lv:.3f} val {last_val:.3f} {tps:,.0f} tok/s", flush=True)
    if bar is not None:
        bar.close()
    if rec["status"] == "ok" and rec["val"][-1]["step"] != a.steps:
        do_eval(a.steps)
    llr_s = sum(float(getattr(o, "llr_update_seconds", 0.0)) for o in opts)
    has_llr = any(hasattr(o, "llr_update_seconds") for o in opts)
    steps_done = len(rec["train_loss"])
    rec.update(
        steps_done=steps_done,
        tokens_seen=steps_done * tokens_per_step,
        final_val_loss=rec["val"][-1]["loss"],
        final_val_ppl=rec["val"][-1]["ppl"],
        train_seconds=t_train,
        eval_seconds=eval_s,
        tokens_per_second=steps_done * tokens_per_step / max(t_train, 1e-9),
        llr_update_seconds=llr_s if has_llr else None,
        llr_overhead=(llr_s / t_train) if has_llr and t_train > 0 else None,
        layer_stats=stats if stats["steps"] else None,
    )
    llr_opt = _llr_optimizer(opts)
    if llr_opt is not None:
        from llr_kernels import format_layer_stats

        rec["hill_status"] = {d["name"]: d.get("status") for d in llr_opt.layer_stats()}
        print(f"{label}: per-layer PL_Alpha_Hill and LR at the end of training\n{format_layer_stats(llr_opt)}", flush=True)
    return rec


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ----------------------------------------------------------------------------- main


def cpu_threads(spec: str | int | None) -> int:
    """Threads for torch on CPU. 'auto': cores left idle by other processes (1-minute load), at least 1.

    On a shared machine two threads competing with other busy processes ran 5x slower per step than
    one thread (measured on the 2-core dev box), so 'auto' backs off instead of oversubscribing.
    """
    if spec not in (None, "auto"):
        n = int(spec)
        if n < 1:
            raise SystemExit(f"--threads must be >= 1 or 'auto', got {spec!r}")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu")
    return dev


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "python/train.py", *args])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (lr, seed, arm) of the comparison, write the run directory, print the table."""
    t_start = time.perf_counter()
    a = parse_args(argv)
    reference = load_reference(a.reference)  # read now: --publish may overwrite it at the end
    torch.set_num_threads(cpu_threads(a.threads))
    device = resolve_device(a.device)
    out = Path(a.out or (REPO / "runs" / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{a.preset}"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"[run] {command_line(argv)}\n[run] output: {out}", flush=True)
    data = data_mod.load_data(a.data, a.vocab_size, data_dir=a.data_dir, cache_dir=a.cache_dir,
                              tokenizer_train_chars=a.tokenizer_train_chars)
    over = {"vocab_size": data.vocab_size, "max_seq_len": a.seq_len}
    if a.tie_embeddings is not None:
        over["tie_embeddings"] = a.tie_embeddings
    mcfg = models.model_config(a.model, **over)
    eval_bs = a.eval_batch_size or a.batch_size
    valid_batches = data.valid_batches(eval_bs, a.seq_len, a.eval_windows)
    n_valid_tokens = sum(y.numel() for _, y in valid_batches)
    probe = models.build_model(mcfg)
    n_params, n_params_ne = probe.num_params(), probe.num_params(non_embedding=True)
    del probe
    skipped = {arm: why for arm in a.arms if (why := arm_unavailable(arm))}
    for arm, why in skipped.items():
        print(f"[run] skipping arm {arm!r}: {why}", flush=True)
    arms = [x for x in a.arms if x not in skipped]
    jobs = [(lr, seed, arm) for lr in a.lrs for seed in a.seeds for arm in arms]
    print(f"[run] model {a.model} ({mcfg.arch}, d={mcfg.d_model}, L={mcfg.n_layers}, {n_params / 1e6:.2f}M params, "
          f"{n_params_ne / 1e6:.2f}M non-embedding), {a.steps} steps x {a.batch_size * a.seq_len} tokens, "
          f"{len(jobs)} runs on {device}", flush=True)
    metrics: dict[str, Any] = {
        "command": command_line(argv),
        "preset": a.preset,
        "config": {**vars(a), "arm_lr_scale_used": arm_lr_scale(a), "arm_weight_decay": dict(ARM_WEIGHT_DECAY)},
        "model": mcfg.to_dict(),
        "params": n_params,
        "params_non_embedding": n_params_ne,
        "data": data.info,
        "valid_tokens_evaluated": n_valid_tokens,
        "machine": machine_info(device),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "skipped_arms": skipped,
        "runs": [],
    }
    path = out / "metrics.json"
    for i, (lr, seed, arm) in enumerate(jobs):
        label = f"[{i + 1}/{len(jobs)}] {arm} lr={lr:g} seed={seed}"
        rec = train_one(arm, lr, seed, a, data, mcfg, device, valid_batches, label, progress=not a.no_progress)
        metrics["runs"].append(rec)
        metrics["wall_seconds"] = time.perf_counter() - t_start
        _write_json(path, metrics)
        print(f"{label}: val loss {rec['final_val_loss']:.4f} ppl {rec['final_val_ppl']:.2f} "
              f"({rec['train_seconds']:.1f} s train, {rec['tokens_per_second']:,.0f} tok/s)"
              + (f", LLR updates {rec['llr_update_seconds']:.3f} s" if rec["llr_update_seconds"] is not None else ""), flush=True)
    metrics["wall_seconds"] = time.perf_counter() - t_start
    _write_json(path, metrics)
    md = report.write_report(out, metrics, plots=not a.no_plots)
    if a.publish:
        pub = Path(a.publish)
        pub.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{pub}.md").write_text(md)
        _write_json(Path(f"{pub}.json"), metrics)
    print("\n" + md, flush=True)
    if reference is not None:
        print(report.compare_to_reference(metrics, *reference), flush=True)
    print(f"[run] wrote {path}, {out / 'results.md'} and plots in {time.perf_counter() - t_start:.1f} s total", flush=True)
    return metrics


def load_reference(spec: str | None) -> tuple[dict[str, Any], str] | None:
    """(metrics, path) of the published run named by --reference (relative to the repository), or None."""
    if spec in (None, "", "none"):
        return None
    path = Path(spec) if Path(spec).is_absolute() else REPO / spec
    if not path.exists():
        print(f"[run] no comparison: the reference {path} does not exist", flush=True)
        return None
    return json.loads(path.read_text()), str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
