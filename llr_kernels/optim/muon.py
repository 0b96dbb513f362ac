"""LLRMuon: Muon for hidden matrices + fused AdamW for the rest, every layer's LR scaled by its LLR multiplier.

One step is a constant number of launches, independent of the number of layers:

1. ``muon_momentum`` (one launch): momentum / Nesterov for every Muon matrix, writing the Newton-Schulz
   input (bf16) straight into each shape bucket's batch buffer;
2. ``newton_schulz`` per shape bucket (3 batched GEMMs per iteration, into a fixed output buffer);
3. ``muon_apply`` (one launch): p = p * (1 - lr_i wd_i) - lr_i * adjust(shape_i) * O_i;
4. the fused multi-LR AdamW op (``adamw_step``, shared with LLRAdamW) for embedding, LM head, norms, biases.

Momentum buffers of a bucket live in one (B, m, n) tensor; ``state[p]["momentum_buffer"]`` is a view of it,
so the state_dict looks like torch.optim.Muon's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_int, check_real
from ..ops.dispatch import BACKENDS, get_op, has_impl
from ..layers import MATRIX_KINDS, Classifier, Layer
from ..ops.custom_ops import muon_momentum
from ..ops.muon.newton_schulz import newton_schulz, resolve_coefficients
from ..policies import PolicyConfig
from ..policies.llr import OUTLIER_Z, LLRConfig
from ._dtensor import is_dtensor
from ..ops.muon.naive import ADJUST_LR_FNS, adjust_lr_ratio
from .base import LLROptimizer
from .fused_adamw import FusedAdamWPart, _Launch, validate_adamw_args, validate_step_options
from .muon_apply import ApplyLaunch, make_apply_launch, run_apply
from .muon_split import SplitMuonStep
from .clip import clip_all_grads
from .params import classify_named, default_state_dtype, normalize_groups, warn_unnamed
from .placements import check_splittable
from .spectral_split import Split, resolve_split
from .validation import check_backend, check_model_args

_ADAMW_NAMES = {"lr": "adamw_lr", "betas": "adamw_betas", "eps": "adamw_eps", "weight_decay": "adamw_weight_decay"}


def muon_eligible(layer: Layer) -> bool:
    """Default split: 2-D hidden matrices (attention, FFN, other Linear) go to Muon; the rest to AdamW."""
    return layer.kind in MATRIX_KINDS and layer.kind != "conv" and layer.param.dim() == 2


@dataclass
class _Bucket:
    """Muon matrices of one (device, dtype, shape, Newton-Schulz settings): orthogonalized as one batch."""

    members: list[int]  # indices into _MuonPlan.params
    updates: torch.Tensor  # (B, m, n) in ns dtype: Newton-Schulz input, written by muon_momentum
    ortho: torch.Tensor  # (B, m, n) in ns dtype: Newton-Schulz output, read by muon_apply
    coefficients: Any
    steps: int
    eps: float


@dataclass
class _MomentumLaunch:
    members: list[int]  # indices into _MuonPlan.params
    momentum: float
    nesterov: bool
    backend: str  # the muon_momentum implementation (llr_kernels.ops.dispatch)


@dataclass
class _MuonPlan:
    params: list[torch.Tensor]
    negate: list[bool]  # maximize, per matrix
    buffers: list[torch.Tensor]  # momentum buffer views
    update_views: list[torch.Tensor]
    buckets: list[_Bucket]
    momentum_launches: list[_MomentumLaunch]
    apply_launches: list[ApplyLaunch]


class LLRMuon(FusedAdamWPart, LLROptimizer):
    """Muon with layerwise learning rates from PL_Alpha_Hill (LLR); AdamW for non-hidden parameters.

    params: an ``nn.Module`` (recommended), (name, tensor) pairs, tensors, or param groups. From a model or a
        flat list, two groups are made: Muon (2-D attention / FFN / Linear weights; lr, weight_decay) then
        AdamW (embedding, LM head, norms, biases, conv; adamw_lr, adamw_weight_decay). A user group may set
        ``use_muon``; a group without it is split by layer kind into a Muon and an AdamW group (its "lr" /
        "weight_decay" go to the Muon part, "adamw_lr" / "adamw_weight_decay" to the AdamW part).
        Schedulers scale every group's "lr", so one LambdaLR moves both base LRs together.
    lr: base LR of the Muon part; adamw_lr: base LR of the AdamW part (paper Table 4: 0.01 and 0.001).
        Each layer's LR is group lr x its LLR multiplier in [1, s].
    weight_decay, adamw_weight_decay: decoupled, with the layer's LR (p *= 1 - lr_layer * wd), applied
        before the update as in torch.optim.Muon; adamw_weight_decay defaults to weight_decay (the paper
        shares it).
    momentum, nesterov, ns_coefficients, ns_steps, ns_eps, adjust_lr_fn: as ``torch.optim.Muon``
        (momentum is an EMA: buf = lerp(buf, g, 1 - mu)); ns_coefficients: "quintic" (3.4445, -4.7750,
        2.0315), "polar_express", a triple or one triple per step; adjust_lr_fn: "original"
        (sqrt(max(1, rows/cols)), default), "match_rms_adamw" (0.2 sqrt(max(rows, cols))) or "none". Weight
        decay uses the unadjusted LR, as torch.optim.Muon. ns_dtype: Newton-Schulz compute dtype (bf16).
    adamw_betas, adamw_eps, amsgrad, maximize: the AdamW part (maximize also applies to Muon).
    s (default 2, the paper's Muon setting), interval, total_steps, grad_phase, active_until, ramp_steps,
        pin_embedding, pin_lm_head: the LLR policy (``llr_kernels.policies.llr``); with s = 1 this is Muon + AdamW.
    outlier_z: robust outlier cut of the policy (``llr_kernels.policies.llr.robust_outliers``; None: off).
    grad_alpha_source: in the gradient phase, alphas come from the raw gradient ("grad", default) or from the
        first moment ("momentum": the momentum buffer of Muon layers, exp_avg of the AdamW part; the gradient
        before the first step).
        Default "grad": it is what the paper measures for AdamW too (so alphas do not depend on the optimizer),
        it exists at step 0, when the first (and most consequential) gradient-phase measurement is taken and
        the momentum is still zero, and the EMA of gradients mixes up to ~1/(1-mu) = 20 steps of spectra,
        biasing alpha toward the stale early gradients. The orthogonalized update is never used: its
        singular values are all ~1 by construction, so its alpha carries no information.
    max_grad_norm: clip the global norm of all gradients (Muon and AdamW parts together) before the step.
    state_dtype: momentum / Adam state dtype; default float32 (float64 for float64 params).
    backend: "auto" | "triton" | "cpp" | "torch" for the elementwise ops (``llr_kernels.ops.dispatch``);
        muon_backend overrides it for the Muon ops only (e.g. "triton" Muon with a "torch" AdamW part).
    capturable: as LLRAdamW's: every step-time scalar stays on the device (group LRs become 0-d device tensors)
        so a step can be captured in a CUDA graph and replayed while a scheduler changes the LRs.
    spectral_group: as LLRAdamW's (under DDP, pass the DistributedDataParallel model or its process group).
    spectral_memory_budget, policy, policy_group: as LLRAdamW's.
    Every argument is checked here, not at the first step: a wrong type raises TypeError, a value out of range
    ValueError (an explicit backend that cannot run on the parameters' devices too), each naming the argument.
    With DTensor parameters of any layout (FSDP2, HSDP, tensor parallel, FSDP x TP) each matrix is orthogonalized
    whole on one rank and scattered back to every rank's shard (``muon_split``); under DDP too when the optimizer
    is built on the DistributedDataParallel model (or given ``spectral_group``). Partial parameters raise
    NotImplementedError at construction.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        adamw_lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Any = "quintic",
        ns_steps: int = 5,
        ns_eps: float = 1e-7,
        adjust_lr_fn: str | None = "original",
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float | None = None,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        s: float = 2.0,
        interval: int = 500,
        total_steps: int | None = None,
        grad_phase: float = 0.05,
        active_until: float = 1.0,
        ramp_steps: int = 0,
        pin_embedding: bool = True,
        pin_lm_head: bool = False,
        outlier_z: float | None = OUTLIER_Z,
        grad_alpha_source: str = "grad",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | None = None,
        ns_dtype: torch.dtype = torch.bfloat16,
        backend: str = "auto",
        muon_backend: str | None = None,
        model: nn.Module | None = None,
        classify: Classifier | None = None,
        hill_method: str = "auto",
        hill_variant: str = "paper",
        min_eigs: int = 50,
        capturable: bool = False,
        spectral_group: Any = "auto",
        policy: str | PolicyConfig | None = None,
        policy_group: Any = None,
        spectral_memory_budget: int | None = None,
    ) -> None:
        if adamw_weight_decay is None:
            adamw_weight_decay = weight_decay
        _validate_muon_args(lr, weight_decay, momentum, nesterov, ns_coefficients, ns_steps, ns_eps, adjust_lr_fn)
        validate_adamw_args(adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay, amsgrad, maximize, names=_ADAMW_NAMES)
        check_choice("grad_alpha_source", grad_alpha_source, ("grad", "momentum"),
                     hint=" (what gradient-phase alphas of Muon layers are measured on)")
        if ns_dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            raise ValueError(f"ns_dtype must be a floating dtype (torch.bfloat16 recommended), got {ns_dtype!r}")
        if muon_backend is not None:
            check_choice("muon_backend", muon_backend, BACKENDS, hint=" or None (= backend)")
        check_model_args(model, classify)
        if isinstance(params, nn.Module) and model is None:
            model = params
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, ns_steps=ns_steps, ns_eps=ns_eps, adjust_lr_fn=adjust_lr_fn,
            betas=tuple(adamw_betas), eps=adamw_eps, amsgrad=amsgrad, maximize=maximize,
        )
        groups, names_known = _split_groups(params, model, classify, adamw_lr, adamw_weight_decay)
        config = LLRConfig(s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, pin_lm_head, outlier_z)
        super().__init__(
            groups, defaults, llr=config, model=model, classify=classify, backend=backend,
            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs, capturable=capturable,
            spectral_group=spectral_group, policy=policy, policy_group=policy_group,
            spectral_memory_budget=spectral_memory_budget,
        )
        if not names_known:  # generated names name layers, but torch's param_names holds only names given to us
            for g in self.param_groups:
                g.pop("param_names", None)
        self.grad_alpha_source = grad_alpha_source
        self.muon_backend = muon_backend
        self.max_grad_norm = max_grad_norm
        self.state_dtype = state_dtype
        self._adamw_lr, self._adamw_weight_decay = adamw_lr, adamw_weight_decay  # for groups added later
        self._check_groups(list(range(len(self.param_groups))))
        self.ns_dtype = ns_dtype
        self.last_grad_norm: torch.Tensor | None = None
        self._launches: list[_Launch] = []  # AdamW part (FusedAdamWPart)
        self._signature: tuple | None = None
        self._muon_plan: _MuonPlan | None = None
        self._muon_split: SplitMuonStep | None = None
        self._clip_params: list[torch.Tensor] = []

    # ----- groups and layers ------------------------------------------------------------------------
    def _check_groups(self, group_ids: list[int]) -> None:
        """Hyperparameters, shapes and backends of these groups (construction and add_param_group)."""
        muon_params, adamw_params = [], []
        for i in group_ids:
            g = self.param_groups[i]
            where = f"param group {i}: "
            if g["use_muon"]:
                _validate_muon_args(g["lr"], g["weight_decay"], g["momentum"], g["nesterov"], g["ns_coefficients"],
                                    g["ns_steps"], g["ns_eps"], g["adjust_lr_fn"], where=where)
                check_bool(where + "maximize", g["maximize"])
                for p in g["params"]:
                    name = self.layers[self.layer_of(p)].name
                    if p.dim() != 2:
                        raise ValueError(
                            f"Muon needs 2-D matrices but {name!r} has shape {tuple(p.shape)}; put it in a group with use_muon=False"
                        )
                    if is_dtensor(p) and self.capturable:
                        raise NotImplementedError(
                            f"LLRMuon with capturable=True cannot split Newton-Schulz across ranks ({name!r} is a DTensor; "
                            "the split's collectives run on the host every step); use capturable=False under FSDP2"
                        )
                    if is_dtensor(p):
                        check_splittable(p, repr(name))
                muon_params += g["params"]
            else:
                validate_adamw_args(g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"], g["maximize"], where=where)
                adamw_params += g["params"]
        backend, muon_backend = self.backend, self.muon_backend
        validate_step_options(self.max_grad_norm, self.state_dtype, muon_params + adamw_params)
        if muon_backend is None and backend not in ("auto", "torch") and muon_params and not has_impl("muon_apply", backend):
            raise ValueError(
                f"backend={backend!r} has no Muon kernels (muon_momentum, muon_apply); pass muon_backend='torch' or "
                f"'triton' (backend={backend!r} then steps the AdamW part only), or backend='auto'"
            )
        check_backend("backend", backend, ("adamw_step",), adamw_params)
        check_backend("muon_backend" if muon_backend is not None else "backend", muon_backend or backend,
                      ("muon_momentum", "muon_apply"), muon_params)

    def _expand_added_group(self, group: dict[str, Any], layers: list[Layer]) -> list[dict[str, Any]]:
        """An added group is split like the constructor's (``_split_group``): no use_muon, a Muon and an AdamW part."""
        eligible = {id(l.param) for l in layers if muon_eligible(l)}
        return _split_group(group, lambda p: id(p) in eligible, self._adamw_lr, self._adamw_weight_decay)

    def muon_group_ids(self) -> list[int]:
        return [i for i, g in enumerate(self.param_groups) if g["use_muon"]]

    def adamw_group_ids(self) -> list[int]:
        return [i for i, g in enumerate(self.param_groups) if not g["use_muon"]]

    def layer_stats(self) -> list[dict[str, Any]]:
        """LLROptimizer.layer_stats plus "optimizer" ("muon" / "adamw") and "update_lr" (with Muon's shape factor)."""
        stats = super().layer_stats()
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        for st, layer in zip(stats, self.layers):
            g = group_of.get(id(layer.param))
            muon = bool(g is not None and g["use_muon"])
            st["optimizer"] = "muon" if muon else "adamw"
            st["update_lr"] = st["lr"] * adjust_lr_ratio(g["adjust_lr_fn"], layer.logical_shape) if muon else st["lr"]
        return stats

    # ----- the Muon plan ----------------------------------------------------------------------------
    def _adamw_group_ids(self) -> list[int]:
        return self.adamw_group_ids()

    def _rebuild_plans(self) -> None:
        active = self._active(self.muon_group_ids())
        split = self._muon_split_group([p for _, p in active])
        self._muon_split = None if split is None else SplitMuonStep(self, active, split)
        self._build_muon_plan([] if split is not None else active)
        self._build_launches(self._active(self.adamw_group_ids()))
        self._clip_params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _muon_split_group(self, params: list[torch.Tensor]) -> Split | None:
        """Who splits Newton-Schulz across ranks (``muon_split``): the mesh of DTensor parameters, any layout (needed:
        no rank holds whole matrices), or under DDP the spectral group, when there is one; else None."""
        if not params:
            return None
        if any(is_dtensor(p) for p in params):
            split = resolve_split("auto", None, params, keep_single=True)
            if split is None:
                meshes = {str(p.device_mesh) for p in params if is_dtensor(p)}
                raise NotImplementedError(f"LLRMuon's Muon matrices are DTensors on meshes over different ranks "
                                          f"({sorted(meshes)}); its split step needs one set of ranks (e.g. one 2-D "
                                          "mesh): give each pipeline stage its own LLRMuon")
            return split
        if self.spectral_group is None:
            return None
        return resolve_split(self.spectral_group, self._model_ref() if self._model_ref else None, params)

    def _build_muon_plan(self, active: list[tuple[int, torch.Tensor]]) -> None:
        """Bucket the stepping Muon matrices by shape and allocate batch buffers (when the set changes: host work)."""
        params = [p for _, p in active]
        groups = [self.param_groups[gi] for gi, _ in active]
        buffers: list[torch.Tensor | None] = [None] * len(params)
        update_views: list[torch.Tensor | None] = [None] * len(params)
        ortho_views: list[torch.Tensor | None] = [None] * len(params)
        by_key: dict[tuple, list[int]] = {}
        for i, (p, g) in enumerate(zip(params, groups)):
            coeffs, _ = resolve_coefficients(g["ns_coefficients"], g["ns_steps"])
            key = (p.device, p.dtype, tuple(p.shape), coeffs, float(g["ns_eps"]))
            by_key.setdefault(key, []).append(i)
        buckets = []
        for (device, dtype, shape, _, _), members in by_key.items():
            sdt = default_state_dtype(self.state_dtype, dtype)
            mom = torch.zeros((len(members), *shape), dtype=sdt, device=device)
            upd = torch.empty((len(members), *shape), dtype=self.ns_dtype, device=device)
            ortho = torch.empty_like(upd)
            for j, i in enumerate(members):
                st = self.state[params[i]]
                old = st.get("momentum_buffer")
                if old is not None:
                    mom[j].copy_(old)
                st["momentum_buffer"] = mom[j]
                buffers[i], update_views[i], ortho_views[i] = mom[j], upd[j], ortho[j]
            g = groups[members[0]]
            buckets.append(_Bucket(members, upd, ortho, g["ns_coefficients"], g["ns_steps"], float(g["ns_eps"])))
        backend = self.muon_backend or self.backend
        launches: dict[tuple, list[int]] = {}
        by_device: dict[torch.device, list[int]] = {}
        for i, (p, g) in enumerate(zip(params, groups)):
            launches.setdefault((p.device, float(g["momentum"]), bool(g["nesterov"])), []).append(i)
            by_device.setdefault(p.device, []).append(i)
        momentum_launches = [_MomentumLaunch(m, mu, nest, get_op("muon_momentum", backend, device)[0])
                             for (device, mu, nest), m in launches.items()]
        apply_launches = []
        for device, members in by_device.items():
            a = make_apply_launch(self, [params[i] for i in members], [active[i][0] for i in members], device, backend)
            a.ortho_views = [ortho_views[i] for i in members]  # type: ignore[misc]
            apply_launches.append(a)
        self._muon_plan = _MuonPlan(
            params=params,
            negate=[bool(g["maximize"]) for g in groups],
            buffers=buffers,  # type: ignore[arg-type]
            update_views=update_views,  # type: ignore[arg-type]
            buckets=buckets,
            momentum_launches=momentum_launches,
            apply_launches=apply_launches,
        )

    # ----- the step ---------------------------------------------------------------------------------
    def _muon_step(self) -> None:
        if self._muon_split is not None:
            self._muon_split.step()
            return
        plan = self._muon_plan
        if plan is None or not plan.params:
            return
        grads = []
        for p, negate in zip(plan.params, plan.negate):
            g = -p.grad if negate else p.grad
            grads.append(g if g.is_contiguous() else g.contiguous())
        # 1. momentum / Nesterov, writing the Newton-Schulz inputs into the bucket buffers
        for launch in plan.momentum_launches:
            muon_momentum([grads[i] for i in launch.members], [plan.buffers[i] for i in launch.members],
                          [plan.update_views[i] for i in launch.members], launch.momentum, launch.nesterov,
                          launch.backend)
        # 2. Newton-Schulz, one batch per shape bucket
        for b in plan.buckets:
            newton_schulz(b.updates, b.coefficients, b.steps, eps=b.eps, dtype=self.ns_dtype, out=b.ortho, overwrite_input=True)
        # 3. decoupled weight decay + update with each matrix's LR
        for a in plan.apply_launches:
            run_apply(self, a, a.params, a.ortho_views)

    def _step_params(self) -> None:
        if self.max_grad_norm is not None and self._clip_params:
            self.last_grad_norm = clip_all_grads(self._clip_params, self.max_grad_norm)
        self._muon_step()
        self._adamw_step(None)


def _validate_muon_args(lr: Any, weight_decay: Any, momentum: Any, nesterov: Any, ns_coefficients: Any, ns_steps: Any,
                        ns_eps: Any, adjust_lr_fn: Any, *, where: str = "") -> None:
    check_real(where + "lr", lr, 0.0, hint=" (the Muon part's base LR; each matrix gets lr x its LLR multiplier)", tensor_ok=True)
    check_real(where + "weight_decay", weight_decay, 0.0, hint=" (decoupled: p *= 1 - lr_layer * weight_decay)")
    check_real(where + "momentum", momentum, 0.0, 1.0, hi_open=True, hint=" (Muon's EMA momentum; default 0.95)")
    check_bool(where + "nesterov", nesterov)
    check_int(where + "ns_steps", ns_steps, 1, 99, hint=" (Newton-Schulz iterations; default 5)")
    check_real(where + "ns_eps", ns_eps, 0.0, lo_open=True, hint=" (floor of the Frobenius norm in Newton-Schulz; default 1e-7)")
    resolve_coefficients(ns_coefficients, ns_steps)
    if adjust_lr_fn is not None:
        check_choice(where + "adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS, hint=" or None (= 'original')")


def _split_group(group: dict, eligible: Callable[[torch.Tensor], bool], adamw_lr: Any, adamw_wd: Any) -> list[dict]:
    """One param group of tensors as LLRMuon groups, each with a "use_muon" flag: use_muon=True / False keep
    the group (an AdamW group takes "adamw_lr" / "adamw_weight_decay" unless it sets "lr" / "weight_decay");
    without use_muon the eligible matrices form a Muon group ("lr", "weight_decay") and the rest an AdamW group
    ("adamw_lr", "adamw_weight_decay", else the optimizer's). "param_names", if present, follow their tensors."""
    opts = {k: v for k, v in group.items() if k not in ("params", "param_names", "adamw_lr", "adamw_weight_decay")}
    a_lr, a_wd = group.get("adamw_lr", adamw_lr), group.get("adamw_weight_decay", adamw_wd)
    use = group.get("use_muon")
    ps = list(group["params"])
    names = dict(zip(map(id, ps), group["param_names"])) if "param_names" in group else None

    def part(params: list, **kw: Any) -> dict:
        out = {**kw, "params": params}
        if names is not None:
            out["param_names"] = [names[id(p)] for p in params]
        return out

    if use is True:
        return [part(ps, **opts)]
    if use is False:
        return [part(ps, **{**opts, "lr": group.get("lr", a_lr), "weight_decay": group.get("weight_decay", a_wd)})]
    if use is not None:
        raise ValueError(f"a param group's use_muon must be True, False or absent, got {use!r}")
    out = []
    muon = [p for p in ps if eligible(p)]
    rest = [p for p in ps if not eligible(p)]
    if muon:
        out.append(part(muon, **opts, use_muon=True))
    if rest:
        adam_opts = {k: v for k, v in opts.items() if k not in ("lr", "weight_decay")}
        out.append(part(rest, **adam_opts, use_muon=False, lr=a_lr, weight_decay=a_wd))
    return out


def _split_groups(params: Any, model: nn.Module | None, classify: Classifier | None, adamw_lr: float,
                  adamw_wd: float) -> tuple[list[dict], bool]:
    """Param groups with a "use_muon" flag each (``_split_group``) and every tensor's name in "param_names" (so
    names survive the split), and whether those names are all known (not generated). A model or a flat list is
    one group without use_muon."""
    groups, named, unnamed = normalize_groups(params, model)
    warn_unnamed(unnamed, "LLRMuon", muon=True)
    layers = classify_named(named, model if model is not None else (params if isinstance(params, nn.Module) else None), classify)
    eligible = {id(l.param) for l in layers if muon_eligible(l)}
    name_of: dict[int, str] = {}
    for n, p in named:
        name_of.setdefault(id(p), n)
    out: list[dict] = []
    for g in groups:
        g = {**g, "param_names": [name_of[id(p)] for p in g["params"]]}
        out.extend(_split_group(g, lambda p: id(p) in eligible, adamw_lr, adamw_wd))
    return out, all("param_names" in g for g in groups)
