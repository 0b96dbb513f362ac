"""What a user is told when building an optimizer goes half-right: LLRMuon without layer names (the embedding and
the head land in Newton-Schulz), a fully frozen model; and that torch's LR-scheduler order check behaves as with
torch.optim.AdamW on every step path (eager, closure, ``torch.compile(opt.step)`` built before or after the
scheduler, a CUDA-graph replay's ``after_replay``).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import TinyLlama
from torch import nn

from llr_kernels import LLRAdamW, LLRMuon

ORDER_WARNING = "Detected call of `lr_scheduler.step()` before `optimizer.step()`"


def test_llr_muon_without_names_says_embedding_and_head_go_to_newton_schulz():
    model = TinyLlama()
    with pytest.warns(UserWarning) as rec:
        opt = LLRMuon(model.parameters(), backend="torch")
    msgs = [str(w.message) for w in rec if "without names" in str(w.message)]
    assert len(msgs) == 1
    assert "goes to the Muon (Newton-Schulz) group, the embedding and the LM head included" in msgs[0]
    assert "LLRMuon(model, ...)" in msgs[0]
    # what the warning says happened: both sit in a use_muon group
    muon_params = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert id(model.model.embed_tokens.weight) in muon_params and id(model.lm_head.weight) in muon_params
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = LLRMuon(model, backend="torch")  # with names: no warning, and both go to AdamW
    muon_params = {id(p) for g in named.param_groups if g["use_muon"] for p in g["params"]}
    assert id(model.model.embed_tokens.weight) not in muon_params and id(model.lm_head.weight) not in muon_params


def test_llr_adamw_without_names_does_not_speak_of_muon():
    with pytest.warns(UserWarning, match="without names") as rec:
        LLRAdamW(TinyLlama().parameters(), backend="torch")
    assert not [w for w in rec if "Newton-Schulz" in str(w.message)]


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon])
def test_frozen_model_is_named_as_such(cls):
    model = TinyLlama().requires_grad_(False)
    n = len(list(model.parameters()))
    with pytest.raises(ValueError, match=rf"the model \(TinyLlama\) has no trainable parameters: all {n} of its "
                                         r"parameters have requires_grad=False\. Unfreeze"):
        cls(model, backend="torch")
    with pytest.raises(ValueError, match=r"the model \(Module\) has no trainable parameters: it has no parameters"):
        cls(nn.Module(), backend="torch")
    with pytest.raises(ValueError, match="empty parameter list: pass a model, its"):
        cls([], backend="torch")
    model.lm_head.requires_grad_(True)  # one trainable matrix is enough
    opt = cls(model, backend="torch")
    assert [layer.name for layer in opt.layers] == ["lm_head.weight"]


def _loop(model: nn.Module, opt: torch.optim.Optimizer, *, compile_step: str | None, closure: bool, seed: int,
          steps: int = 3) -> list[str]:
    """A training loop with a LambdaLR; ``compile_step``: None, "before" or "after" the scheduler is built.
    Returns the scheduler-order warnings it raised."""
    step = None
    if compile_step == "before":
        step = torch.compile(opt.step, backend="eager")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    if compile_step == "after":
        step = torch.compile(opt.step, backend="eager")
    step = step or opt.step
    g = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            idx = torch.randint(0, 96, (2, 8), generator=g)

            def loss_fn(idx: torch.Tensor = idx) -> torch.Tensor:
                opt.zero_grad()
                loss = model(idx).logsumexp(-1).mean()
                loss.backward()
                return loss

            if closure:
                step(loss_fn)
            else:
                loss_fn()
                step()
            sched.step()
    return [str(w.message) for w in caught if ORDER_WARNING in str(w.message)]


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon])
@pytest.mark.parametrize("compile_step,closure", [(None, False), (None, True), ("after", False), ("before", False)],
                         ids=["eager", "closure", "compiled-after-scheduler", "compiled-before-scheduler"])
def test_scheduler_order_check_quiet_on_every_step_path(cls, compile_step, closure, seed):
    """No "lr_scheduler.step() before optimizer.step()" warning when the loop steps the optimizer first, on every
    step path. The reference: torch.optim.AdamW in the same loop is quiet too (except when its step is compiled
    before the scheduler exists: the scheduler then wraps the compiled function, and torch warns by mistake)."""
    torch._dynamo.reset()
    model = TinyLlama()
    ref_model = TinyLlama()
    ref_model.load_state_dict(model.state_dict())
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-3)
    ref_warned = _loop(ref_model, ref, compile_step=compile_step, closure=closure, seed=seed)
    assert (len(ref_warned) > 0) == (compile_step == "before")  # the reference behaves as described above
    opt = cls(model, lr=1e-3, interval=2, backend="torch")
    assert _loop(model, opt, compile_step=compile_step, closure=closure, seed=seed) == []
    assert opt.llr_step == 3 and opt._opt_called


def test_scheduler_order_check_still_fires_when_the_order_is_wrong():
    """The marker is set by steps only: a scheduler stepped first still gets torch's warning."""
    opt = LLRAdamW(TinyLlama(), lr=1e-3, backend="torch")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"):
        sched.step()


def test_after_replay_sets_the_marker():
    """A CUDA-graph replay runs no Python; ``after_replay()`` does the step's bookkeeping, the marker included."""
    opt = LLRAdamW(TinyLlama(), lr=1e-3, backend="torch")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    opt.after_replay()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()
    assert opt.llr_step == 1
