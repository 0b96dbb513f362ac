"""What the optimizers tell the user: the warnings (their text fields, which layers they name, once per cause per
optimizer, pointing at the caller) and every field of ``layer_stats()``, on a model whose layers are each built to
have one known status (float64 numpy Eq. 2 / Eq. 3 / AlphaDecay for the numbers, torch.optim.Muon's documented
shape factor for ``update_lr``). Per-rank statuses under a 2-rank split: tests/distributed/test_dist_argument_table.py.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.policies import LLRConfig
from reference import esd_np, hill_llr_np, muon_lr_ratio, power_law_matrix

MIN_EIGS = 16
D = 48
WARNING = re.compile(r"^LLR: (?:(\d+) layer\(s\) \((.*?)\): )?(.*) \(warned once; see layer_stats\(\)\['status'\]\)$")


class Zoo(nn.Module):
    """One layer per status (the expected status is in the name's table below)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(64, D)
        for i, e in enumerate((2.3, 3.1, 4.2, 5.0)):
            self.add_module(f"good{i}", nn.Linear(D, D if i % 2 else 2 * D, bias=(i == 1)))
        for i in range(6):
            self.add_module(f"narrow{i}", nn.Linear(D, 8, bias=False))
        self.zero = nn.Linear(D, D, bias=False)
        self.nan = nn.Linear(D, D, bias=False)
        self.orth = nn.Linear(D, D, bias=False)
        self.rank5 = nn.Linear(D, D, bias=False)
        self.rank20 = nn.Linear(D, 2 * D, bias=False)
        self.norm = nn.RMSNorm(D)
        self.lm_head = nn.Linear(D, 64, bias=False)
        with torch.no_grad():
            self.embed.weight.zero_()  # pinned: its status is reported, never warned about
            for i, e in enumerate((2.3, 3.1, 4.2, 5.0)):
                w = getattr(self, f"good{i}").weight
                w.copy_(power_law_matrix(*w.shape, e, seed=seed + i))
            self.zero.weight.zero_()
            self.nan.weight[3, 5] = float("nan")
            nn.init.orthogonal_(self.orth.weight, generator=g)
            for name, r in (("rank5", 5), ("rank20", 20)):
                w = getattr(self, name).weight
                w.copy_(torch.randn(w.shape[0], r, generator=g) @ torch.randn(r, D, generator=g) / D)
            self.lm_head.weight.copy_(power_law_matrix(64, D, 3.6, seed=seed + 9))
            self.norm.weight.uniform_(0.5, 1.5, generator=g)


STATUS = {
    "embed.weight": "zero_matrix", "zero.weight": "zero_matrix", "nan.weight": "non_finite",
    "orth.weight": "flat_spectrum", "rank5.weight": "rank_deficient", "rank20.weight": "ok_rank_deficient",
    **{f"narrow{i}.weight": "too_few_eigenvalues" for i in range(6)},
    **{f"good{i}.weight": "ok" for i in range(4)}, "lm_head.weight": "ok",
    "good1.bias": "vector", "norm.weight": "vector",
}


def warnings_of(fn) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if str(w.message).startswith("LLR")]


def parse(caught) -> dict[str, tuple[int | None, str, str]]:
    """{explanation's first words: (count, names as shown, explanation)}, checking the common frame of each."""
    out = {}
    for w in caught:
        m = WARNING.match(str(w.message))
        assert m and w.category is RuntimeWarning, str(w.message)
        assert w.filename == __file__, f"the warning points at {w.filename}, not the caller"
        out[m.group(3)] = (None if m.group(1) is None else int(m.group(1)), m.group(2), m.group(3))
    return out


def expected_alpha(w: torch.Tensor) -> float:
    return hill_llr_np(esd_np(w), min_eigs=MIN_EIGS)


def test_warnings_name_each_cause_and_its_layers_once(seed):
    model = Zoo(seed)
    opt = LLRAdamW(model, lr=1e-3, interval=2, grad_phase=0.0, min_eigs=MIN_EIGS, outlier_z=None, backend="torch")
    got = parse(warnings_of(lambda: opt.update_alphas(0)))
    by_status: dict[str, list[str]] = {}
    for name, st in STATUS.items():
        if st not in ("ok", "vector") and name != "embed.weight":  # the pinned embedding is never named
            by_status.setdefault(st, []).append(name)
    order = [l.name for l in opt.layers]
    assert len(got) == len(by_status), sorted(got)
    for st, names in by_status.items():
        names = sorted(names, key=order.index)
        (count, shown, text), = [v for v in got.values() if _cause(v[2]) == st]
        assert count == len(names), (st, count)
        want = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        assert shown == want, (st, shown)
        if st in ("too_few_eigenvalues", "rank_deficient"):
            assert f"min_eigs={MIN_EIGS}" in text, text
        if st in ("non_finite", "zero_matrix", "rank_deficient", "ok_rank_deficient"):
            assert "weight" in text and "gradient" not in text, text  # the source measured at this update
    assert warnings_of(lambda: opt.update_alphas(2)) == []  # the same causes again: nothing
    fresh = LLRAdamW(Zoo(seed), lr=1e-3, interval=2, grad_phase=0.0, min_eigs=MIN_EIGS, outlier_z=None, backend="torch")
    assert len(warnings_of(lambda: fresh.update_alphas(0))) == len(by_status)  # once per optimizer, not per process


def _cause(text: str) -> str:
    """The status a warning's explanation describes (each explanation names its cause in its own words)."""
    for key, st in (("numerically rank-deficient", "rank_deficient"), ("rank-deficient", "ok_rank_deficient"),
                    ("fewer than min_eigs", "too_few_eigenvalues"), ("inf or NaN", "non_finite"),
                    ("all-zero", "zero_matrix"), ("flat spectrum", "flat_spectrum"),
                    ("no gradient", "no_grad"), ("fewer than two layers", "inactive"), ("far from", "outlier"),
                    ("above the estimator", "out_of_range")):
        if key in text:
            return st
    raise AssertionError(f"unrecognised warning: {text}")


def test_gradient_phase_causes_say_gradient_and_a_new_cause_is_still_warned(seed):
    """At a gradient-phase update a layer without a gradient is "no_grad" (named, once); a cause that first appears
    at a later update is warned then."""
    model = Zoo(seed)
    opt = LLRAdamW(model, lr=1e-3, interval=1, total_steps=10, grad_phase=0.1, min_eigs=MIN_EIGS, outlier_z=None,
                   backend="torch")
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        p.grad = None if n == "good2.weight" else torch.randn(p.shape, generator=g)
    model.good3.weight.grad.zero_()
    got = parse(warnings_of(lambda: opt.update_alphas(0)))
    (count, shown, text), = [v for v in got.values() if _cause(v[2]) == "no_grad"]
    assert (count, shown) == (1, "good2.weight")
    (count, shown, text), = [v for v in got.values() if _cause(v[2]) == "zero_matrix"]
    assert (count, shown) == (1, "good3.weight") and "grad" in text and "weight at" not in text, text  # the source
    assert {_cause(t) for t in got} == {"no_grad", "zero_matrix", "too_few_eigenvalues"}  # random gradients: the rest ok
    assert {d["name"]: d["status"] for d in opt.layer_stats()}["good2.weight"] == "no_grad"
    later = parse(warnings_of(lambda: opt.update_alphas(2)))  # weight phase: the planted weights' causes are new
    assert {_cause(t) for t in later} == {"non_finite", "flat_spectrum", "rank_deficient", "ok_rank_deficient"}  # zero: warned


def test_inactive_warning_when_fewer_than_two_layers_are_usable(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, D, bias=False), nn.Linear(D, 8, bias=False))
    opt = LLRAdamW(model, lr=1e-3, interval=1, grad_phase=0.0, min_eigs=MIN_EIGS, backend="torch")
    got = parse(warnings_of(lambda: opt.update_alphas(0)))
    causes = {_cause(t): v for t, v in got.items()}
    assert set(causes) == {"too_few_eigenvalues", "inactive"}
    assert causes["inactive"][:2] == (None, None) and causes["too_few_eigenvalues"][:2] == (1, "1.weight")
    assert opt.multipliers().tolist() == [1.0, 1.0]  # Eq. 3 has no range: nothing moves


def test_unnamed_parameters_warning_says_how_many_and_what_to_pass(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(10, D), nn.Linear(D, D), nn.Linear(D, 3))
    for cls in (LLRAdamW, LLRMuon):
        with pytest.warns(UserWarning) as rec:
            cls(model.parameters(), lr=1e-3)
        (msg,) = [str(w.message) for w in rec if "without names" in str(w.message)]
        assert msg.startswith(f"{cls.__name__} got 3 weight matrices without names"), msg
        assert f"{cls.__name__}(model, ...)" in msg and rec[0].filename == __file__


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=lambda c: c.__name__)
def test_layer_stats_fields_equal_the_formulas(cls, seed):
    """name, kind, shape, status of every layer; alpha = float64 Eq. 2 (rank-aware where the threshold is zero);
    multiplier = Eq. 3 over the usable layers; lr = its group's lr x multiplier; wd_multiplier = AlphaDecay's map;
    weight_decay = group weight_decay x wd_multiplier; for LLRMuon, which step each layer takes and its update LR."""
    model = Zoo(seed)
    named = dict(model.named_parameters())
    half = [n for n in named if n.startswith(("good", "narrow", "lm_head", "rank"))]
    groups = [{"params": [named[n] for n in named if n not in half], "lr": 2e-3, "weight_decay": 0.05},
              {"params": [named[n] for n in half], "lr": 7e-4, "weight_decay": 0.2}]
    s, lo, hi = 2.5, 0.5, 2.0
    kw = dict(model=model, interval=3, grad_phase=0.0, min_eigs=MIN_EIGS, backend="torch",
              policy=LLRConfig(s=s, interval=3, grad_phase=0.0, outlier_z=None, wd_range=(lo, hi)))
    opt = cls(groups, lr=1e-3, **kw) if cls is LLRAdamW else cls(groups, lr=2e-2, adamw_lr=1e-3, adamw_weight_decay=0.03, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.update_alphas(0)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)  # group lrs are halved: stats follow
    stats = {d["name"]: d for d in opt.layer_stats()}
    assert sorted(stats) == sorted(named) and len(opt.layer_stats()) == len(named), "one entry per parameter"
    alphas = {n: expected_alpha(p) if STATUS[n] in ("ok", "ok_rank_deficient") else float("nan") for n, p in named.items()}
    usable = [n for n in named if STATUS[n] in ("ok", "ok_rank_deficient") and n != "embed.weight"]
    x = np.array([alphas[n] for n in usable])
    mult = {n: 1 + (a - x.min()) / (x.max() - x.min()) * (s - 1) for n, a in zip(usable, x)}
    hidden = [n for n in usable if n != "lm_head.weight"]
    xh = np.array([alphas[n] for n in hidden])
    wd_mult = {n: lo + (alphas[n] - xh.min()) / (xh.max() - xh.min()) * (hi - lo) for n in hidden}
    for n, d in stats.items():
        p, g = named[n], groups[0] if n not in half else groups[1]
        muon = cls is LLRMuon and p.dim() == 2 and n not in ("embed.weight", "lm_head.weight")
        if cls is LLRMuon and not muon:  # LLRMuon's AdamW part of a group takes adamw_lr / adamw_weight_decay
            g = {"lr": 1e-3, "weight_decay": 0.03}
        want_kind = {"embed.weight": "embedding", "lm_head.weight": "lm_head"}.get(n, "vector" if p.dim() == 1 else "linear")
        assert (d["kind"], d["shape"], d["status"]) == (want_kind, tuple(p.shape), STATUS[n]), (n, d)
        if math.isnan(alphas[n]):
            assert math.isnan(d["alpha"]) or n == "embed.weight", (n, d["alpha"])
        else:
            assert d["alpha"] == pytest.approx(alphas[n], rel=1e-5), (seed, n)
        want_mult = s if n == "embed.weight" else mult.get(n, 1.0)
        assert d["multiplier"] == pytest.approx(want_mult, rel=2e-4), (seed, n)
        assert d["wd_multiplier"] == pytest.approx(wd_mult.get(n, 1.0), rel=2e-4), (seed, n)
        assert d["lr"] == pytest.approx(0.5 * g["lr"] * d["multiplier"], rel=1e-15), n  # (the scheduler's 0.5)
        assert d["weight_decay"] == pytest.approx(g["weight_decay"] * d["wd_multiplier"], rel=1e-15), n
        if cls is LLRMuon:
            assert d["optimizer"] == ("muon" if muon else "adamw"), n
            ratio = muon_lr_ratio(None, tuple(p.shape)) if muon else 1.0
            assert d["update_lr"] == pytest.approx(d["lr"] * ratio, rel=1e-15), n
