"""Cached multi-tensor work tables shared by the Triton and CUDA AdamW steps.

A call steps a list of tensors. They are split into *buckets* of equal (param, grad, state) dtypes, one kernel
launch each. For a bucket, two device tables describe the work:

* ``work`` (int64, shape (W, 2)): one row per (tensor, chunk): local tensor index, first element. It depends
  only on the sizes and dtypes of the tensors, and is what :func:`build_count` counts.
* ``meta`` (int64, shape (n, META_COLS)): per tensor its addresses (param, grad, exp_avg, exp_avg_sq,
  max_exp_avg_sq), numel, index into the caller's lrs / weight_decays / steps buffers, and number of chunks.
  It is re-uploaded (without rebuilding ``work``) when an address changes, e.g. when grads are re-allocated.

Tables are cached by the exact addresses + sizes + dtypes of the tensors, so steady-state steps do no host to
device traffic, and the values in the LR / weight-decay / step buffers are read in the kernel: changing them
costs nothing. A per-bucket int32 ``counters`` buffer lets the last chunk of each tensor bump its step counter
inside the same launch (see adamw_triton.py).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor

META_COLS = 8  # p, g, m, v, vmax addresses, numel, global index, number of chunks
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_CACHE_SIZE = 64
# dtypes the fused kernels (Triton and the extension's CUDA kernel) have variants for; grads share their param's
# dtype (as torch requires of .grad); other dtypes go through the torch reference (with_torch_fallback)
PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STATE_DTYPES = (torch.float32, torch.bfloat16)

_stats = {"work_builds": 0, "meta_uploads": 0}


def build_count() -> int:
    """How many work tables have been built in this process (tests assert it does not move)."""
    return _stats["work_builds"]


def meta_upload_count() -> int:
    """How many per-tensor address tables have been uploaded in this process."""
    return _stats["meta_uploads"]


def clear_cache() -> None:
    """Drop every cached plan (tables are rebuilt on next use)."""
    _plans.clear()
    _structures.clear()


@dataclass
class Bucket:
    """The tensors of one dtype combination and their device tables."""

    indices: list[int]  # positions in the caller's lists
    param_dtype: torch.dtype
    grad_dtype: torch.dtype
    state_dtype: torch.dtype
    work: Tensor  # (W, 2) int64
    meta: Tensor | None = None  # (n, META_COLS) int64
    counters: Tensor | None = None  # (n,) int32, zero between launches
    work_offset: int = 0  # first row of this bucket in the plan-wide partial-norm buffer
    aligned: bool = False  # every address 16-byte aligned (kernels may use vector loads)

    @property
    def num_work(self) -> int:
        return self.work.shape[0]


@dataclass
class Plan:
    """Every bucket of one call signature, plus a scratch buffer for per-chunk grad norms."""

    buckets: list[Bucket]
    total_work: int
    partials: Tensor | None = None
    extra: dict = field(default_factory=dict)


# structure key -> (buckets without meta): shared by plans that differ only by addresses
_structures: OrderedDict = OrderedDict()
# full key (addresses included) -> Plan
_plans: OrderedDict = OrderedDict()


def _lru_get(cache: OrderedDict, key):
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
    return hit


def _lru_put(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _validate(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad: bool) -> None:
    device = params[0].device
    for i, p in enumerate(params):
        if p.dtype not in DTYPE_CODES:
            raise TypeError(f"param {i}: unsupported dtype {p.dtype}")
        others = [("grad", grads[i]), ("exp_avg", exp_avgs[i]), ("exp_avg_sq", exp_avg_sqs[i])]
        if amsgrad:
            others.append(("max_exp_avg_sq", max_exp_avg_sqs[i]))
        for name, t in [("param", p)] + others:
            if t.device != device:
                raise ValueError(f"{name} {i} is on {t.device}, expected {device}")
            if not t.is_contiguous():
                raise ValueError(f"{name} {i} must be contiguous")
            if t.numel() != p.numel():
                raise ValueError(f"{name} {i} has {t.numel()} elements, the param has {p.numel()}")
        if exp_avg_sqs[i].dtype != exp_avgs[i].dtype or (amsgrad and max_exp_avg_sqs[i].dtype != exp_avgs[i].dtype):
            raise TypeError(f"param {i}: exp_avg, exp_avg_sq and max_exp_avg_sq must share one dtype")
        if exp_avgs[i].dtype not in (torch.float32, torch.bfloat16, torch.float64):
            raise TypeError(f"param {i}: optimizer state must be float32 or bfloat16, got {exp_avgs[i].dtype}")


def _build_structure(numels, dtypes, chunk: int, device: torch.device) -> list[Bucket]:
    _stats["work_builds"] += 1
    groups: dict[tuple, list[int]] = {}
    for i, dt in enumerate(dtypes):
        groups.setdefault(dt, []).append(i)
    buckets = []
    offset = 0
    for (pdt, gdt, sdt), idx in groups.items():
        rows: list[int] = []
        for local, i in enumerate(idx):
            for start in range(0, max(numels[i], 1), chunk):  # an empty tensor still gets a row (its step)
                rows += (local, start)
        work = torch.tensor(rows, dtype=torch.int64).view(-1, 2)
        buckets.append(Bucket(idx, pdt, gdt, sdt, work.to(device), work_offset=offset))
        offset += work.shape[0]
    return buckets


def get_plan(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    amsgrad: bool,
    chunk: int,
) -> Plan:
    """The cached plan for these tensors (building / re-uploading only what changed)."""
    ptr = Tensor.data_ptr
    vmaxs = max_exp_avg_sqs if amsgrad else exp_avg_sqs  # placeholder addresses when not amsgrad
    key = (
        chunk,
        amsgrad,
        tuple(map(ptr, params)),
        tuple(map(ptr, grads)),
        tuple(map(ptr, exp_avgs)),
        tuple(map(ptr, exp_avg_sqs)),
        tuple(map(ptr, vmaxs)),
        tuple(map(Tensor.numel, params)),
        tuple(t.dtype for t in params),
        tuple(t.dtype for t in exp_avgs),
    )
    plan = _lru_get(_plans, key)
    if plan is not None:
        return plan

    _validate(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad)
    device = params[0].device
    numels = key[7]
    dtypes = [(p.dtype, g.dtype, m.dtype) for p, g, m in zip(params, grads, exp_avgs)]
    skey = (chunk, str(device), numels, tuple(dtypes))
    structure = _lru_get(_structures, skey)
    if structure is None:
        structure = _build_structure(numels, dtypes, chunk, device)
        _lru_put(_structures, skey, structure)

    _stats["meta_uploads"] += 1
    buckets = []
    for b in structure:
        rows = []
        for i in b.indices:
            n = numels[i]
            rows.append([params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
                         vmaxs[i].data_ptr(), n, i, max(1, (n + chunk - 1) // chunk)])
        aligned = all(a % 16 == 0 for r in rows for a in r[:5])
        meta = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
        counters = torch.zeros(len(b.indices), dtype=torch.int32, device=device)
        buckets.append(Bucket(b.indices, b.param_dtype, b.grad_dtype, b.state_dtype, b.work, meta, counters,
                              b.work_offset, aligned))
    total = sum(b.num_work for b in buckets)
    plan = Plan(buckets, total)
    _lru_put(_plans, key, plan)
    return plan


def kernel_supports(p: Tensor, g: Tensor, m: Tensor) -> bool:
    """True when the fused kernels (Triton, and the extension's CUDA kernel) have a variant for this tensor's
    dtypes (see PARAM_DTYPES, STATE_DTYPES)."""
    return p.dtype in PARAM_DTYPES and g.dtype == p.dtype and m.dtype in STATE_DTYPES


def with_torch_fallback(kernel, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lrs, weight_decays, steps, *,
                        max_grad_norm, inv_scale, found_inf, capturable=False, **kw) -> Tensor | None:
    """Tensors the fused ``kernel`` has no variant for (fp64, or grads/state of other dtypes) go through the torch
    reference; the rest through ``kernel``, with one shared clip factor."""
    from .naive import adamw_step_torch, clip_coefficient, global_grad_norm

    ok = [kernel_supports(p, g, m) for p, g, m in zip(params, grads, exp_avgs)]
    idx_ref = [i for i in range(len(params)) if not ok[i]]
    idx = [i for i in range(len(params)) if ok[i]]
    norm = None
    scale = inv_scale
    if max_grad_norm is not None:
        norm = global_grad_norm(grads, inv_scale).float()
        coef = clip_coefficient(norm, max_grad_norm)
        scale = coef if inv_scale is None else coef * inv_scale.float()
        scale = scale.reshape(1)

    def pick(xs, ids):
        return None if xs is None else [xs[i] for i in ids]

    for ids, fn in ((idx_ref, adamw_step_torch), (idx, kernel)):
        if not ids:
            continue
        sel = torch.tensor(ids, device=lrs.device)
        sub_steps = steps[sel].contiguous()
        fn(pick(params, ids), pick(grads, ids), pick(exp_avgs, ids), pick(exp_avg_sqs, ids),
           pick(max_exp_avg_sqs, ids), lrs[sel].contiguous(), weight_decays[sel].contiguous(), sub_steps,
           inv_scale=scale, found_inf=found_inf, max_grad_norm=None, capturable=capturable, **kw)
        steps[sel] = sub_steps
    return norm
