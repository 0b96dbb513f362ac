"""The LLR map (paper Eq. 3) and Algorithm 1's schedule, against the published formulas."""
import pytest
import torch

from llr_kernels.policy import LLRConfig, LLRPolicy, llr_multipliers


def eq3(alphas, s):
    lo, hi = min(alphas), max(alphas)
    return [(a - lo) / (hi - lo) * (s - 1) + 1 for a in alphas]


@pytest.mark.parametrize("s", [1.5, 2.0, 3.0, 7.0])
def test_eq3_on_random_alphas(s):
    alphas = (torch.rand(17, dtype=torch.float64) * 5 + 1.5).tolist()
    got = llr_multipliers(torch.tensor(alphas, dtype=torch.float64), s)
    assert torch.allclose(got, torch.tensor(eq3(alphas, s), dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(got.min()) == pytest.approx(1.0) and float(got.max()) == pytest.approx(s)


def test_pinned_layers_sit_at_s_and_do_not_set_the_range():
    alphas = torch.tensor([9.0, 2.0, 3.0, 4.0], dtype=torch.float64)  # layer 0: embedding, huge alpha
    pinned = torch.tensor([True, False, False, False])
    got = llr_multipliers(alphas, 3.0, pinned=pinned)
    assert got.tolist() == pytest.approx([3.0] + eq3([2.0, 3.0, 4.0], 3.0))


def test_nan_alpha_keeps_previous_multiplier():
    prev = torch.tensor([1.7, 1.2, 2.5, 1.0], dtype=torch.float64)
    alphas = torch.tensor([float("nan"), 2.0, 4.0, 3.0], dtype=torch.float64)
    got = llr_multipliers(alphas, 3.0, previous=prev)
    assert got[0] == 1.7
    assert got[1:].tolist() == pytest.approx(eq3([2.0, 4.0, 3.0], 3.0))


def test_degenerate_ranges_give_one():
    assert llr_multipliers(torch.full((5,), 3.3, dtype=torch.float64), 3.0).tolist() == [1.0] * 5
    one = llr_multipliers(torch.tensor([float("nan"), 2.5, float("nan")]), 3.0, previous=torch.tensor([2.0, 2.0, 2.0]))
    assert one.tolist() == [2.0, 1.0, 2.0]
    none = llr_multipliers(torch.tensor([float("nan")] * 3), 3.0, previous=torch.tensor([1.5, 2.0, 2.5]))
    assert none.tolist() == [1.5, 2.0, 2.5]


def test_infinite_alpha_does_not_squash_the_others():
    # the TempBalance failure: one layer with alpha = inf would map everyone else to 1
    got = llr_multipliers(torch.tensor([float("inf"), 2.0, 3.0, 4.0]), 3.0)
    assert got.tolist() == pytest.approx([1.0] + eq3([2.0, 3.0, 4.0], 3.0))


def test_schedule_follows_algorithm_1():
    pol = LLRPolicy(LLRConfig(s=3.0, interval=10, total_steps=200, grad_phase=0.05), 3, torch.zeros(3, dtype=torch.bool))
    assert [t for t in range(45) if pol.is_update_step(t)] == [0, 10, 20, 30, 40]
    # t / T <= p: steps 0..10 use gradients, 11.. weights
    assert [pol.source(t) for t in (0, 9, 10, 11, 150)] == ["grad", "grad", "grad", "weight", "weight"]
    assert LLRPolicy(LLRConfig(interval=10), 3, torch.zeros(3, dtype=torch.bool)).source(0) == "weight"
    assert LLRPolicy(LLRConfig(interval=10, total_steps=200, grad_phase=0.0), 1, torch.zeros(1, dtype=torch.bool)).source(0) == "weight"


def test_active_until_freezes_updates():
    pol = LLRPolicy(LLRConfig(interval=10, total_steps=100, active_until=0.2), 2, torch.zeros(2, dtype=torch.bool))
    assert [t for t in range(100) if pol.is_update_step(t)] == [0, 10]
    assert pol.phase(25) == "frozen"


def test_ramp_moves_linearly_to_the_new_multipliers():
    pol = LLRPolicy(LLRConfig(s=3.0, interval=100, ramp_steps=4), 3, torch.zeros(3, dtype=torch.bool))
    pol.update(0, torch.tensor([1.0, 2.0, 3.0]), "weight")  # from all-ones to [1, 2, 3]
    want = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for t in range(6):
        frac = min(1.0, (t + 1) / 4)
        assert torch.allclose(pol.multipliers(t), 1 + (want - 1) * frac)
    pol.update(100, torch.tensor([3.0, 2.0, 1.0]), "weight")
    assert torch.allclose(pol.multipliers(100), want + (want.flip(0) - want) * 0.25)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(s=0.5), "s must be"),
        (dict(s=float("inf")), "s must be"),
        (dict(interval=0), "interval"),
        (dict(grad_phase=1.5), "grad_phase"),
        (dict(grad_phase=-0.1), "grad_phase"),
        (dict(active_until=0.0), "active_until"),
        (dict(ramp_steps=-1), "ramp_steps"),
        (dict(total_steps=0), "total_steps"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLRConfig(**kwargs).validate()
