"""LLR optimizers inside Hugging Face ``Trainer`` with the Trainer's own parameter groups.

The Trainer builds two groups: the parameters it decays (``args.weight_decay``) and the ones it does not (biases
and norms, weight decay 0). ``Trainer(optimizer_cls_and_kwargs=(LLRAdamW, {"model": model, ...}))`` loses them:
transformers takes ``model`` out of the kwargs and passes it as the parameters, so every parameter gets the
optimizer's one weight decay. ``llr_optimizer_cls_and_kwargs`` gives the Trainer an optimizer class bound to
the model: the Trainer passes its groups, and the optimizer still reads the layer kinds (embedding, head, norms)
from the model::

    from llr_kernels import LLRAdamW
    from llr_kernels.integrations.hf import llr_optimizer_cls_and_kwargs

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizer_cls_and_kwargs=llr_optimizer_cls_and_kwargs(model, LLRAdamW, lr=args.learning_rate,
                                                                             s=3.0, interval=500))

transformers itself is not imported here: the class works with any caller that passes param groups.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..optim import LLRAdamW, LLRMuon, LLROptimizer


def llr_optimizer_cls_and_kwargs(
    model: nn.Module, optimizer_cls: type[LLROptimizer] = LLRAdamW, /, **kwargs: Any
) -> tuple[type[LLROptimizer], dict[str, Any]]:
    """``(class, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``: ``optimizer_cls`` (LLRAdamW or LLRMuon)
    bound to ``model``, built on the param groups the Trainer passes, so its decay / no-decay split and
    ``args.weight_decay`` hold. ``kwargs`` are the optimizer's arguments; give ``lr`` (the Trainer passes none
    of its own through this route). With LLRMuon each group's weight decay also applies to its AdamW part
    (embedding, head, norms), so the Trainer's no-decay parameters stay undecayed there too."""
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, LLROptimizer)):
        raise TypeError(f"optimizer_cls must be LLRAdamW, LLRMuon or another LLROptimizer class, got {optimizer_cls!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be the nn.Module the Trainer trains, got {type(model).__name__}")
    for key in ("model", "params"):
        if key in kwargs:
            raise ValueError(f"do not pass {key!r} in the kwargs: transformers would take it as the parameters and "
                             "drop the Trainer's decay / no-decay groups; the model is bound by the first argument")
    bound = model
    muon = issubclass(optimizer_cls, LLRMuon)

    def __init__(self: LLROptimizer, params: Any, **kw: Any) -> None:
        if muon:
            params = [_adamw_part_keeps_decay(g) for g in params] if _are_groups(params) else params
        optimizer_cls.__init__(self, params, model=bound, **kw)

    # the user's class name in messages (the subclass only binds the model); the qualified name says it is bound
    cls = type(optimizer_cls.__name__, (optimizer_cls,), {
        "__init__": __init__, "__module__": __name__,
        "__qualname__": f"{optimizer_cls.__qualname__}[bound to {type(model).__name__}]"})
    return cls, dict(kwargs)


def _are_groups(params: Any) -> bool:
    return isinstance(params, list) and bool(params) and all(isinstance(g, dict) for g in params)


def _adamw_part_keeps_decay(group: dict[str, Any]) -> dict[str, Any]:
    """LLRMuon splits a group into a Muon part and an AdamW part that takes ``adamw_weight_decay``: carry the
    group's own weight decay there (the Trainer's 0 for norms and biases)."""
    if "weight_decay" in group and "adamw_weight_decay" not in group and "use_muon" not in group:
        return {**group, "adamw_weight_decay": group["weight_decay"]}
    return group
