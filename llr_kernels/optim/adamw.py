"""LLRAdamW: AdamW where every layer's LR is group["lr"] x its layerwise multiplier, in one fused step."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_choice
from ..layers import Classifier
from ..policies import PolicyConfig
from ..policies.llr import OUTLIER_Z, LLRConfig
from .base import LLROptimizer
from .fused_adamw import FusedAdamWPart, _Launch, validate_adamw_args, validate_step_options
from .params import default_state_dtype
from .validation import check_backend
from .wrappers import normalize_name

# torch.optim group keys that select torch's implementation, not hyperparameters: never copied into ours.
_TORCH_IMPL_KEYS = frozenset({"params", "param_names", "foreach", "fused", "capturable", "differentiable"})


class LLRAdamW(FusedAdamWPart, LLROptimizer):
    """AdamW with layerwise learning rates from PL_Alpha_Hill (LLR), stepped by one fused multi-LR op.

    params: an ``nn.Module`` (recommended: layer kinds come from module types and names), an iterable of
        (name, tensor) pairs, tensors, or param groups (pass ``model=`` so groups of plain tensors get names).
    lr, betas, eps, weight_decay, amsgrad, maximize: as ``torch.optim.AdamW``. Weight decay is decoupled and
        uses the layer's LR (p *= 1 - lr_layer * wd), as the public LLR code does through its param groups.
    s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, pin_lm_head, outlier_z: the
        LLR policy (``llr_kernels.policies.llr``). With s = 1 this is exactly AdamW.
    grad_alpha_source: in the gradient phase, alphas come from the raw gradient ("grad", the paper) or from
        exp_avg ("momentum", as the public code offers: smoother and full-rank sooner when each step sees few
        tokens; the gradient before the first step).
    max_grad_norm: if set, clip the global gradient norm inside the step (no host sync on fast backends).
    state_dtype: dtype of exp_avg / exp_avg_sq; default float32 (float64 for float64 params).
    backend: "auto" | "triton" | "cpp" | "torch" (see ``llr_kernels.ops.dispatch``).
    hill_method, hill_variant, min_eigs: passed to ``llr_kernels.spectral.hill_alpha``.
    capturable: keep every step-time scalar on the device, so a step can be captured in a CUDA graph and replayed
        while a scheduler changes the LRs: each group's lr becomes a 0-d tensor on its parameters' device (update
        it in place, as torch.optim.lr_scheduler does for tensor LRs), and step() makes no host sync and no
        host-to-device copy except on steps with host work (LLR updates, ramps; see ``after_replay``).
    spectral_group: which ranks share the LLR update, each measuring some of the layers: "auto" (the mesh of DTensor
        parameters of any layout: FSDP2, HSDP, tensor parallel, FSDP x TP; or the group of a DistributedDataParallel
        model passed as ``model``/``params``), a process group whose ranks hold identical parameters (DDP), or None
        (every rank measures every layer). See ``optim.spectral_split``.
    spectral_memory_budget: bytes an LLR update may add on one rank (gathered matrices, casts, Grams, float64
        tiers; ``optim.budget``): matrices are gathered, measured and freed one chunk at a time under it. None:
        ``spectral.cost.default_budget`` (2 GiB on CPU, a quarter of free GPU memory up to 8 GiB).
    policy: the layerwise scheme, if not LLR as above: a preset name ("uniform", "llr-shuffled", "sharpness",
        "rlrs", "alphadecay", "llr+alphadecay", ...: ``llr_kernels.policies.PRESETS``, built from the LLR arguments
        above where they apply, e.g. total_steps) or a config (``LLRConfig`` with another map / metric / fit,
        ``BlockwiseConfig``, ``RLRSConfig``, ``UniformConfig``), which then replaces the LLR arguments.
    policy_group: a ``llr_kernels.optim.policy_group.PolicyGroup`` shared with the optimizers of the model's other
        pipeline stages / model parts: one policy (Eq. 3's range, the outlier rule) over all of them, as if one
        optimizer held the whole model; each still measures only its own matrices. None: this optimizer alone.
    Every argument is checked here, not at the first step: a wrong type raises TypeError, a value out of range
    ValueError (an explicit backend that cannot run on the parameters' devices too), each naming the argument.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        s: float = 3.0,
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
        backend: str = "auto",
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
        validate_adamw_args(lr, betas, eps, weight_decay, amsgrad, maximize)
        check_choice("grad_alpha_source", grad_alpha_source, ("grad", "momentum"),
                     hint=" (the gradient-phase alpha source: the raw gradient, or exp_avg)")
        self.grad_alpha_source = grad_alpha_source
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        config = LLRConfig(s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, pin_lm_head, outlier_z)
        super().__init__(
            params, defaults, llr=config, model=model, classify=classify, backend=backend,
            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs, capturable=capturable,
            spectral_group=spectral_group, policy=policy, policy_group=policy_group,
            spectral_memory_budget=spectral_memory_budget,
        )
        self.max_grad_norm = max_grad_norm
        self.state_dtype = state_dtype
        self._check_groups(list(range(len(self.param_groups))))
        self.last_grad_norm: torch.Tensor | None = None
        self._launches: list[_Launch] = []
        self._signature: tuple | None = None

    def _check_groups(self, group_ids: list[int]) -> None:
        """Hyperparameters of these groups, max_grad_norm / state_dtype and the backend (construction and
        add_param_group)."""
        for i in group_ids:
            g = self.param_groups[i]
            validate_adamw_args(g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"], g["maximize"], where=f"param group {i}: ")
        params = [p for i in group_ids for p in self.param_groups[i]["params"]]
        validate_step_options(self.max_grad_norm, self.state_dtype, params)
        check_backend("backend", self.backend, ("adamw_step",), params)

    def load_torch_state_dict(self, state_dict: dict[str, Any], *, llr_step: int | None = None) -> None:
        """Continue from a ``torch.optim.AdamW`` (or Adam) checkpoint: build this optimizer on the same param
        groups, then call this instead of ``load_state_dict``. Moments and step counters are carried over, group
        hyperparameters come from the checkpoint (as torch's load_state_dict does), and the LLR state starts
        fresh at ``llr_step`` (default: the checkpoint's step count): multipliers 1 (pinned layers s) until the
        next LLR update (``step % interval == 0``; call ``update_alphas()`` to measure at once).
        """
        load_torch_adamw(self, state_dict, llr_step)

    def _step_params(self) -> None:
        self._adamw_step(self.max_grad_norm)


def load_torch_adamw(opt: LLROptimizer, state_dict: dict[str, Any], llr_step: int | None = None) -> None:
    """Load a ``torch.optim.AdamW`` (or Adam) state_dict into ``opt``, built on the same param groups.

    Moments (exp_avg, exp_avg_sq, max_exp_avg_sq) and per-parameter step counters are carried over (moments in
    ``opt``'s state dtype), group hyperparameters too (lr, betas, eps, weight_decay, ..., initial_lr of a
    scheduler), as torch's load_state_dict does; the LLR state starts fresh (no alphas; multipliers 1, pinned
    layers s) at ``llr_step`` (default: the checkpoint's largest step count, so grad_phase / active_until / the
    interval keep counting training steps).
    """
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError("load_torch_state_dict expects a torch.optim state_dict (with 'state' and 'param_groups')")
    if "llr" in state_dict:
        raise ValueError("this is an LLR optimizer checkpoint (it has an 'llr' entry); load it with load_state_dict")
    saved_groups = state_dict["param_groups"]
    sizes_saved = [len(g["params"]) for g in saved_groups]
    sizes_mine = [len(g["params"]) for g in opt.param_groups]
    if sizes_saved != sizes_mine:
        raise ValueError(
            f"the torch optimizer checkpoint has param groups of sizes {sizes_saved}, this optimizer {sizes_mine}: "
            "build it on the same param groups (same parameters in the same order) as the torch optimizer"
        )
    for i, (gs, g) in enumerate(zip(saved_groups, opt.param_groups)):
        for j, (name, p) in enumerate(zip(gs.get("param_names") or [None] * len(g["params"]), g["params"])):
            layer = opt.layers[opt.layer_of(p)]
            if name is not None and normalize_name(name) not in {normalize_name(n) for n in [layer.name, *layer.aliases]}:
                raise ValueError(f"parameter {j} of param group {i} is {name!r} in the torch checkpoint but "
                                 f"{layer.name!r} here: build the optimizer on the same parameters in the same order "
                                 "as the torch optimizer")
    merged = []  # group hyperparameters as torch's load_state_dict sets them: from the checkpoint
    for i, (gs, g) in enumerate(zip(saved_groups, opt.param_groups)):
        m = {**g, **{k: v for k, v in gs.items() if k not in _TORCH_IMPL_KEYS and (k in g or k == "initial_lr")}}
        validate_adamw_args(m["lr"], m["betas"], m["eps"], m["weight_decay"], m["amsgrad"], m["maximize"],
                            where=f"torch checkpoint, param group {i}: ")
        merged.append(m)
    new_state: dict[torch.Tensor, dict[str, Any]] = {}
    steps = [0]
    for gs, m in zip(saved_groups, merged):
        for idx, p in zip(gs["params"], m["params"]):
            st = state_dict["state"].get(idx)
            if not st:
                continue
            missing = {"step", "exp_avg", "exp_avg_sq"} - st.keys()
            if missing:
                raise ValueError(f"parameter {idx} of the checkpoint has state {sorted(st)}, not AdamW's (missing "
                                 f"{sorted(missing)}): load_torch_state_dict reads torch.optim.AdamW / Adam checkpoints")
            if tuple(st["exp_avg"].shape) != tuple(p.shape):
                raise ValueError(f"parameter {idx} has exp_avg of shape {tuple(st['exp_avg'].shape)} in the checkpoint "
                                 f"but shape {tuple(p.shape)} here: the checkpoint belongs to another model")
            sdt = default_state_dtype(opt.state_dtype, p.dtype)
            step = float(st["step"])
            steps.append(int(step))
            entry = {
                "step": torch.tensor(step, dtype=torch.float32),
                "exp_avg": st["exp_avg"].to(device=p.device, dtype=sdt, copy=True),
                "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=sdt, copy=True),
            }
            if m["amsgrad"]:
                saved_max = st.get("max_exp_avg_sq")
                entry["max_exp_avg_sq"] = (torch.zeros_like(entry["exp_avg_sq"]) if saved_max is None
                                           else saved_max.to(device=p.device, dtype=sdt, copy=True))
            new_state[p] = entry
    for g, m in zip(opt.param_groups, merged):
        g.update(m)
    opt.state.clear()
    opt.state.update(new_state)
    opt.reset_llr(max(steps) if llr_step is None else int(llr_step))
    opt._on_state_loaded()
