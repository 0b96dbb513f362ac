"""LAMB and LARS: per-tensor trust-ratio optimizers, the LLR paper's layerwise baselines, as torch.optim optimizers.

Both scale each tensor's step by a *trust ratio* computed from that tensor's norms, so every layer moves by a
step proportional to its own weight norm (LARS: You et al. 2017, arXiv 1708.03888, Algorithm 1; LAMB: You et
al. 2019, arXiv 1904.00962, Algorithm 2). Where LLR sets layer LRs from the spectra of the weights, these set
them from norms, at every step.

Two code paths give the same numbers:

* the batched path (``foreach=True``; the default, ``None``, for groups whose tensors are all on an accelerator):
  the elementwise math of a param group runs as ``torch._foreach_*`` ops, the norms of every stepping tensor
  (all groups) come from one ``torch._foreach_norm`` call per (device, dtype), and one device-to-host copy
  brings them to the host, where the trust ratios are computed in float64; the scaled update is then applied
  with foreach ops. It holds one extra param-sized buffer (the updates) for the duration of the step.
* the loop path (``foreach=False``; the default for groups with CPU tensors): the same ops one tensor at a time
  (one host sync per tensor, free on CPU). On CPU it is the faster one: a tensor stays in cache through its
  ~11 passes, where each batched op streams all tensors through memory (20M LLaMA-like params, 2 cores: LAMB
  2.1x, LARS 2.8x faster than the batched path; benchmarks/results/trust_ratio_cpu.md).

On CPU the two are bitwise identical (torch's CPU foreach ops run the per-tensor kernels; tested). On CUDA
the elementwise ops evaluate the same formulas in the same order, but ``_foreach_norm`` reduces in another
order than ``linalg.vector_norm``, so a norm may differ in its last bits (typically <= 2 ulp of float32); the
trust ratio then differs by the same relative amount (~1e-7) and each step's ``lr * r * u`` by a few ulp of
*its own* magnitude, far below 1 ulp of the weight when the step is small against the weight, so the two paths
then differ by at most ~1 ulp of the weight per step (the expected bound; not measured here: no GPU).

The trust ratios of the last step are kept in ``last_trust_ratios`` for logging: a float64 CPU tensor with one
entry per parameter, in ``param_groups`` order (``[p for g in opt.param_groups for p in g["params"]]``); 1.0
for tensors excluded from the trust ratio, NaN for tensors without a gradient at that step (not stepped).

Which tensors use the trust ratio: by default every tensor with 2 or more dims; 1-D / 0-D tensors (norm weights,
biases: the ``vector`` kind of ``llr_kernels.layers.classify_parameters``) are excluded and take r = 1, as
widely used implementations do (TF's LAMB ``exclude_from_layer_adaptation``, SimCLR's LARS). Change it with
``exclude_from_trust`` (a predicate on the tensor, or None to exclude nothing), or per param group with
``trust=True`` / ``trust=False`` (overrides the predicate for the whole group). With named layers::

    vectors = {id(l.param) for l in classify_parameters(model) if l.kind == "vector"}
    opt = LAMB(model.parameters(), exclude_from_trust=lambda p: id(p) in vectors)

Sharded parameters (FSDP2 / DTensor): the elementwise math acts on each rank's shard and every norm is the whole
tensor's (reduced over the mesh, one collective per bucket on the batched path), so all ranks compute the same
trust ratios as one process would.

Group LRs are read at every step, so torch.optim.lr_scheduler works; an LR may be a 1-element tensor (read
as a number each step; schedulers update it in place). Every argument is checked at construction (and in
``add_param_group``): a wrong type raises TypeError, a value out of range ValueError, naming the argument.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch.optim import Optimizer

from .._checks import check_betas, check_bool, check_real
from ._dtensor import full, is_dtensor

__all__ = ["LAMB", "LARS", "exclude_vectors"]

TrustPredicate = Callable[[torch.Tensor], bool]


def exclude_vectors(p: torch.Tensor) -> bool:
    """The default ``exclude_from_trust``: tensors with fewer than 2 dims (norm weights, biases), the same rule
    as ``llr_kernels.layers``' ``vector`` kind."""
    return p.dim() < 2


# ----- argument checks ------------------------------------------------------------------------------------
def _check_optional_bool(name: str, value: Any, meaning: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None, True or False ({meaning}), got {value!r} ({type(value).__name__})")


def _check_predicate(value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError("exclude_from_trust must be a callable (tensor -> bool: True keeps the tensor out of the trust "
                        f"ratio, r = 1) or None (every tensor uses it), got {value!r} ({type(value).__name__})")


def _check_clamp(name: str, clamp: Any) -> None:
    if clamp is None:
        return
    if isinstance(clamp, (str, bytes)) or not isinstance(clamp, Sequence) or len(clamp) != 2:
        raise TypeError(f"{name} must be a pair (lo, hi) bounding the weight norm in the trust ratio, e.g. (0.0, 10.0), "
                        f"or None (no clamp), got {clamp!r} ({type(clamp).__name__})")
    lo = check_real(f"{name}[0]", clamp[0], 0.0, hint=" (lower bound of the weight norm in the trust ratio)")
    hi = check_real(f"{name}[1]", clamp[1], 0.0, lo_open=True, hint=" (upper bound of the weight norm in the trust ratio)")
    if lo > hi:
        raise ValueError(f"{name} must have lo <= hi, got {tuple(clamp)!r}; e.g. (0.0, 10.0), or None for no clamp")


def _check_common(g: dict[str, Any], where: str) -> None:
    check_real(where + "lr", g["lr"], 0.0, hint=" (the global learning rate; a 1-element tensor is allowed)", tensor_ok=True)
    check_real(where + "weight_decay", g["weight_decay"], 0.0, hint=" (0 disables it)")
    check_bool(where + "maximize", g["maximize"])
    _check_optional_bool(where + "foreach", g["foreach"],
                         "True: the batched foreach path; False: a per-tensor loop; None: batched on accelerators, loop on CPU")
    _check_optional_bool(where + "trust", g["trust"],
                         "None: exclude_from_trust decides per tensor; True / False: every tensor of the group uses / "
                         "skips the trust ratio")


# ----- norms ----------------------------------------------------------------------------------------------
def _norm_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """Norms of half-precision tensors accumulate in float32 (None: the tensor's own dtype)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None


def _norm(t: torch.Tensor) -> float:
    """||t||_2 of the whole tensor as a host float (the loop path). A DTensor's norm is reduced over its mesh
    (one collective: every rank calls this in the same order), never the local shard's."""
    return float(full(torch.linalg.vector_norm(t, 2, dtype=_norm_dtype(t.dtype))))


def _norms_batched(tensors: list[torch.Tensor]) -> list[float]:
    """||t||_2 of every whole tensor as host floats: one ``_foreach_norm``, one host copy and, for DTensors, one
    collective per (device, dtype, mesh) bucket (the stacked partial norms are reduced together)."""
    out = [0.0] * len(tensors)
    buckets: dict[tuple[torch.device, torch.dtype, Any], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype, t.device_mesh if is_dtensor(t) else None), []).append(i)
    for (_, dtype, _), ids in buckets.items():
        norms = torch._foreach_norm([tensors[i] for i in ids], 2, dtype=_norm_dtype(dtype))
        for i, v in zip(ids, full(torch.stack(norms)).to("cpu", torch.float64).tolist()):
            out[i] = v
    return out


def _batched(group: dict[str, Any], params: list[torch.Tensor]) -> bool:
    """The group's path: ``foreach`` if set, else batched unless a tensor is on the CPU (there the loop is faster)."""
    if group["foreach"] is not None:
        return group["foreach"]
    return all(p.device.type != "cpu" for p in params)


def _host_lr(lr: Any) -> float:
    return float(lr.detach().cpu()) if isinstance(lr, torch.Tensor) else float(lr)


def _foreach_scale_(tensors: list[torch.Tensor], scalars: float | list[float]) -> None:
    """tensors[i] *= scalars[i] (or one number for all) in place, rounded once as ``Tensor.mul_`` rounds. torch's
    CPU ``_foreach_mul_`` first rounds a Python scalar to a bf16 / fp16 tensor's dtype (0.9 -> 0.8984 in bf16,
    torch 2.13: a LARS momentum of 0.898); a 0-d float32 tensor keeps it, so the batched path equals the loop."""
    values = scalars if isinstance(scalars, list) else [scalars] * len(tensors)
    if any(t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16) and not is_dtensor(t) for t in tensors):
        torch._foreach_mul_(tensors, [torch.tensor(v, dtype=torch.float32) for v in values])
    else:
        torch._foreach_mul_(tensors, values)


class _TrustRatioOptimizer(Optimizer):
    """Shared machinery: group checks, the trust predicate, active tensors, closures, ``last_trust_ratios``."""

    def __init__(self, params: Any, defaults: dict[str, Any], exclude_from_trust: Optional[TrustPredicate]) -> None:
        _check_predicate(exclude_from_trust)
        self.exclude_from_trust = exclude_from_trust
        self.last_trust_ratios: torch.Tensor | None = None
        super().__init__(params, defaults)

    def _check_group(self, g: dict[str, Any], where: str) -> None:
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, after checking the group's hyperparameters (named "param group i: ...");
        a bad group raises and leaves the optimizer unchanged."""
        if isinstance(param_group, dict):
            merged = {**self.defaults, **{k: v for k, v in param_group.items() if k not in ("params", "param_names")}}
            self._check_group(merged, f"param group {len(self.param_groups)}: ")
        super().add_param_group(param_group)

    def _uses_trust(self, group: dict[str, Any], p: torch.Tensor) -> bool:
        if group["trust"] is not None:
            return group["trust"]
        return self.exclude_from_trust is None or not self.exclude_from_trust(p)

    def _work(self) -> tuple[list[tuple[dict[str, Any], list[int], list[torch.Tensor]]], int]:
        """(group, global indices, params with a grad) per group, and the total number of params."""
        work, base = [], 0
        for group in self.param_groups:
            ids, params = [], []
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (the trust ratio needs "
                                       "the dense update); use dense embeddings")
                if p.is_complex():
                    raise RuntimeError(f"{type(self).__name__} does not support complex parameters; step "
                                       "torch.view_as_real views instead")
                ids.append(base + j)
                params.append(p)
            work.append((group, ids, params))
            base += len(group["params"])
        return work, base

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step of every tensor with a gradient; ``closure`` (re-evaluates the loss) runs first, with grad on."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work, total = self._work()
        ratios = torch.full((total,), math.nan, dtype=torch.float64)
        batched = [w for w in work if w[2] and _batched(w[0], w[2])]
        if batched:
            self._step_batched(batched, ratios)
        for group, ids, params in work:
            if params and not _batched(group, params):
                self._step_loop(group, ids, params, ratios)
        self.last_trust_ratios = ratios
        return loss

    def _step_batched(self, work: list[tuple[dict[str, Any], list[int], list[torch.Tensor]]], ratios: torch.Tensor) -> None:
        raise NotImplementedError

    def _step_loop(self, group: dict[str, Any], ids: list[int], params: list[torch.Tensor], ratios: torch.Tensor) -> None:
        raise NotImplementedError


# ----- LAMB -----------------------------------------------------------------------------------------------
def _lamb_ratio(w_norm: float, u_norm: float, clamp: tuple[float, float] | None) -> float:
    """r = phi(||w||) / ||u||, phi = clamp to [lo, hi] (identity when clamp is None); 1 when a norm is 0."""
    if w_norm == 0.0 or u_norm == 0.0:
        return 1.0
    phi = w_norm if clamp is None else min(max(w_norm, clamp[0]), clamp[1])
    return phi / u_norm


class LAMB(_TrustRatioOptimizer):
    """LAMB (You et al. 2019, arXiv 1904.00962, Algorithm 2): Adam moments, a per-tensor trust ratio.

    For each tensor w with gradient g (negated when ``maximize``), at step t = 1, 2, ...::

        m = beta1 m + (1 - beta1) g                  v = beta2 v + (1 - beta2) g^2
        m_hat = m / (1 - beta1^t)                    v_hat = v / (1 - beta2^t)   (bias_correction=False: m, v)
        u = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
        r = phi(||w||) / ||u||    (r = 1 when ||w|| = 0 or ||u|| = 0, and for tensors excluded from the trust ratio)
        w = w - lr * r * u

    phi(x) = min(max(x, lo), hi) with ``clamp=(lo, hi)``; the paper leaves phi open (any function bounded in
    [gamma_l, gamma_u]); the default (0, 10) is the clip of the widely used cybertronai/pytorch-lamb, and
    ``clamp=None`` gives phi(x) = x. Weight decay is inside u, as in the paper, so it is scaled by the trust
    ratio too. Excluded tensors (1-D by default) take r = 1, i.e. ``w -= lr * u``: mathematically the AdamW step
    (the decay ``lr * weight_decay * w`` sits outside the Adam denominator); give them a param group with
    ``weight_decay=0`` to leave them undecayed.

    u is evaluated as ``c * m / (sqrt(v) + eps * sqrt(1 - beta2^t)) + weight_decay * w`` with
    ``c = sqrt(1 - beta2^t) / (1 - beta1^t)``: the same quantity in fewer passes over memory (without weight
    decay, c is applied with the step and to ||u||).

    State per tensor, in torch.optim.Adam's format (``state_dict`` / ``load_state_dict`` are torch.optim's):
    ``step`` (float32 CPU tensor), ``exp_avg`` and ``exp_avg_sq`` (the parameter's dtype). See the module
    docstring for ``foreach``, ``trust``, ``exclude_from_trust`` and ``last_trust_ratios``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        bias_correction: bool = True,
        clamp: tuple[float, float] | None = (0.0, 10.0),
        exclude_from_trust: Optional[TrustPredicate] = exclude_vectors,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        clamp=clamp, maximize=maximize, foreach=foreach, trust=None)
        self._check_group(defaults, "")
        defaults["betas"] = tuple(betas)
        defaults["clamp"] = None if clamp is None else tuple(clamp)
        super().__init__(params, defaults, exclude_from_trust)

    def _check_group(self, g: dict[str, Any], where: str) -> None:
        _check_common(g, where)
        check_betas(where + "betas", g["betas"])
        check_real(where + "eps", g["eps"], 0.0, hint=" (added to sqrt(v_hat); the LAMB paper's BERT runs use 1e-6)")
        check_bool(where + "bias_correction", g["bias_correction"])
        _check_clamp(where + "clamp", g["clamp"])

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        st = self.state[p]
        if "exp_avg" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @staticmethod
    def _coefficients(group: dict[str, Any], t: float) -> tuple[float, float]:
        """(c, eps') with u = c * m / (sqrt(v) + eps') + wd * w equal to the paper's u at step t:
        c = sqrt(1 - beta2^t) / (1 - beta1^t), eps' = eps * sqrt(1 - beta2^t); (1, eps) without bias correction."""
        if not group["bias_correction"]:
            return 1.0, group["eps"]
        b1, b2 = group["betas"]
        bc2_sqrt = math.sqrt(1.0 - b2**t)
        return bc2_sqrt / (1.0 - b1**t), group["eps"] * bc2_sqrt

    def _step_batched(self, work, ratios):
        prepared = []
        for group, ids, params in work:
            b1, b2 = group["betas"]
            wd = group["weight_decay"]
            grads = [p.grad for p in params]
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            states = [self._state(p) for p in params]
            exp_avgs = [st["exp_avg"] for st in states]
            exp_avg_sqs = [st["exp_avg_sq"] for st in states]
            steps = [st["step"] for st in states]
            torch._foreach_add_(steps, 1.0)
            coefs = [self._coefficients(group, float(s)) for s in steps]
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - b1)
            _foreach_scale_(exp_avg_sqs, b2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - b2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denom, [e for _, e in coefs])
            if wd != 0:  # u = wd * w + c * m / denom
                updates = torch._foreach_mul(params, wd)
                torch._foreach_addcdiv_(updates, exp_avgs, denom, [c for c, _ in coefs])
                scales = [1.0] * len(params)
            else:  # u = c * (m / denom): c is applied with the step (and to the norm)
                updates = torch._foreach_div(exp_avgs, denom)
                scales = [c for c, _ in coefs]
            del denom
            trusted = [self._uses_trust(group, p) for p in params]
            prepared.append((group, ids, params, updates, scales, trusted))
        # every trusted tensor's ||w|| and ||u||, all groups at once
        norm_inputs = [t for _, _, params, updates, _, trusted in prepared
                       for t in [p for p, k in zip(params, trusted) if k] + [u for u, k in zip(updates, trusted) if k]]
        norms = iter(_norms_batched(norm_inputs))
        for group, ids, params, updates, scales, trusted in prepared:
            n = sum(trusted)
            w_norms = iter([next(norms) for _ in range(n)])
            u_norms = iter([next(norms) for _ in range(n)])
            rs = [_lamb_ratio(next(w_norms), s * next(u_norms), group["clamp"]) if k else 1.0
                  for k, s in zip(trusted, scales)]
            lr = _host_lr(group["lr"])
            _foreach_scale_(updates, [lr * r * s for r, s in zip(rs, scales)])
            torch._foreach_sub_(params, updates)
            ratios[ids] = torch.tensor(rs, dtype=torch.float64)

    def _step_loop(self, group, ids, params, ratios):
        b1, b2 = group["betas"]
        wd = group["weight_decay"]
        lr = _host_lr(group["lr"])
        for i, p in zip(ids, params):
            g = torch.neg(p.grad) if group["maximize"] else p.grad
            st = self._state(p)
            st["step"].add_(1.0)
            c, eps = self._coefficients(group, float(st["step"]))
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(g, 1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = v.sqrt()
            denom.add_(eps)
            if wd != 0:
                u = p.mul(wd)
                u.addcdiv_(m, denom, value=c)
                scale = 1.0
            else:
                u = m.div(denom)
                scale = c
            del denom
            r = _lamb_ratio(_norm(p), scale * _norm(u), group["clamp"]) if self._uses_trust(group, p) else 1.0
            u.mul_(lr * r * scale)
            p.sub_(u)
            ratios[i] = r


# ----- LARS -----------------------------------------------------------------------------------------------
def _lars_ratio(w_norm: float, g_norm: float, wd: float, coefficient: float, eps: float) -> float:
    """Local LR = coefficient * ||w|| / (||g|| + wd * ||w|| + eps); 1 when ||w|| = 0 or ||g|| = 0."""
    if w_norm == 0.0 or g_norm == 0.0:
        return 1.0
    return coefficient * w_norm / (g_norm + wd * w_norm + eps)


class LARS(_TrustRatioOptimizer):
    """LARS (You et al. 2017, arXiv 1708.03888, Algorithm 1): momentum SGD with a per-tensor local LR.

    For each tensor w with gradient g (negated when ``maximize``)::

        local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
                   (1 when ||w|| = 0 or ||g|| = 0, and for tensors excluded from the trust ratio)
        v = momentum * v + lr * local_lr * (g + weight_decay * w)          (v starts at 0)
        w = w - v                          (nesterov: w = w - (momentum * v + lr * local_lr * (g + weight_decay * w)))

    This is the paper's Algorithm 1 exactly (plus ``eps`` in the denominator, 0 gives the paper's formula): the
    global LR multiplies *inside* the velocity, as in the LARS of Google's SimCLR / TF implementations, so a
    scheduled LR only scales new contributions and the velocity keeps the LRs it was built with. (torch.optim.SGD-
    style variants, e.g. LARC or DINO's LARS, accumulate ``v = momentum * v + local_lr * d`` and step ``w -= lr * v``
    instead; with a constant LR the two coincide.) Weight decay is L2 added to the gradient, scaled by the local
    LR; ||g|| is the norm of the raw gradient, without the decay (the paper's formula). Excluded tensors (1-D by
    default) take local_lr = 1: plain momentum SGD at ``lr`` (with their group's weight decay; give them a group
    with ``weight_decay=0`` to leave them undecayed). ``nesterov`` requires ``momentum > 0``; with
    ``momentum=0`` no velocity is stored.

    State per tensor (torch.optim.SGD's format): ``momentum_buffer`` (the parameter's dtype). See the module
    docstring for ``foreach``, ``trust``, ``exclude_from_trust`` and ``last_trust_ratios`` (here: local_lr).
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
        nesterov: bool = False,
        exclude_from_trust: Optional[TrustPredicate] = exclude_vectors,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, nesterov=nesterov, maximize=maximize, foreach=foreach, trust=None)
        self._check_group(defaults, "")
        super().__init__(params, defaults, exclude_from_trust)

    def _check_group(self, g: dict[str, Any], where: str) -> None:
        _check_common(g, where)
        check_real(where + "momentum", g["momentum"], 0.0, 1.0, hi_open=True, hint=" (0 disables momentum; the paper uses 0.9)")
        check_real(where + "trust_coefficient", g["trust_coefficient"], 0.0, lo_open=True,
                   hint=" (eta in the paper: local_lr = eta ||w|| / (||g|| + wd ||w||); the paper uses 0.001)")
        check_real(where + "eps", g["eps"], 0.0, hint=" (added to the local LR's denominator)")
        check_bool(where + "nesterov", g["nesterov"])
        if g["nesterov"] and g["momentum"] == 0:
            raise ValueError(f"{where}nesterov requires momentum > 0, got momentum={g['momentum']!r}; "
                             "set momentum (e.g. 0.9) or nesterov=False")

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        st = self.state[p]
        if "momentum_buffer" not in st:
            st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st["momentum_buffer"]

    def _local_lrs(self, group: dict[str, Any], trusted: list[bool], w_norms: list[float], g_norms: list[float]) -> list[float]:
        pairs = iter(zip(w_norms, g_norms))
        wd, tc, eps = group["weight_decay"], group["trust_coefficient"], group["eps"]
        return [_lars_ratio(*next(pairs), wd, tc, eps) if k else 1.0 for k in trusted]

    def _step_batched(self, work, ratios):
        prepared = []
        for group, ids, params in work:
            grads = [p.grad for p in params]
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            prepared.append((group, ids, params, grads, [self._uses_trust(group, p) for p in params]))
        norm_inputs = [t for _, _, params, grads, trusted in prepared
                       for t in [p for p, k in zip(params, trusted) if k] + [g for g, k in zip(grads, trusted) if k]]
        norms = iter(_norms_batched(norm_inputs))
        for group, ids, params, grads, trusted in prepared:
            n = sum(trusted)
            w_norms = [next(norms) for _ in range(n)]
            g_norms = [next(norms) for _ in range(n)]
            rs = self._local_lrs(group, trusted, w_norms, g_norms)
            lr, mom = _host_lr(group["lr"]), group["momentum"]
            coefs = [lr * r for r in rs]
            if group["weight_decay"] != 0:
                scaled = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                _foreach_scale_(scaled, coefs)
            else:
                scaled = torch._foreach_mul(grads, coefs)
            if mom != 0:
                bufs = [self._buffer(p) for p in params]
                _foreach_scale_(bufs, mom)
                torch._foreach_add_(bufs, scaled)
                if group["nesterov"]:
                    torch._foreach_add_(scaled, bufs, alpha=mom)
                    update = scaled
                else:
                    update = bufs
            else:
                update = scaled
            torch._foreach_sub_(params, update)
            ratios[ids] = torch.tensor(rs, dtype=torch.float64)

    def _step_loop(self, group, ids, params, ratios):
        lr, mom, wd = _host_lr(group["lr"]), group["momentum"], group["weight_decay"]
        for i, p in zip(ids, params):
            g = torch.neg(p.grad) if group["maximize"] else p.grad
            if self._uses_trust(group, p):
                r = _lars_ratio(_norm(p), _norm(g), wd, group["trust_coefficient"], group["eps"])
            else:
                r = 1.0
            if wd != 0:
                scaled = g.add(p, alpha=wd)
                scaled.mul_(lr * r)
            else:
                scaled = g.mul(lr * r)
            if mom != 0:
                buf = self._buffer(p)
                buf.mul_(mom)
                buf.add_(scaled)
                if group["nesterov"]:
                    scaled.add_(buf, alpha=mom)
                    update = scaled
                else:
                    update = buf
            else:
                update = scaled
            p.sub_(update)
            ratios[i] = r
