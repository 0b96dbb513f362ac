"""torch.distributed.checkpoint (DCP) carries the LLR state of both optimizers, in DCP's nested and flattened
formats: a resumed run equals the uninterrupted one bit for bit on CPU (cut inside a multiplier ramp and inside the
gradient phase), and DCP's initialisation of a fresh optimizer changes nothing. The multi-rank (FSDP2) case is in
test_distributed.py."""
import io
import os
import sys
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import TinyLlama, batches, lm_loss  # noqa: E402

from llr_kernels import LLRAdamW, LLRMuon  # noqa: E402

STEPS = 12
# interval 3 with a 2-step ramp: updates before steps 0, 3, 6, 9, ramps over steps 3-4, 6-7, 9-10; gradient phase
# for steps t <= 0.4 * 12, i.e. 0..4. min_eigs=8 so the 64-wide matrices get finite alphas.
LLR_KW = dict(s=3.0, interval=3, total_steps=STEPS, grad_phase=0.4, ramp_steps=2, min_eigs=8, backend="torch")
CUTS = {"inside-ramp-and-grad-phase": 4, "inside-ramp-weight-phase": 7}


def make(cls, seed: int = 0, dtype: torch.dtype = torch.float32, policy: str | None = None):
    torch.manual_seed(seed)
    model = TinyLlama().to(dtype)
    kw = dict(lr=1e-2, **LLR_KW) if cls is LLRAdamW else dict(lr=2e-2, adamw_lr=1e-2, ns_dtype=torch.float32, **LLR_KW)
    return model, cls(model, policy=policy, **kw)


def train(model, opt, data) -> None:
    for idx in data:
        lm_loss(model, idx).backward()
        opt.step()
        opt.zero_grad()


def llr_view(opt):
    """Everything of the LLR state that a resume must restore."""
    p = opt.llr
    return (opt.llr_step, p.alphas, p.target, p.start, p.outliers, p.last_update, p.last_source, p.num_updates,
            list(opt.hill_status))


def assert_same_llr(a, b) -> None:
    for x, y in zip(llr_view(a), llr_view(b)):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())
        else:
            assert x == y


def dcp_resume(cls, cut: int, flatten: bool, tmp_path, dtype=torch.float32, policy=None):
    """Train ``cut`` steps, save model and optimizer with DCP, load them into a fresh pair (another seed)."""
    data = batches(STEPS)
    model, opt = make(cls, dtype=dtype, policy=policy)
    train(model, opt, data[:cut])
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    dcp.save({"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt, options=options)},
             checkpoint_id=str(tmp_path))
    model2, opt2 = make(cls, seed=1, dtype=dtype, policy=policy)
    template = {"model": model2.state_dict(), "optim": get_optimizer_state_dict(model2, opt2, options=options)}
    dcp.load(template, checkpoint_id=str(tmp_path))
    model2.load_state_dict(template["model"])
    set_optimizer_state_dict(model2, opt2, template["optim"], options=options)
    return data, (model, opt), (model2, opt2)


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("cut", list(CUTS.values()), ids=list(CUTS))
@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=lambda c: c.__name__)
def test_dcp_resume_equals_uninterrupted(cls, cut, flatten, tmp_path):
    data, (model, opt), (model2, opt2) = dcp_resume(cls, cut, flatten, tmp_path)
    assert opt.llr.ramping(cut) and opt.llr_step == cut, "the cut must fall inside a multiplier ramp"
    assert opt.llr.alphas.isfinite().sum() >= 6, "the test needs measured alphas"
    assert_same_llr(opt2, opt)
    train(model, opt, data[cut:])
    train(model2, opt2, data[cut:])
    for (name, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), name
    assert_same_llr(opt2, opt)
    assert torch.equal(opt2.multipliers(), opt.multipliers())


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("policy", ["llr+alphadecay", "rlrs"])
def test_dcp_carries_other_policies(policy, flatten, tmp_path):
    """A policy's weight-decay multipliers (AlphaDecay, cut inside their ramp) and a schedule (RLRS) resume
    through DCP as LLR's state does; the policy's name travels too."""
    data, (model, opt), (model2, opt2) = dcp_resume(LLRAdamW, 7, flatten, tmp_path, policy=policy)
    assert opt2.llr.name == opt.llr.name
    assert torch.equal(opt2.llr.wd_target, opt.llr.wd_target) and torch.equal(opt2.llr.wd_start, opt.llr.wd_start)
    if policy != "rlrs":
        assert not torch.equal(opt.llr.wd_target, torch.ones_like(opt.llr.wd_target)), "the test needs decays set"
    train(model, opt, data[7:])
    train(model2, opt2, data[7:])
    for (name, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), name


def test_dcp_keeps_fp32_moments_of_bf16_params(tmp_path):
    """DCP keys the state by FQN; the fp32 moments of bf16 params must not come back as bf16 (torch's cast)."""
    data, (model, opt), (model2, opt2) = dcp_resume(LLRAdamW, 4, False, tmp_path, dtype=torch.bfloat16)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt2.state[p2][key].dtype == torch.float32
            assert torch.equal(opt2.state[p2][key], opt.state[p][key])


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=lambda c: c.__name__)
def test_dcp_initialisation_of_a_fresh_optimizer_changes_nothing(cls, flatten):
    """get_optimizer_state_dict on a fresh optimizer runs a step with zero gradients and lr 0 to create the state:
    no LLR step, no measurement of zero gradients (and no warning about them), and training afterwards is the same,
    bit for bit, as without it."""
    model, opt = make(cls)
    model_ref, opt_ref = make(cls)
    before = llr_view(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=flatten))
    assert osd and opt.state, "DCP should have created the optimizer state"
    assert_same_llr(opt, opt_ref)
    assert llr_view(opt)[0] == before[0] == 0 and opt.host_work_due
    data = batches(7)
    train(model, opt, data)
    train(model_ref, opt_ref, data)
    for (name, a), b in zip(model.named_parameters(), model_ref.parameters()):
        assert torch.equal(a, b), name
    assert_same_llr(opt, opt_ref)


def test_plain_state_dict_of_the_older_format_still_loads():
    """A format-2 checkpoint (the LLR state only in the top-level "llr" entry) loads as before; one without any
    LLR state fails with a message that says what it is."""
    data = batches(STEPS)
    model, opt = make(LLRAdamW)
    train(model, opt, data[:7])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # through bytes: torch.optim's load_state_dict would alias the live tensors
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    old = {**sd, "state": {k: {n: v for n, v in e.items() if n != "llr"} for k, e in sd["state"].items()},
           "llr": {**sd["llr"], "format": 2}}
    old["state"] = {k: e for k, e in old["state"].items() if e}
    model2, opt2 = make(LLRAdamW, seed=1)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(old)
    assert_same_llr(opt2, opt)
    train(model, opt, data[7:])
    train(model2, opt2, data[7:])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    bare = {"state": old["state"], "param_groups": old["param_groups"]}
    with pytest.raises(ValueError, match=r"no 'llr' entry: it was not saved by an LLR optimizer\. For a torch\.optim\.AdamW"):
        make(LLRAdamW)[1].load_state_dict(bare)
