"""MoE expert stacks: a 3-D parameter of a module that is no convolution, (experts, out, in), is a stack of
matrices. Each slice is measured as its own matrix and the layer's alpha is the mean of the slices' Eq. 2 alphas
(float64 numpy reference); a convolution kernel stays one (out, in x k) matrix. Viewing a stack as (experts, -1),
as before, left every MoE FFN with `experts` eigenvalues: too few for a tail, so LLR never touched them."""
from __future__ import annotations

import math

import pytest
import torch
from reference import alpha_np, power_law_matrix
from torch import nn

from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.layers import Layer, kind_from_name
from llr_kernels.optim.budget import update_bytes
from llr_kernels.optim.spectral_split import measure_cost

E, D, F = 4, 64, 96


class MoE(nn.Module):
    """Two expert stacks of different spectra, a dense Linear and a Conv1d (a 3-D kernel that is no stack)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.experts_up = nn.Parameter(torch.stack(
            [power_law_matrix(F, D, 2.0 + 0.7 * e + float(torch.rand((), generator=g)), seed + e) for e in range(E)]))
        self.experts_down = nn.Parameter(torch.randn(E, D, F, generator=g) / math.sqrt(F))
        self.dense = nn.Linear(D, D)
        self.conv = nn.Conv1d(D, 70, 3)


def layer_alphas(opt) -> dict[str, float]:
    return {r["name"]: r["alpha"] for r in opt.layer_stats()}


@pytest.mark.parametrize("seed", [0, 1])
def test_stack_alpha_is_the_mean_of_its_slices(seed):
    model = MoE(seed)
    opt = LLRAdamW(model, lr=1e-3, s=3.0, hill_method="exact")
    opt.update_metrics(1000)  # past the gradient phase: measured on the weights
    got = layer_alphas(opt)
    stats = {r["name"]: r for r in opt.layer_stats()}
    for name in ("experts_up", "experts_down"):
        w = getattr(model, name).detach()
        slices = [alpha_np(w[e]) for e in range(E)]
        assert len({round(a, 6) for a in slices}) == E or name == "experts_down"
        assert got[name] == pytest.approx(sum(slices) / E, rel=1e-6), name
        assert stats[name]["kind"] == "linear" and stats[name]["status"] == "ok"
    assert math.isnan(alpha_np(model.experts_up.detach())), "viewed as (experts, -1) it has no tail: the old bug"
    # the conv kernel stays one (out, in x k) matrix
    assert stats["conv.weight"]["kind"] == "conv"
    assert got["conv.weight"] == pytest.approx(alpha_np(model.conv.weight.detach()), rel=1e-6)
    assert got["dense.weight"] == pytest.approx(alpha_np(model.dense.weight.detach()), rel=1e-6)


def test_unusable_slices_are_left_out_of_the_mean():
    """A zero expert (never routed to) has no alpha: the stack's alpha is the mean over the other slices; a stack
    whose every slice is zero has none and reports the slices' status."""
    model = MoE(3)
    with torch.no_grad():
        model.experts_up[2].zero_()
        model.experts_down.zero_()
    opt = LLRAdamW(model, lr=1e-3, s=3.0, hill_method="exact")
    opt.update_metrics(1000)
    stats = {r["name"]: r for r in opt.layer_stats()}
    w = model.experts_up.detach()
    want = [alpha_np(w[e]) for e in (0, 1, 3)]
    assert stats["experts_up"]["alpha"] == pytest.approx(sum(want) / 3, rel=1e-6)
    assert stats["experts_up"]["status"] == "ok"
    assert math.isnan(stats["experts_down"]["alpha"]) and stats["experts_down"]["status"] == "zero_matrix"


def test_stacks_take_part_in_the_lr_map():
    """Eq. 3 over the layers: the stacks' multipliers follow from their mean alphas like any matrix's."""
    model = MoE(5)
    opt = LLRAdamW(model, lr=1e-3, s=3.0, hill_method="exact")
    opt.update_metrics(1000)
    stats = [r for r in opt.layer_stats() if r["kind"] in ("linear", "conv")]
    alphas = [r["alpha"] for r in stats]
    lo, hi = min(alphas), max(alphas)
    for r in stats:
        assert r["multiplier"] == pytest.approx(1.0 + (r["alpha"] - lo) / (hi - lo) * 2.0, rel=1e-9), r["name"]


def test_classification_of_3d_parameters():
    p3 = nn.Parameter(torch.randn(E, 8, 6))
    assert kind_from_name("experts", p3, nn.Module()) == "linear"  # a module's own 3-D parameter: a stack
    assert kind_from_name("conv.weight", p3, nn.Conv1d(6, 4, 8)) == "conv"
    assert kind_from_name("deconv.weight", p3, nn.ConvTranspose1d(4, 8, 6)) == "conv"
    assert kind_from_name("w", p3, None) == "conv"  # names alone cannot tell a stack from a Conv1d kernel
    assert kind_from_name("model.layers.0.mlp.experts.gate_up_proj", p3, nn.Module()) == "ffn_gate_up"
    assert kind_from_name("x", nn.Parameter(torch.randn(2, 3, 4, 5)), nn.Module()) == "conv"
    assert Layer("experts", "ffn_gate_up", p3).stacked and Layer("e", "linear", p3).stacked
    assert not Layer("c", "conv", p3).stacked and not Layer("d", "linear", nn.Parameter(torch.randn(4, 4))).stacked


def test_cost_and_memory_of_a_stack_count_every_slice():
    """The split's cost and the budget's bytes of a stack are its slices' summed (not one (E, out x in) matrix)."""
    assert measure_cost((E, F, D), stacked=True) == pytest.approx(E * (F * D * D + 4 / 3 * D ** 3))
    assert update_bytes((E, F, D), 4, True, stacked=True) == E * update_bytes((F, D), 4, True)
    assert update_bytes((E, F, D), 4, True, stacked=True) > update_bytes((E, F, D), 4, True)


def test_llrmuon_steps_stacks_with_its_adamw_rule():
    """Newton-Schulz here takes 2-D matrices: a stack goes to LLRMuon's AdamW group, with its measured alpha."""
    model = MoE(7)
    opt = LLRMuon(model, lr=0.02, hill_method="exact")
    stats = {r["name"]: r for r in opt.layer_stats()}
    assert stats["experts_up"]["optimizer"] == "adamw" and stats["dense.weight"]["optimizer"] == "muon"
    opt.update_metrics(1000)
    w = model.experts_up.detach()
    got = {r["name"]: r["alpha"] for r in opt.layer_stats()}["experts_up"]
    assert got == pytest.approx(sum(alpha_np(w[e]) for e in range(E)) / E, rel=1e-6)
