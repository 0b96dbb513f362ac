"""The LLR map (paper Eq. 3) and Algorithm 1's schedule, against the published formulas (tests/reference.py)."""
import math

import pytest
import torch

from llr_kernels.policies.llr import LLRConfig, LLRPolicy, llr_multipliers
from reference import eq3

NONE_PINNED = torch.zeros(4, dtype=torch.bool)


@pytest.mark.parametrize("s", [1.5, 2.0, 3.0, 7.0])
def test_eq3_on_random_alphas(s, seed):
    gen = torch.Generator().manual_seed(seed)
    alphas = (torch.rand(17, generator=gen, dtype=torch.float64) * 5 + 1.5).tolist()
    got = llr_multipliers(torch.tensor(alphas, dtype=torch.float64), s)
    assert got.tolist() == pytest.approx(eq3(alphas, s), rel=1e-12)
    assert float(got.min()) == pytest.approx(1.0) and float(got.max()) == pytest.approx(s)
    assert int(got.argmax()) == max(range(17), key=alphas.__getitem__)  # highest alpha: largest LR


def test_pinned_layers_sit_at_s_and_do_not_set_the_range():
    alphas = torch.tensor([9.0, 2.0, 3.0, 4.0], dtype=torch.float64)  # layer 0: embedding, huge alpha
    pinned = torch.tensor([True, False, False, False])
    got = llr_multipliers(alphas, 3.0, pinned=pinned)
    assert got.tolist() == pytest.approx(eq3(alphas.tolist(), 3.0, pinned.tolist()))
    assert got.tolist() == pytest.approx([3.0, 1.0, 2.0, 3.0])


def test_nan_alpha_keeps_previous_multiplier():
    prev = torch.tensor([1.7, 1.2, 2.5, 1.0], dtype=torch.float64)
    alphas = torch.tensor([float("nan"), 2.0, 4.0, 3.0], dtype=torch.float64)
    got = llr_multipliers(alphas, 3.0, previous=prev)
    assert got[0] == 1.7
    assert got.tolist() == pytest.approx(eq3(alphas.tolist(), 3.0, previous=prev.tolist()))


def test_degenerate_ranges_give_one():
    assert llr_multipliers(torch.full((5,), 3.3, dtype=torch.float64), 3.0).tolist() == [1.0] * 5
    one = llr_multipliers(torch.tensor([float("nan"), 2.5, float("nan")]), 3.0, previous=torch.tensor([2.0, 2.0, 2.0]))
    assert one.tolist() == [2.0, 1.0, 2.0]
    none = llr_multipliers(torch.tensor([float("nan")] * 3), 3.0, previous=torch.tensor([1.5, 2.0, 2.5]))
    assert none.tolist() == [1.5, 2.0, 2.5]


def test_infinite_alpha_does_not_squash_the_others():
    # the TempBalance failure: one layer with alpha = inf would map everyone else to 1
    got = llr_multipliers(torch.tensor([float("inf"), 2.0, 3.0, 4.0]), 3.0)
    assert got.tolist()[1:] == pytest.approx(eq3([2.0, 3.0, 4.0], 3.0))


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
    assert [pol.phase(t) for t in (19, 20, 25)] == ["weight", "frozen", "frozen"]


def ramp_reference(start, target, last, t, r):
    frac = min(1.0, (t - last + 1) / r)
    return [a + (b - a) * frac for a, b in zip(start, target)]


def test_ramp_moves_linearly_to_the_new_multipliers():
    pol = LLRPolicy(LLRConfig(s=3.0, interval=100, ramp_steps=4), 3, torch.zeros(3, dtype=torch.bool))
    pol.update(0, torch.tensor([1.0, 2.0, 3.0]), "weight")  # from all-ones to [1, 2, 3]
    for t in range(6):
        assert pol.multipliers(t).tolist() == pytest.approx(ramp_reference([1.0] * 3, [1.0, 2.0, 3.0], 0, t, 4))
        assert pol.ramping(t) == (t < 4)  # the ramp spans ramp_steps steps, the last one at the target
    pol.update(100, torch.tensor([3.0, 2.0, 1.0]), "weight")
    assert pol.multipliers(100).tolist() == pytest.approx(ramp_reference([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 100, 100, 4))
    # a second update inside a ramp starts from where the ramp is, not from its target
    pol.update(101, torch.tensor([1.0, 1.5, 3.0]), "weight")
    mid = ramp_reference([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 100, 101, 4)
    assert pol.start.tolist() == pytest.approx(mid)


def test_state_dict_round_trip_mid_ramp():
    """Every field survives: alphas, targets, the ramp's start, the last update and its source."""
    cfg = LLRConfig(s=3.0, interval=5, total_steps=50, ramp_steps=3)
    pinned = torch.tensor([True, False, False, False])
    pol = LLRPolicy(cfg, 4, pinned)
    pol.update(0, torch.tensor([5.0, 2.0, 3.0, 4.0]), "grad")
    pol.update(5, torch.tensor([5.0, 4.0, float("nan"), 2.0]), "weight")
    new = LLRPolicy(cfg, 4, pinned)
    new.load_state_dict(pol.state_dict())
    for t in (5, 6, 7, 8):
        assert torch.equal(new.multipliers(t), pol.multipliers(t)), t
    assert new.last_update == 5 and new.last_source == "weight" and new.num_updates == 2
    assert torch.equal(new.alphas.nan_to_num(-1), pol.alphas.nan_to_num(-1))
    assert new.start.tolist() == pytest.approx([3.0] + eq3([2.0, 3.0, 4.0], 3.0))  # the first update's targets
    with pytest.raises(ValueError, match="LLR state has 4 layers but this optimizer has 3"):
        LLRPolicy(cfg, 3, pinned[:3]).load_state_dict(pol.state_dict())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(s=0.5), ValueError, r"^s must be >= 1"),
        (dict(s=float("inf")), ValueError, r"^s must be >= 1"),
        (dict(s="2"), TypeError, r"^s must be a real number"),
        (dict(interval=0), ValueError, r"^interval must be >= 1"),
        (dict(interval=10.0), TypeError, r"^interval must be an integer"),
        (dict(grad_phase=1.5), ValueError, r"^grad_phase must be in \[0, 1\]"),
        (dict(grad_phase=-0.1), ValueError, r"^grad_phase must be in \[0, 1\]"),
        (dict(active_until=0.0, total_steps=10), ValueError, r"^active_until must be in \(0, 1\]"),
        (dict(active_until=0.5), ValueError, r"needs total_steps"),
        (dict(ramp_steps=-1), ValueError, r"^ramp_steps must be >= 0"),
        (dict(total_steps=0), ValueError, r"^total_steps must be >= 1"),
        (dict(pin_embedding=1), TypeError, r"^pin_embedding must be True or False"),
    ],
    ids=["s-below-1", "s-inf", "s-string", "interval-0", "interval-float", "grad-phase-above-1", "grad-phase-negative",
         "active-until-0", "active-until-without-total", "ramp-negative", "total-steps-0", "pin-embedding-int"],
)
def test_bad_config_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        LLRConfig(**kwargs).validate()


def test_valid_config_is_returned():
    cfg = LLRConfig(s=1, interval=1, total_steps=1, grad_phase=1.0, active_until=0.5, ramp_steps=0)
    assert cfg.validate() is cfg and math.isfinite(cfg.s)


def test_state_dict_round_trip_keeps_the_outlier_mask():
    """The outlier mask of the last update (robust rule: alpha 40 among alphas 2-3) survives a state_dict."""
    cfg = LLRConfig(s=3.0, interval=5)
    pinned = torch.zeros(6, dtype=torch.bool)
    pol = LLRPolicy(cfg, 6, pinned)
    assert pol.update(0, torch.tensor([2.0, 2.2, 2.4, 2.6, 2.8, 40.0]), "weight").tolist() == [False] * 5 + [True]
    new = LLRPolicy(cfg, 6, pinned)
    new.load_state_dict(pol.state_dict())
    assert new.outliers.tolist() == [False] * 5 + [True]
    old = pol.state_dict()
    del old["outliers"]  # a checkpoint written before the outlier rule: no layer is an outlier
    new.load_state_dict(old)
    assert new.outliers.tolist() == [False] * 6
