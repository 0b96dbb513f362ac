"""LLR optimizers in torchtitan (PyPI ``torchtitan`` 0.3.0): one LLR optimizer per model part, one policy over all.

torchtitan builds its optimizers through ``OptimizersContainer`` from param groups only (no model, so no layer
kinds) and knows only the optimizers it registers by name. ``LLROptimizersContainer`` builds one ``LLRAdamW`` or
``LLRMuon`` per model part, from torchtitan's ``{"params", "param_names"}`` groups (canonical FQNs: its
FQN-keyed checkpoints work) plus ``model=part`` (embedding, LM head and the other kinds from module types), all in
one ``PolicyGroup``: Eq. 3's range and the outlier rule span every pipeline stage and every model part, as if one
optimizer held the whole model. Gradient clipping stays torchtitan's (``training.max_norm``); its LR schedulers
wrap each part's optimizer as usual (they edit group["lr"], which LLR multiplies per layer).

From the command line (any torchtitan entry point; ``--optimizer.*`` overrides the fields of ``Config``):

    torchrun --nproc_per_node 8 -m torchtitan.train --module llr_kernels.integrations.torchtitan \\
        --config llama3_debugmodel_llr --parallelism.pipeline_parallel_degree 2 --optimizer.s 3

or in Python: ``with_llr(config)`` turns any ``Trainer.Config`` into one that trains with LLR. ``total_steps``
defaults to the run's ``training.steps``; the pipeline group and this rank's stage indices are attached after the
trainer builds the optimizers (``attach_parallel_dims``, run through the model spec's post_optimizer_build_fn).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn
from torchtitan.components.optimizer import OptimizersContainer, ParamGroupConfig
from torchtitan.trainer import Trainer

from ..optim import LLRAdamW, LLRMuon
from ..optim.policy_group import PolicyGroup

OPTIMIZERS: dict[str, type] = {"LLRAdamW": LLRAdamW, "LLRMuon": LLRMuon}


class LLROptimizersContainer(OptimizersContainer):
    """torchtitan's optimizer container with one LLR optimizer per model part and one policy over all parts."""

    @dataclass(kw_only=True, slots=True)
    class Config(OptimizersContainer.Config):
        """The LLR optimizer of every model part. ``param_groups`` (torchtitan's, optional) split a part's
        parameters into groups by FQN pattern with their own lr / weight_decay; every pattern must name this
        optimizer. Arguments not listed here go in ``optimizer_kwargs``."""

        name: str = "LLRAdamW"
        """"LLRAdamW" or "LLRMuon"."""
        lr: float = 8e-4
        betas: tuple[float, float] = (0.9, 0.95)
        """AdamW's betas (LLRMuon: those of its AdamW part)."""
        eps: float = 1e-8
        weight_decay: float = 0.1
        s: float = 3.0
        """LRs span [lr, s * lr] (paper: 3 with AdamW, 2 with Muon)."""
        interval: int = 500
        """Steps between LLR updates (paper: 500)."""
        total_steps: int | None = None
        """Length of training for the gradient phase; None: the run's training.steps."""
        grad_phase: float = 0.05
        policy: str = "llr"
        """A preset of llr_kernels.policies.PRESETS ("llr", "llr-shuffled", "alphadecay", "sharpness", "rlrs", ...)."""
        min_eigs: int = 50
        backend: str = "auto"
        optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
        """Any other argument of LLRAdamW / LLRMuon (e.g. {"adamw_lr": 3e-4} for LLRMuon)."""
        run_steps: int | None = None
        """Set from training.steps by ``with_llr`` (the default of total_steps); not meant to be set by hand."""
        pipeline_schedule: str | None = None
        """Set from parallelism.pipeline_parallel_schedule by ``with_llr``: orders interleaved stages."""

    def __init__(self, config: Config, *, model_parts: list[nn.Module]) -> None:
        if config.name not in OPTIMIZERS:
            raise ValueError(f"optimizer name {config.name!r} is not an LLR optimizer; choose from {sorted(OPTIMIZERS)}")
        patterns = config.param_groups or [ParamGroupConfig(pattern=r".*", optimizer_name=config.name)]
        for pg in patterns:
            if pg.optimizer_name != config.name:
                raise ValueError(f"param group {pg.pattern!r} names optimizer {pg.optimizer_name!r}, but LLR runs one "
                                 f"optimizer ({config.name!r}) per model part so that its policy spans the part; set "
                                 f"optimizer_name={config.name!r} and give the group its own lr / weight_decay instead")
        self.model_parts = model_parts
        self.optimizers = []
        self.policy_group = PolicyGroup()
        cls, kwargs = OPTIMIZERS[config.name], llr_kwargs(config)
        all_params: list[nn.Parameter] = []
        for part in model_parts:
            groups, _ = self._build_param_groups(part, patterns, {})
            opt = cls(groups[config.name], model=part, policy_group=self.policy_group, **kwargs)
            self.optimizers.append(opt)
            all_params += [p for g in opt.param_groups for p in g["params"]]
        self._validate_params(all_params)
        self.pipeline_schedule = config.pipeline_schedule
        self._post_init(all_params)

    def attach_parallel_dims(self, parallel_dims: Any) -> None:
        """Share the policy with the other pipeline stages (the "pp" mesh's group), in stage order."""
        if not getattr(parallel_dims, "pp_enabled", False):
            return
        mesh = parallel_dims.get_mesh("pp")
        self.policy_group.bind(mesh.get_group(), stage_indices(mesh.get_local_rank(), mesh.size(),
                                                              len(self.model_parts), self.pipeline_schedule))


def llr_kwargs(config: LLROptimizersContainer.Config) -> dict[str, Any]:
    """The optimizer arguments of a container config (clipping left to torchtitan: no max_grad_norm)."""
    common = dict(lr=config.lr, weight_decay=config.weight_decay, s=config.s, interval=config.interval,
                  total_steps=config.total_steps if config.total_steps is not None else config.run_steps,
                  grad_phase=config.grad_phase, policy=config.policy, min_eigs=config.min_eigs, backend=config.backend)
    if config.name == "LLRMuon":
        common.update(adamw_betas=tuple(config.betas), adamw_eps=config.eps)
    else:
        common.update(betas=tuple(config.betas), eps=config.eps)
    return {**common, **config.optimizer_kwargs}


def stage_indices(pp_rank: int, pp_degree: int, parts: int, schedule: str | None) -> list[int] | None:
    """This rank's stage indices, in the order of its model parts (torchtitan's mapping for ``schedule``); None
    (rank order) when the schedule is not known and a rank holds one part."""
    if schedule is None:
        if parts > 1:
            raise ValueError("several model parts per rank need the pipeline schedule to order their stages; build the "
                             "config with with_llr(...) or set optimizer.pipeline_schedule")
        return None
    from torchtitan.distributed.pipeline_parallel import _get_pp_rank_to_stage_indices_mapping

    return list(_get_pp_rank_to_stage_indices_mapping(pp_rank, pp_degree, schedule, parts * pp_degree))


def _attach_then(previous: Callable | None) -> Callable:
    def post_optimizer_build(optimizers: Any, model_parts: list[nn.Module], parallel_dims: Any) -> None:
        if previous is not None:
            previous(optimizers, model_parts, parallel_dims)
        if isinstance(optimizers, LLROptimizersContainer):
            optimizers.attach_parallel_dims(parallel_dims)

    return post_optimizer_build


@dataclass(kw_only=True, slots=True)
class LLRTrainerConfig(Trainer.Config):
    """torchtitan's Trainer.Config whose LLR optimizer follows the final (command-line) training.steps and
    pipeline schedule."""

    def __post_init__(self) -> None:
        Trainer.Config.__post_init__(self)
        if isinstance(self.optimizer, LLROptimizersContainer.Config):
            self.optimizer.run_steps = self.training.steps
            self.optimizer.pipeline_schedule = self.parallelism.pipeline_parallel_schedule


def with_llr(config: Trainer.Config, **fields: Any) -> LLRTrainerConfig:
    """``config`` training with LLR: its optimizer replaced by ``LLROptimizersContainer.Config(**fields)`` (lr,
    betas, eps and weight_decay taken from its catch-all AdamW group unless given) and the model spec's
    post_optimizer_build_fn extended to attach the pipeline group."""
    base = {}
    groups = getattr(config.optimizer, "param_groups", None) or []
    if groups and groups[-1].optimizer_name in ("AdamW", "Adam"):
        kw = groups[-1].optimizer_kwargs
        base = {k: kw[k] for k in ("lr", "betas", "eps", "weight_decay") if k in kw}
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values["optimizer"] = LLROptimizersContainer.Config(**{**base, **fields})
    spec = values.get("model_spec")
    if spec is not None:
        values["model_spec"] = dataclasses.replace(spec, post_optimizer_build_fn=_attach_then(spec.post_optimizer_build_fn))
    return LLRTrainerConfig(**values)


def llama3_debugmodel_llr() -> LLRTrainerConfig:
    """torchtitan's llama3 debug model (``--module llama3 --config llama3_debugmodel``) trained with LLRAdamW."""
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    return with_llr(llama3_debugmodel(), interval=5, s=3.0)


__all__ = ["LLROptimizersContainer", "LLRTrainerConfig", "llama3_debugmodel_llr", "stage_indices", "with_llr"]

