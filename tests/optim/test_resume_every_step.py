"""Resume at EVERY step of a short run, for every policy and both optimizers, through ``state_dict`` and through
torch.distributed.checkpoint (one process): the resumed optimizer's whole state (every field of the policy, the
step, statuses, moments, param groups) equals the uninterrupted run's at the cut, and every later step equals it
bit for bit (same process, same threads, same code path: the two runs do the same arithmetic).

The run is short and busy: updates every 2 steps with a 2-step ramp, a gradient phase then a weight phase, layers
excluded by the outlier rule, so every cut falls somewhere different: before the first update, inside a ramp, on
an update step, across the phase change, after the last update.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.policies import PRESETS
from tiny_models import SpectralNet, batches, lm_loss

STEPS = 6
# min_eigs 8 measures all six matrices (the outlier rule needs 5 usable alphas); outlier_z 1.0 makes it exclude some,
# so the outlier mask, and the statuses it sets, are state that must come back too
KW = dict(weight_decay=0.1, interval=2, total_steps=STEPS, grad_phase=0.2, ramp_steps=2, min_eigs=8, outlier_z=1.0,
          backend="torch")
TIMINGS = {"update_seconds"}  # wall-clock seconds: restored at the cut, measured anew after it


def make(cls, policy: str, seed: int):
    torch.manual_seed(seed)
    model = SpectralNet(seed=seed % 1000)
    kw = dict(lr=3e-3, **KW) if cls is LLRAdamW else dict(lr=2e-2, adamw_lr=3e-3, **KW)
    return model, cls(model, policy=policy, **kw)


def one_step(model, opt, idx) -> None:
    opt.zero_grad()
    lm_loss(model, idx).backward()
    opt.step()


def assert_same(a, b, path: str, skip: set[str] = frozenset()) -> None:
    """Recursive equality: tensors bit for bit (NaN where NaN, same dtype and shape), other values ==."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            if k not in skip:
                assert_same(a[k], b[k], f"{path}[{k!r}]", skip)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]", skip)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a!r} != {b!r}"
        assert torch.equal(a.isnan(), b.isnan()) if a.is_floating_point() else True, f"{path}: NaNs differ"
        x, y = (a.nan_to_num(), b.nan_to_num()) if a.is_floating_point() else (a, b)
        assert torch.equal(x, y), f"{path}: {a} != {b}"
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def policy_fields(opt) -> dict:
    """Every field of the live LLR state (not only what state_dict() writes)."""
    p = opt.policy
    return {"step": opt.llr_step, "status": list(opt.layer_status), "multipliers": p.multipliers(opt.llr_step),
            "wd_multipliers": p.wd_multipliers(opt.llr_step), "ramping": p.ramping(opt.llr_step),
            "update_due": p.is_update_step(opt.llr_step), **p.state_dict()}


def dcp_options(k: int) -> StateDictOptions:
    return StateDictOptions(flatten_optimizer_state_dict=bool(k % 2))  # both of DCP's formats, alternately


@pytest.mark.parametrize("transport", ["state_dict", "dcp"])
@pytest.mark.parametrize("policy", sorted(PRESETS))
@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=lambda c: c.__name__)
def test_resume_at_every_step_equals_the_uninterrupted_run(cls, policy, transport, seed, tmp_path):
    data = batches(STEPS, vocab=SpectralNet.VOCAB, seed=seed)
    model, opt = make(cls, policy, seed)
    snaps = []  # after k steps: (parameters, state_dict, live LLR fields)
    for k in range(STEPS + 1):
        if transport == "dcp":
            options = dcp_options(k)
            dcp.save({"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt, options=options)},
                     checkpoint_id=str(tmp_path / str(k)))
        snaps.append(({n: p.detach().clone() for n, p in model.named_parameters()}, copy.deepcopy(opt.state_dict()),
                      copy.deepcopy(policy_fields(opt))))
        if k < STEPS:
            one_step(model, opt, data[k])
    if transport == "dcp":  # saving along the way changed nothing: a run without it ends in the same place
        plain_model, plain = make(cls, policy, seed)
        for idx in data:
            one_step(plain_model, plain, idx)
        assert_same(dict(plain_model.named_parameters()), snaps[-1][0], "parameters of a run without DCP saves")
    if opt.policy.measures and policy != "alphadecay":  # (AlphaDecay measures weights only)
        assert {f["last_source"] for *_, f in snaps} >= {"grad", "weight"}, "the run must cross the phase change"
    if opt.policy.measures:
        assert any(bool(f["outliers"].any()) for *_, f in snaps), "the run must have outliers to restore"

    for cut in range(STEPS + 1):
        model2, opt2 = make(cls, policy, seed + 1)  # other initial weights: everything must come from the checkpoint
        if transport == "state_dict":
            model2.load_state_dict(snaps[cut][0])
            opt2.load_state_dict(copy.deepcopy(snaps[cut][1]))
        else:
            options = dcp_options(cut)
            template = {"model": model2.state_dict(), "optim": get_optimizer_state_dict(model2, opt2, options=options)}
            dcp.load(template, checkpoint_id=str(tmp_path / str(cut)))
            model2.load_state_dict(template["model"])
            set_optimizer_state_dict(model2, opt2, template["optim"], options=options)
        where = f"{cls.__name__} {policy} {transport} cut {cut} (seed {seed})"
        assert_same(policy_fields(opt2), snaps[cut][2], f"{where}: LLR fields")
        assert_same(opt2.state_dict(), snaps[cut][1], f"{where}: state_dict")
        for j in range(cut, STEPS):
            one_step(model2, opt2, data[j])
            params, sd, fields = snaps[j + 1]
            assert_same(dict(model2.named_parameters()), params, f"{where}: parameters after step {j}")
            assert_same(opt2.state_dict(), sd, f"{where}: state_dict after step {j}", skip=TIMINGS)
            assert_same(policy_fields(opt2), fields, f"{where}: LLR fields after step {j}")
