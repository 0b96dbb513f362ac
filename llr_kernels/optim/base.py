"""LLROptimizer: what LLRAdamW and LLRMuon share. The step protocol (host work at LLR updates only, per-tensor LR
buffers computed on device, compile- and capture-friendly), the layers and their policy, add_param_group and
state_dict. Param groups: ``params``; argument checks: ``validation``; the LLR update: ``spectral_update``;
checkpoint entries: ``checkpoint``.

A subclass implements ``_rebuild_plans()`` (cached launches for the tensors with grads) and ``_step_params()``
(the update with per-tensor LRs); each tensor's LR is ``group["lr"] * multiplier(layer)``, so any
torch.optim.lr_scheduler, which only edits group["lr"], composes unchanged.
"""
from __future__ import annotations

import copy
import functools
import weakref
from typing import Any, Callable

import torch
from torch import nn

from .._checks import check_bool, check_choice
from ..layers import Classifier, Layer
from ..ops.custom_ops import llr_tick, register_tick
from ..ops.dispatch import BACKENDS
from ..policies import LayerwisePolicy, LLRConfig, PolicyConfig, resolve_policy
from ..spectral.rules import STATUS_NOT_MEASURED
from ._dtensor import align_grads, aligned, full, is_dtensor, local
from .budget import check_budget_arg
from .checkpoint import PER_LAYER_KEY, check_layers, llr_entry, llr_entry_from_layers, per_layer_entries
from .params import classify_named, normalize_groups, per_layer, reject_sparse_embeddings, warn_unnamed
from .placements import check_splittable
from .policy_group import check_policy_group
from .spectral_update import update_layer_metrics
from .validation import check_model_args, check_spectral_args, check_spectral_group


def _capturing() -> bool:
    """True while the current CUDA stream is being captured into a CUDA graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _refreshes_multipliers(fn: Callable) -> Callable:
    """For methods that set new multipliers on the host (update_alphas): the next step copies them to the
    device; never traced by dynamo (alpha measurement is host work: a compiled caller breaks the graph here)."""

    @functools.wraps(fn)
    def wrapper(self: "LLROptimizer", *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        self._host_due = True
        return out

    return torch.compiler.disable(wrapper)


class LLROptimizer(torch.optim.Optimizer):
    """Base of LLRAdamW / LLRMuon. See those classes for the user-facing arguments."""

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        llr: LLRConfig,
        policy: str | PolicyConfig | None = None,
        model: nn.Module | None = None,
        classify: Classifier | None = None,
        backend: str = "auto",
        hill_method: str = "auto",
        hill_variant: str = "paper",
        min_eigs: int = 50,
        capturable: bool = False,
        spectral_group: Any = "auto",
        policy_group: Any = None,
        spectral_memory_budget: int | None = None,
    ) -> None:
        policy_config = resolve_policy(policy, llr)
        check_spectral_group(spectral_group)
        check_policy_group(policy_group)
        check_choice("backend", backend, BACKENDS, hint=" (see llr_kernels.ops.dispatch)")
        check_spectral_args(hill_method, hill_variant, min_eigs)
        if getattr(policy_config, "fit", "median") != "median" and hill_variant != "paper":
            raise ValueError(f"hill_variant={hill_variant!r} is an index convention of the median Hill fit; the "
                             f"{policy_config.fit!r} fit chooses its own xmin: leave hill_variant='paper'")
        check_model_args(model, classify)
        check_bool("capturable", capturable)
        self.backend = backend
        self.capturable = capturable
        self.spectral_group = spectral_group
        self.last_split: dict[str, Any] | None = None  # how the last LLR update was split across ranks
        groups, named, unnamed = normalize_groups(params, model)
        warn_unnamed(unnamed, type(self).__name__)
        super().__init__(groups, defaults)
        if model is None and isinstance(params, nn.Module):
            model = params
        # add_param_group names and classifies new parameters like these (a weak reference: no model kept alive)
        self._model_ref = None if model is None else weakref.ref(model)
        self._classify = classify
        self.layers: list[Layer] = classify_named(named, model, classify)
        self._layer_index = {id(layer.param): i for i, layer in enumerate(self.layers)}
        reject_sparse_embeddings(model, self._layer_index)
        self.policy = policy_config.build(self.layers)
        self.hill_method, self.hill_variant, self.min_eigs = hill_method, hill_variant, min_eigs
        check_budget_arg(spectral_memory_budget, self.layers)
        self.spectral_memory_budget = spectral_memory_budget  # bytes an LLR update may add per rank (optim.budget)
        self.llr_step = 0
        self.llr_update_seconds = 0.0
        self.layer_status: list[str] = [STATUS_NOT_MEASURED] * len(self.layers)  # per layer, of the last update
        self._init_step_state()
        self.policy_group = policy_group  # one policy over several optimizers (pipeline stages, model parts)
        if policy_group is not None:
            policy_group.join(self)

    # ----- layers and multipliers -------------------------------------------------------------------
    def layer_of(self, p: torch.Tensor) -> int:
        return self._layer_index[id(p)]

    def measured_layers(self) -> list[int]:
        """Indices of layers whose alpha is measured: every matrix (pinned ones too, for logging only)."""
        return [i for i, l in enumerate(self.layers) if l.is_matrix]

    def _spectral_matrix(self, layer: Layer, source: str) -> torch.Tensor | None:
        """The matrix whose spectrum sets this layer's alpha (whole, also when sharded); see ``_spectral_source``."""
        src = self._spectral_source(layer, source)
        return None if src is None else full(src)

    def _spectral_source(self, layer: Layer, source: str) -> torch.Tensor | None:
        """The tensor (possibly a shard of a DTensor) whose spectrum sets this layer's alpha: the weight, or in the
        gradient phase the gradient (``grad_alpha_source="grad"``) or the optimizer's first moment
        (``"momentum"``: Muon's momentum buffer or AdamW's exp_avg; the gradient before the first step, when no
        moment exists yet)."""
        if source != "grad":
            return layer.param.detach()
        if getattr(self, "grad_alpha_source", "grad") == "momentum":
            st = self.state.get(layer.param, {})
            buf = st.get("momentum_buffer", st.get("exp_avg"))
            if buf is not None:
                return aligned(buf, layer.param, repr(layer.name))
        g = layer.param.grad
        return None if g is None else aligned(g, layer.param, repr(layer.name))  # e.g. a Partial grad: reduced

    @_refreshes_multipliers
    @torch.no_grad()
    def update_metrics(self, t: int | None = None) -> torch.Tensor:
        """Measure every layer's metric (PL_Alpha_Hill for LLR) now and set new multipliers (normally called by
        ``step``); returns the values (float64, one per layer). Layers whose value is not usable keep their previous
        multiplier; each cause is warned about once, and ``layer_stats()`` names it (``spectral_update``)."""
        return update_layer_metrics(self, t)

    update_alphas = update_metrics  # the name before other metrics existed

    def multipliers(self) -> torch.Tensor:
        """Multipliers in force for the next step (float64, CPU, one per layer)."""
        return self.policy.multipliers(self.llr_step)

    def layer_stats(self) -> list[dict[str, Any]]:
        """Per layer: name, kind, shape, alpha (the policy's metric), LR multiplier, LR of the next step, weight-decay
        multiplier and weight decay of the next step, and the Hill status."""
        mult = self.multipliers()
        wd_mult = self.policy.wd_multipliers(self.llr_step)
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        stats = []
        for i, layer in enumerate(self.layers):
            g = group_of.get(id(layer.param), {})
            lr_wd = [float(g.get("lr", float("nan"))), float(g.get("weight_decay", float("nan")))]
            stats.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "shape": layer.shape,
                    "alpha": float(self.policy.alphas[i]),
                    "multiplier": float(mult[i]),
                    "lr": float(per_layer(lr_wd, 0, mult, i)),
                    "wd_multiplier": float(wd_mult[i]),
                    "weight_decay": float(per_layer(lr_wd, 1, wd_mult, i)),
                    "status": self.layer_status[i],
                }
            )
        return stats

    # ----- param groups added after construction ---------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (torch.optim API) whose parameters become LLR layers like the others.

        Names come from the model the optimizer was built on, else from (name, tensor) pairs in the group, else
        they are generated (with the unnamed-parameters warning). New layers start at multiplier 1 (s if pinned),
        are measured at the next LLR update, and are stepped from the next step. Hyperparameters missing from
        the group come from the constructor's defaults; they are checked as at construction.
        """
        if "layers" not in self.__dict__:  # torch.optim.Optimizer.__init__ adding the constructor's groups
            super().add_param_group(param_group)
            return
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("add_param_group expects a dict with a 'params' entry (tensors or (name, tensor) pairs)")
        model = self._model_ref() if self._model_ref is not None else None
        groups, named, unnamed = normalize_groups([param_group], model, first_group=len(self.param_groups))
        for name, p in named:
            if id(p) in self._layer_index:
                raise ValueError(f"parameter {name!r} is already in a param group of this optimizer; a parameter "
                                 "can belong to one group only")
        warn_unnamed(unnamed, type(self).__name__)
        if "param_names" in self.param_groups[0]:  # torch: all groups with names or none (generated ones if need be)
            groups[0]["param_names"] = [n for n, _ in named]
        else:
            groups[0].pop("param_names", None)
        layers = classify_named(named, model, self._classify)
        first, n_layers, policy = len(self.param_groups), len(self.layers), copy.deepcopy(self.policy)
        self._layer_index.update({id(layer.param): n_layers + i for i, layer in enumerate(layers)})
        self.layers.extend(layers)
        self.policy.add_layers(self.policy.pins(layers), layers)
        self.layer_status.extend([STATUS_NOT_MEASURED] * len(layers))
        try:
            for group in self._expand_added_group(groups[0], layers):
                super().add_param_group(group)  # fills in the defaults
            self._check_groups(list(range(first, len(self.param_groups))))
            reject_sparse_embeddings(model, {id(layer.param): 0 for layer in layers})
        except Exception:  # leave the optimizer as it was
            del self.param_groups[first:]
            del self.layers[n_layers:], self.layer_status[n_layers:]
            for layer in layers:
                self._layer_index.pop(id(layer.param), None)
            self.policy = policy
            raise
        self._dtensors = self._find_dtensors()

    def _expand_added_group(self, group: dict[str, Any], layers: list[Layer]) -> list[dict[str, Any]]:
        """The param groups one added group becomes (LLRMuon splits it into Muon and AdamW parts)."""
        return [group]

    def _check_groups(self, group_ids: list[int]) -> None:
        """Check the hyperparameters and backends of these param groups (as the constructor does)."""

    def reset_llr(self, step: int = 0) -> None:
        """Start the LLR state afresh at ``step``: no alphas, multipliers 1 (pinned layers s), not measured yet."""
        self.policy = self.policy.fresh()
        self.llr_step = int(step)
        self.llr_update_seconds = 0.0
        self.layer_status = [STATUS_NOT_MEASURED] * len(self.layers)

    # ----- step -------------------------------------------------------------------------------------
    # How a step splits between host and device, so that it compiles into one graph and can be captured:
    # the multipliers live in device tensors (one per device) that only ``_host_step`` writes; each step computes
    # the per-tensor LR / weight-decay buffers on device from them and the group values; the host step counter
    # is advanced by ``_after_step`` (in a compiled graph: by the ``llr_tick`` op, so traced code never reads it:
    # dynamo would specialise the changing int and recompile at every step) and sets ``_host_due`` when the next
    # step has host work. Traced code reads only ``_host_due`` (a bool: two graph variants, no recompiles).

    @property
    def llr_step(self) -> int:
        """Steps taken so far (the t of Algorithm 1). Setting it (resume, reset_llr) makes the next step refresh
        the multipliers on the host."""
        return self._llr_step

    @llr_step.setter
    def llr_step(self, value: int) -> None:
        self._llr_step = int(value)
        self._host_due = True

    @property
    def policy(self) -> LayerwisePolicy:
        """The layerwise policy (LLR by default: alphas, multipliers, schedule). Replacing it makes the next step
        refresh the multipliers."""
        return self._policy

    @policy.setter
    def policy(self, policy: LayerwisePolicy) -> None:
        self._policy = policy
        self._host_due = True

    llr = policy  # the name from before other policies existed

    @property
    def hill_status(self) -> list[str]:
        """Alias of ``layer_status`` (the name from when alpha was the only metric)."""
        return self.layer_status

    @hill_status.setter
    def hill_status(self, value: list[str]) -> None:
        self.layer_status = value

    def _init_step_state(self) -> None:
        self._dtensors = self._find_dtensors()
        self._signature: tuple | None = None  # tensors with grads when the step plans were built
        self._mult_dev: dict[str, torch.Tensor] = {}  # multipliers (float64) on each device that steps
        self._mult_layers = -1
        self._mult_version = 0  # bumped whenever the device multipliers change (eager buffer cache key)
        self._group_cache: dict[tuple, tuple[tuple, torch.Tensor]] = {}
        first = next((p for g in self.param_groups for p in g["params"]), None)
        device = first.device if first is not None else torch.device("cpu")
        self._tick_t = torch.zeros((), dtype=torch.int64, device=device)  # what llr_tick writes: compiled steps
        self._tick_handle = register_tick(self._after_step)
        self._host_due = True
        if self.capturable:
            self._lrs_to_device_tensors()

    def _step_params(self) -> None:
        """Step every parameter with a grad, reading multipliers from ``_multipliers_on(device)``."""
        raise NotImplementedError

    def _rebuild_plans(self) -> None:
        """(Re)build the cached step plans for the current tensors with grads (called by ``_host_step``)."""
        raise NotImplementedError

    def _grad_signature(self) -> tuple:
        """(group, id) of every tensor with a grad, in order: when it changes, the step plans are rebuilt."""
        return tuple((gi, id(p)) for gi, g in enumerate(self.param_groups) for p in g["params"] if p.grad is not None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step; re-measures alphas first when Algorithm 1 says so.

        Under ``torch.compile`` a step traces into one graph; it leaves the graph only at ``_host_step`` (the
        documented break point), on steps with host work: LLR updates (alpha measurement), ramp steps, and the
        first step after the set of tensors with grads changed or a state was loaded.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._dtensors[1]:  # DTensor parameters (found at construction and add_param_group)
            self._align_grads()
        if self._host_due or self._grad_signature() != self._signature:
            self._host_step()
        self._step_params()
        if torch.compiler.is_compiling():
            llr_tick(self._tick_t, self._tick_handle)  # calls self._after_step() when the graph runs
        else:
            self._after_step()
        return loss

    # An LR scheduler wraps optimizer.step in a function of torch/optim/lr_scheduler.py, a file dynamo never
    # traces (a compiled step would always break there), unless step carries this attribute; it only serves the
    # "scheduler.step() before optimizer.step()" warning, for which _after_step sets _opt_called itself (on the
    # host: dynamo refuses a setattr on an optimizer inside a traced step in torch 2.11).
    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]

    def _find_dtensors(self) -> tuple[int, list[torch.Tensor], dict[int, str]]:
        """(number of parameters, the DTensor parameters, their names): refreshed when parameters are added."""
        ps = [p for g in self.param_groups for p in g["params"] if is_dtensor(p)]
        n = sum(len(g["params"]) for g in self.param_groups)
        names = {id(p): repr(self.layers[self.layer_of(p)].name) for p in ps}
        for p in ps:
            check_splittable(p, names[id(p)])  # a Partial parameter: no rank holds any part of its value
        return n, ps, names

    @torch.compiler.disable
    def _align_grads(self) -> None:
        """Every DTensor grad in its parameter's placements before anything reads it (``_dtensor.align_grads``)."""
        align_grads(self._dtensors[1], self._dtensors[2])

    @torch.compiler.disable
    def _host_step(self) -> None:
        """The host work of a step, and the only point where a compiled step leaves the graph: measure alphas
        (LLR update steps), copy the multipliers of this step to the device (update and ramp steps: one small
        host-to-device copy), and rebuild the step plans when the tensors with grads changed (first step,
        add_param_group, a loaded state). Steps without such work never call it."""
        if self.capturable and _capturing():
            raise RuntimeError(
                f"step {self.llr_step} of this {type(self).__name__} has host work (an LLR update, a multiplier ramp, "
                "or new tensors to plan for) and cannot be captured in a CUDA graph: run it eagerly and capture a "
                "later step (after_replay() says when a replayed step must run eagerly)"
            )
        t = self.llr_step
        self._state_init_only = self._is_state_init_call()
        if self.policy.is_update_step(t) and not self._state_init_only:
            self.update_alphas(t)
        mult = torch.stack([self.policy.multipliers(t), self.policy.wd_multipliers(t)]).to(torch.float64)
        signature = self._grad_signature()
        if signature != self._signature or mult.shape[1] != self._mult_layers:
            if self.capturable:
                self._lrs_to_device_tensors()
            self._mult_dev = {}
            self._rebuild_plans()
            self._mark_layer_state()
            self._signature, self._mult_layers = signature, mult.shape[1]
        for buf in self._mult_dev.values():
            buf.copy_(mult)
        self._mult_version += 1
        self._host_due = False

    def _after_step(self) -> None:
        """Host bookkeeping at the end of every step: called by an eager step, and by the llr_tick op when the
        graph of a compiled step runs."""
        self._opt_called = True  # what an LR scheduler's wrapper of step() records: no "called before" warning
        if self.capturable and _capturing():  # a capture runs no kernels: each replay is counted by after_replay()
            return
        if self.__dict__.pop("_state_init_only", False):  # DCP's state initialisation: not a training step
            for st in self.state.values():
                if isinstance(st.get("step"), torch.Tensor):
                    st["step"].zero_()  # in place: the launches' step buffers hold views of these
            self.last_grad_norm = None
            self._host_due = True  # step 0's LLR update is still to come
            return
        self._llr_step += 1
        if self._policy.is_update_step(self._llr_step) or self._policy.ramping(self._llr_step):
            self._host_due = True

    @property
    def host_work_due(self) -> bool:
        """True when the next step() has host work (an LLR update, a ramp step, the first step, the first after
        a state load or add_param_group): it then leaves a compiled graph at ``_host_step`` and cannot be captured
        in a CUDA graph. Run it eagerly when compiling with fullgraph=True or replaying a captured step. (A step
        whose set of tensors with grads differs from the previous one also has host work; that is not known
        before the backward pass.)"""
        return self._host_due or self._signature is None or len(self.layers) != self._mult_layers

    def after_replay(self) -> bool:
        """The host bookkeeping of a step that ran as a CUDA-graph replay (a replay runs no Python): advances
        ``llr_step``. Returns ``host_work_due``: when True, run the next step eagerly, not as a replay."""
        self._after_step()
        return self.host_work_due

    def _multipliers_on(self, device: torch.device) -> torch.Tensor:
        """This step's LR multipliers (float64, one per layer) on ``device``; written only by ``_host_step``."""
        return self._both_multipliers_on(device)[0]

    def _wd_multipliers_on(self, device: torch.device) -> torch.Tensor:
        """This step's weight-decay multipliers (float64, one per layer; 1 unless the policy sets them)."""
        return self._both_multipliers_on(device)[1]

    def _both_multipliers_on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        buf = self._mult_dev.get(key)
        if buf is None:
            buf = self._mult_dev[key] = torch.ones(2, len(self.layers), dtype=torch.float64, device=device)
        return buf

    def _group_values(self, key: str, device: torch.device) -> tuple[torch.Tensor, tuple | None]:
        """(every param group's ``key`` as a float64 (G,) tensor on ``device``, a host token equal between calls
        when the values are, or None when unknown). Tensor values (capturable LRs, tensor LRs) are gathered on
        device; float values are uploaded once per change in eager mode, and traced as constants when compiling."""
        vals = [g[key] for g in self.param_groups]
        if any(isinstance(v, torch.Tensor) for v in vals):
            return torch.stack([v.to(device=device, dtype=torch.float64).reshape(()) if isinstance(v, torch.Tensor)
                                else torch.tensor(float(v), dtype=torch.float64, device=device) for v in vals]), None
        if torch.compiler.is_compiling():  # ones * value keeps a changing float symbolic (torch.tensor specialises it)
            one = torch.ones((), dtype=torch.float64, device=device)
            return torch.stack([one * v for v in vals]), None
        token = tuple(float(v) for v in vals)
        hit = self._group_cache.get((key, str(device)))
        if hit is None or hit[0] != token:
            hit = self._group_cache[(key, str(device))] = (token, torch.tensor(token, dtype=torch.float64, device=device))
        return hit[1], token

    def _group_lr_wd(self, device: torch.device, filled: tuple | None) -> tuple[torch.Tensor, torch.Tensor, tuple | None] | None:
        """(every group's lr, every group's weight decay, the key to store as ``filled``) on ``device`` for a step's
        per-tensor LR buffers; None when ``filled`` shows the buffers already hold these values and multipliers
        (eager mode only: the key is None when a value is a tensor or traced)."""
        group_lr, lr_token = self._group_values("lr", device)
        group_wd, wd_token = self._group_values("weight_decay", device)
        key = None if lr_token is None or wd_token is None else (lr_token, wd_token, self._mult_version)
        return None if key is not None and key == filled else (group_lr, group_wd, key)

    def _lrs_to_device_tensors(self) -> None:
        """capturable=True: a group's float lr becomes a 0-d float64 tensor on its parameters' device (a tensor lr
        elsewhere is moved there), as torch's tensor LRs: schedulers update it in place (fill_), so a captured step
        reads the new value."""
        for g in self.param_groups:
            if not g["params"]:
                continue
            device = g["params"][0].device
            lr = g["lr"]
            if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.numel() == 1):
                g["lr"] = torch.tensor(float(lr), dtype=torch.float64, device=device)

    # ----- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state_dict plus the LLR state: an "llr" entry (step, policy, layer names without wrapper
        levels and shapes: it loads into an optimizer built on the same model under any wrapper, ``checkpoint.py``)
        and, for torch.distributed.checkpoint, the same values per layer in the state of its parameter (key
        "llr"), which get/set_optimizer_state_dict carry by parameter FQN."""
        sd = super().state_dict()
        sd["llr"] = llr_entry(self)
        index = {id(p): k for k, p in enumerate(p for g in self.param_groups for p in g["params"])}
        for i, entry in per_layer_entries(self).items():
            k = index[id(self.layers[i].param)]
            sd["state"][k] = {**sd["state"].get(k, {}), PER_LAYER_KEY: entry}  # a copy: the live state is untouched
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of an LLR optimizer built on the same model (plain, compiled, DDP, FSDP1 or
        checkpoint-wrapped alike; or one that went through torch.distributed.checkpoint, which keeps only the
        per-layer LLR state); a mismatch raises ValueError naming the first differing layer."""
        state_dict = dict(state_dict)
        llr = state_dict.pop("llr", None)
        if "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("load_state_dict expects an optimizer state_dict with 'state' and 'param_groups' entries")
        params_of = self._saved_param_map(state_dict["param_groups"])
        state, layer_entries = {}, {}
        for key, entry in state_dict["state"].items():
            entry = dict(entry)
            layer_entry = entry.pop(PER_LAYER_KEY, None)
            p = params_of.get(key)
            if layer_entry is not None and p is not None and id(p) in self._layer_index:
                layer_entries[self.layer_of(p)] = layer_entry
            if entry:
                state[key] = entry
        if llr is None:
            if not layer_entries:
                hint = (" For a torch.optim.AdamW checkpoint use load_torch_state_dict (moments carried over, LLR "
                        "state fresh)." if hasattr(self, "load_torch_state_dict") else "")
                raise ValueError("this state_dict has no 'llr' entry: it was not saved by an LLR optimizer." + hint)
            llr = llr_entry_from_layers(self, layer_entries)
        check_layers(llr, self.layers)
        state_dict["state"] = state
        super().load_state_dict(state_dict)
        self._restore_state_dtypes(state, params_of)
        self.policy.load_state_dict(llr["policy"])
        self.llr_step = int(llr["step"])
        self.layer_status = list(llr.get("hill_status") or [STATUS_NOT_MEASURED] * len(self.layers))
        self.llr_update_seconds = float(llr.get("update_seconds", 0.0))
        self._on_state_loaded()

    def _saved_param_map(self, saved_groups: list[dict[str, Any]]) -> dict[Any, torch.Tensor]:
        """{a saved state key (an index, or an FQN after torch.distributed.checkpoint): this optimizer's parameter},
        pairing the saved groups' params with ours in order, as torch.optim's load_state_dict does."""
        saved = [k for g in saved_groups for k in g["params"]]
        mine = [p for g in self.param_groups for p in g["params"]]
        return dict(zip(saved, mine)) if len(saved) == len(mine) else {}

    def _restore_state_dtypes(self, saved: dict[Any, dict[str, Any]], params_of: dict[Any, torch.Tensor]) -> None:
        """Undo torch's cast of loaded state to the param dtype: fp32 moments of bf16 params stay fp32."""
        for key, entry in saved.items():
            p = params_of.get(key)
            if p is None:
                continue
            for name, value in entry.items():
                cur = self.state[p].get(name)
                if isinstance(value, torch.Tensor) and isinstance(cur, torch.Tensor) and cur.dtype != value.dtype:
                    self.state[p][name] = value.to(device=cur.device, copy=True)

    def _mark_layer_state(self) -> None:
        """Give every layer parameter that has optimizer state an "llr" entry (a 0-d placeholder tensor, so code that
        treats every state value as a tensor keeps working; ``state_dict()`` puts the layer's LLR values there): DCP's
        flattened state_dict format rebuilds on load only the state keys a parameter has now."""
        for layer in self.layers:
            st = self.state.get(layer.param)
            if st and PER_LAYER_KEY not in st:
                st[PER_LAYER_KEY] = torch.zeros(())

    def _is_state_init_call(self) -> bool:
        """True for the step with which torch.distributed.checkpoint creates a fresh optimizer's state
        (``torch.distributed.checkpoint.state_dict._init_optim_state``: no state yet, every lr 0, every gradient
        zero). That step creates the state and moves nothing; it is not an LLR step (see ``_after_step``)."""
        if self.state or any(float(g["lr"]) != 0.0 for g in self.param_groups):
            return False
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.requires_grad]
        shards = [local(g) for g in grads if g is not None]
        return len(shards) == len(grads) > 0 and not any(bool(g.any()) for g in shards)

    def _on_state_loaded(self) -> None:
        """Hook for subclasses that cache buffers built from state."""
