"""The optimizer-step kernels as ``torch.library`` ops, so that a whole step traces under ``torch.compile``.

Namespace ``llr_kernels`` (schemas in ``_SCHEMAS``). Every op takes the concrete backend chosen by
``llr_kernels.ops.dispatch`` (at plan-build time, by the optimizers) as its last argument and runs that implementation;
the tensors each op writes are declared in its schema, so functionalization (aot_eager, inductor) and CUDA-graph
trees see every in-place write, and each op has a fake implementation for tracing:

* ``adamw_step``: the multi-tensor multi-LR AdamW step (contract: ``ops.adamw_torch``). Returns the global grad
  norm when ``max_grad_norm`` is given, else a 0-d zero (a custom op cannot return None conditionally).
* ``muon_momentum``, ``muon_apply``: Muon's elementwise phases (contract: ``ops.muon_torch``).
* ``llr_tick``: ends a compiled optimizer step: counts compiled steps on device and runs the optimizer's host
  bookkeeping (``LLROptimizer._after_step``) when the graph runs, so the host step counter never enters traced
  code (dynamo would specialise a changing int and recompile at every step). Eager steps call the bookkeeping
  directly. Tagged cudagraph_unsafe (see ``_tags``).

Layouts: the fused kernels stream memory linearly. A tensor whose param, grad and state are all contiguous, or
all dense with the same strides (channels_last, a transposed view), goes to the kernel (the latter as flat views
of the same memory); any other (a parameter that is a slice of a larger tensor, a grad with other strides) is
stepped by the torch reference, with the same clip factor. The ops are registered with ``torch.library.Library``
(define + impl) rather than ``torch.library.custom_op``: same semantics, about 5 us instead of 60-120 us of
Python overhead per call (measured on the 2-core dev machine).
"""
from __future__ import annotations

import itertools
import weakref
from typing import Callable, Optional

import torch
from torch import Tensor

from .dispatch import implementation
from .adamw.naive import adamw_step_torch, clip_coefficient, global_grad_norm
from .muon.naive import muon_apply_torch, muon_momentum_torch

_SCHEMAS = {
    "adamw_step": (
        "adamw_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor lrs, Tensor weight_decays, Tensor(e!) steps, float beta1, float beta2, "
        "float eps, bool amsgrad, bool maximize, Tensor? inv_scale, Tensor? found_inf, float? max_grad_norm, "
        "bool capturable, str backend) -> Tensor"
    ),
    "muon_momentum": (
        "muon_momentum(Tensor[] grads, Tensor(a!)[] momentum_buffers, Tensor(b!)[] updates, float momentum, "
        "bool nesterov, str backend) -> ()"
    ),
    "muon_apply": (
        "muon_apply(Tensor(a!)[] params, Tensor[] updates, Tensor decays, Tensor step_sizes, bool capturable, "
        "str backend) -> ()"
    ),
    "llr_tick": "llr_tick(Tensor(a!) counter, int handle) -> ()",
}

_lib = torch.library.Library("llr_kernels", "DEF")  # noqa: TOR901 - kept alive for the process


# ----- layouts ---------------------------------------------------------------------------------------
def _dense(t: Tensor) -> bool:
    """True when t covers exactly numel consecutive elements of memory in some dimension order (no gaps, no
    overlap): contiguous, channels_last, any permutation of those."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _layout(t: Tensor) -> tuple:
    return tuple((sz, st) for sz, st in zip(t.shape, t.stride()) if sz != 1)


def _flat(t: Tensor) -> Tensor:
    return t.as_strided((t.numel(),), (1,))


def kernel_views(columns: list[list[Tensor]]) -> tuple[list[list[Tensor]], list[bool] | None]:
    """For tensors given column by column (params, grads, states...): the columns with every row the kernels can
    stream (all contiguous, or all dense with one layout: replaced by flat views of the same memory), and per row
    whether it can go to a kernel at all (None: every row can, the common case, checked first and fast)."""
    contiguous = Tensor.is_contiguous
    if all(all(map(contiguous, col)) for col in columns):
        return columns, None
    n = len(columns[0])
    ok = [True] * n
    out = [list(col) for col in columns]
    for i in range(n):
        row = [col[i] for col in columns]
        if all(t.is_contiguous() for t in row):
            continue
        layout = _layout(row[0])
        if _dense(row[0]) and all(_layout(t) == layout for t in row[1:]):
            for col in out:
                col[i] = _flat(col[i])
        else:
            ok[i] = False
    return out, ok


def _pick(xs: list[Tensor], ids: list[int]) -> list[Tensor]:
    return [xs[i] for i in ids]


# ----- adamw_step --------------------------------------------------------------------------------------
def adamw_step_impl(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                    max_exp_avg_sqs: list[Tensor], lrs: Tensor, weight_decays: Tensor, steps: Tensor, beta1: float,
                    beta2: float, eps: float, amsgrad: bool, maximize: bool, inv_scale: Optional[Tensor],
                    found_inf: Optional[Tensor], max_grad_norm: Optional[float], capturable: bool,
                    backend: str) -> Tensor:
    """The op's eager implementation (``max_exp_avg_sqs`` is empty unless amsgrad)."""
    fn = implementation("adamw_step", backend)
    kw = dict(beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad, maximize=maximize, capturable=capturable)
    maxs = list(max_exp_avg_sqs) if amsgrad else None
    if backend != "torch" and params:
        cols = [params, grads, exp_avgs, exp_avg_sqs] + ([maxs] if amsgrad else [])
        cols, ok = kernel_views(cols)
        params, grads, exp_avgs, exp_avg_sqs = cols[:4]
        maxs = cols[4] if amsgrad else None
        if ok is not None and not all(ok):
            norm = _adamw_split(fn, ok, params, grads, exp_avgs, exp_avg_sqs, maxs, lrs, weight_decays, steps,
                                inv_scale, found_inf, max_grad_norm, kw)
            return _norm_out(norm, lrs)
    norm = fn(params, grads, exp_avgs, exp_avg_sqs, maxs, lrs, weight_decays, steps, inv_scale=inv_scale,
              found_inf=found_inf, max_grad_norm=max_grad_norm, **kw)
    return _norm_out(norm, lrs)


def _norm_out(norm: Tensor | None, lrs: Tensor) -> Tensor:
    if norm is None:
        return torch.zeros((), dtype=torch.float32, device=lrs.device)
    return norm.reshape(()).to(device=lrs.device, dtype=torch.float32)


def _adamw_split(fn: Callable, ok: list[bool], params, grads, exp_avgs, exp_avg_sqs, maxs, lrs, weight_decays, steps,
                 inv_scale, found_inf, max_grad_norm, kw) -> Tensor | None:
    """Rows the kernel can stream through ``fn``, the others one by one through the torch reference; one clip
    factor for all (from the norm of every grad). Gathers the kernel rows' LRs with an index tensor: a host copy,
    so tensors of such layouts are not CUDA-graph capturable."""
    norm, scale = None, inv_scale
    if max_grad_norm is not None:
        norm = global_grad_norm(grads, inv_scale).float()
        coef = clip_coefficient(norm, max_grad_norm)
        scale = (coef if inv_scale is None else coef * inv_scale.float()).reshape(1)
    fast = [i for i in range(len(params)) if ok[i]]
    if fast:
        sel = torch.tensor(fast, device=steps.device)
        sub_steps = steps[sel]
        fn(_pick(params, fast), _pick(grads, fast), _pick(exp_avgs, fast), _pick(exp_avg_sqs, fast),
           None if maxs is None else _pick(maxs, fast), lrs[sel], weight_decays[sel], sub_steps, inv_scale=scale,
           found_inf=found_inf, max_grad_norm=None, **kw)
        steps[sel] = sub_steps
    for i in (i for i in range(len(params)) if not ok[i]):
        adamw_step_torch([params[i]], [grads[i]], [exp_avgs[i]], [exp_avg_sqs[i]], None if maxs is None else [maxs[i]],
                         lrs[i:i + 1], weight_decays[i:i + 1], steps[i:i + 1], inv_scale=scale, found_inf=found_inf,
                         max_grad_norm=None, **kw)
    return norm


def _adamw_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lrs, weight_decays, steps, beta1, beta2,
                     eps, amsgrad, maximize, inv_scale, found_inf, max_grad_norm, capturable, backend):
    return torch.empty((), dtype=torch.float32, device=lrs.device)


# ----- Muon --------------------------------------------------------------------------------------------
def muon_momentum_impl(grads: list[Tensor], momentum_buffers: list[Tensor], updates: list[Tensor], momentum: float,
                       nesterov: bool, backend: str) -> None:
    fn = implementation("muon_momentum", backend)
    if backend != "torch" and grads:
        (grads, momentum_buffers, updates), ok = kernel_views([grads, momentum_buffers, updates])
        if ok is not None and not all(ok):
            bad = [i for i in range(len(ok)) if not ok[i]]
            muon_momentum_torch(_pick(grads, bad), _pick(momentum_buffers, bad), _pick(updates, bad),
                                momentum=momentum, nesterov=nesterov)
            good = [i for i in range(len(ok)) if ok[i]]
            grads, momentum_buffers, updates = _pick(grads, good), _pick(momentum_buffers, good), _pick(updates, good)
    fn(grads, momentum_buffers, updates, momentum=momentum, nesterov=nesterov)


def muon_apply_impl(params: list[Tensor], updates: list[Tensor], decays: Tensor, step_sizes: Tensor, capturable: bool,
                    backend: str) -> None:
    fn = implementation("muon_apply", backend)
    if backend != "torch" and params:
        (params, updates), ok = kernel_views([params, updates])
        if ok is not None and not all(ok):  # e.g. a transposed-view parameter (its update buffer is contiguous): torch, one by one
            for i in (i for i in range(len(ok)) if not ok[i]):
                muon_apply_torch([params[i]], [updates[i]], decays[i:i + 1], step_sizes[i:i + 1], capturable=capturable)
            good = [i for i in range(len(ok)) if ok[i]]
            if not good:
                return
            sel = torch.tensor(good, device=decays.device)
            params, updates, decays, step_sizes = _pick(params, good), _pick(updates, good), decays[sel], step_sizes[sel]
    fn(params, updates, decays, step_sizes, capturable=capturable)


# ----- the step tick -----------------------------------------------------------------------------------
_tick_ids = itertools.count(1)
_tickers: dict[int, weakref.WeakMethod] = {}


def register_tick(callback: Callable[[], None]) -> int:
    """A handle for ``llr_tick``: the op calls ``callback`` (a bound method, held weakly) once per run."""
    handle = next(_tick_ids)
    _tickers[handle] = weakref.WeakMethod(callback)
    weakref.finalize(callback.__self__, _tickers.pop, handle, None)
    return handle


def llr_tick_impl(counter: Tensor, handle: int) -> None:
    counter.add_(1)
    ref = _tickers.get(handle)
    callback = None if ref is None else ref()
    if callback is not None:
        callback()


# ----- registration ------------------------------------------------------------------------------------
def _tags(name: str) -> tuple:
    """llr_tick runs host code at every step, which a CUDA-graph replay would skip: tagged cudagraph_unsafe, so
    torch.compile(mode="reduce-overhead") keeps it out of its CUDA graphs (capture manually instead, with
    capturable=True and LLROptimizer.after_replay)."""
    unsafe = getattr(torch.Tag, "cudagraph_unsafe", None)
    return (unsafe,) if name == "llr_tick" and unsafe is not None else ()


def _register() -> None:
    impls = {"adamw_step": adamw_step_impl, "muon_momentum": muon_momentum_impl, "muon_apply": muon_apply_impl,
             "llr_tick": llr_tick_impl}
    fakes = {"adamw_step": _adamw_step_fake, "muon_momentum": lambda *a: None, "muon_apply": lambda *a: None,
             "llr_tick": lambda *a: None}
    for name, schema in _SCHEMAS.items():
        if hasattr(torch.ops.llr_kernels, name):  # another copy of this module registered it in this process
            continue
        _lib.define(schema, tags=_tags(name))
        _lib.impl(name, impls[name], "CompositeExplicitAutograd")
        torch.library.register_fake(f"llr_kernels::{name}", fakes[name], lib=_lib)


_register()

IMPLS = {
    torch.ops.llr_kernels.adamw_step.default: adamw_step_impl,
    torch.ops.llr_kernels.muon_momentum.default: muon_momentum_impl,
    torch.ops.llr_kernels.muon_apply.default: muon_apply_impl,
    torch.ops.llr_kernels.llr_tick.default: llr_tick_impl,
}  # op -> its Python implementation (tests run them under a TorchFunctionMode to see every call inside)

adamw_step = torch.ops.llr_kernels.adamw_step.default
muon_momentum = torch.ops.llr_kernels.muon_momentum.default
muon_apply = torch.ops.llr_kernels.muon_apply.default
llr_tick = torch.ops.llr_kernels.llr_tick.default
