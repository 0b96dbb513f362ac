"""Every policy under every option and combination of options, against its formula written out here in float64.

The LLR policy is driven through a whole short run (values handed to ``update`` at each update step, as the
optimizer does) and compared, step by step, with a numpy simulation of Algorithm 1 built from the papers and
docs/usage.md: Eq. 3 and TempBalance's maps with ``s_min``/``s``, the robust outlier rule, pins, the gradient
phase (t/T <= p), the freeze (t >= active_until T), the linear ramp, AlphaDecay's weight decays, biases following
their matrix. RLRS (three curves, one-sided start/end tables), Blockwise and Uniform against their closed forms;
the shuffled control's draw at every update; layers added with ``add_param_group`` under every preset.
"""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from llr_kernels import LLRAdamW
from llr_kernels.layers import Layer
from llr_kernels.policies import PRESETS, BlockwiseConfig, LLRConfig, RLRSConfig, UniformConfig
from tiny_models import TinyLlama, batches, lm_loss

# (name, kind, block by the Blockwise / RLRS tables: Wang et al.'s and Ludziejewski et al.'s component names)
LAYER_TABLE = [
    ("model.embed_tokens.weight", "embedding", "embedding"),
    ("model.layers.0.self_attn.q_proj.weight", "attn_q", "qk"),
    ("model.layers.0.self_attn.k_proj.weight", "attn_k", "qk"),
    ("model.layers.0.self_attn.v_proj.weight", "attn_v", "vo"),
    ("model.layers.0.self_attn.o_proj.weight", "attn_o", "vo"),
    ("model.layers.0.mlp.up_proj.weight", "ffn_up", "ffn"),
    ("model.layers.0.mlp.up_proj.bias", "vector", "ffn"),  # a bias takes its module's block
    ("model.layers.0.mlp.down_proj.weight", "ffn_down", "ffn"),
    ("model.layers.0.input_layernorm.weight", "vector", "norm"),
    ("transformer.h.0.attn.c_attn.weight", "attn_qkv", "qkv"),
    ("model.layers.1.block_sparse_moe.gate.weight", "linear", "router"),
    ("model.layers.1.block_sparse_moe.experts.0.w1.weight", "ffn_gate", "experts"),
    ("model.layers.1.proj.weight", "linear", "other"),
    ("lm_head.weight", "lm_head", "head"),
    ("orphan.bias", "vector", "bias"),  # no matching weight: its own block
]
NAMES = [n for n, _, _ in LAYER_TABLE]
KINDS = [k for _, k, _ in LAYER_TABLE]
BLOCK = [b for _, _, b in LAYER_TABLE]
N = len(LAYER_TABLE)
IS_MATRIX = np.array([k != "vector" for k in KINDS])
BIAS_OF = {6: 5}  # bias index -> its matrix's index ("x.bias" follows "x.weight")
T = 24


def layers() -> list[Layer]:
    return [Layer(n, k, torch.zeros(2, 2) if k != "vector" else torch.zeros(2)) for n, k, _ in LAYER_TABLE]


# ------------------------------------------------------------------ the formulas, float64, from the papers / docs
def map_np(x: np.ndarray, lo: float, hi: float, kind: str, pinned: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """TempBalance's assignment functions relative to the base LR (LLR Eq. 3 is "linear" into [1, s]); unusable
    values keep ``previous``, pinned layers get hi, a degenerate set (fewer than 2, or all equal) gets 1."""
    out = previous.copy()
    usable = np.isfinite(x) & ~pinned
    if kind == "log2":
        usable &= np.where(np.isfinite(x), x, 0) > 1
    if kind == "sqrt":
        usable &= np.where(np.isfinite(x), x, -1) >= 0
    u = x[usable]
    if u.size >= 2 and u.max() > u.min():
        m = u.size
        if kind == "linear":
            out[usable] = lo + (u - u.min()) / (u.max() - u.min()) * (hi - lo)
        elif kind == "step":
            rank = np.empty(m)
            rank[np.argsort(u)] = np.arange(m)
            out[usable] = lo + (hi - lo) * rank / m
        elif kind in ("sqrt", "log2"):
            f = np.sqrt(u) if kind == "sqrt" else np.log2(u)
            out[usable] = m * f / f.sum()
        else:
            z = (u - u.mean()) / (u.std() + 1e-8)
            out[usable] = 2.0 / (1.0 + np.exp(-4.0 * z))
    elif u.size:
        out[usable] = 1.0
    out[pinned] = hi
    return out


def outliers_np(a: np.ndarray, usable: np.ndarray, z: float) -> np.ndarray | None:
    """The robust rule (policies.llr.robust_outliers' docstring): on x = ln(alpha - 1) of at least 5 usable alphas,
    |x - median| > z max(1.4826 MAD, 0.2). None when the two conventions of an even-count median disagree (the
    caller draws other values: the test keeps to cases the published rule decides)."""
    ok = usable & np.isfinite(a) & (np.where(np.isfinite(a), a, 0) > 1)
    masks = []
    for median in (np.median, lambda v: np.sort(v)[(v.size - 1) // 2]):
        out = np.zeros(N, dtype=bool)
        if ok.sum() >= 5:
            x = np.log(a[ok] - 1)
            med = median(x)
            scale = max(1.4826 * median(np.abs(x - med)), 0.2)
            out[ok] = np.abs(x - med) > z * scale
        masks.append(out)
    return masks[0] if np.array_equal(*masks) else None


class Algorithm1:
    """Algorithm 1 of the LLR paper with the library's documented options, in float64 numpy."""

    def __init__(self, c: LLRConfig) -> None:
        self.c = c
        kinds = np.array(KINDS)
        self.pinned = ((kinds == "embedding") & c.pin_embedding) | ((kinds == "lm_head") & c.pin_lm_head)
        self.target = np.where(self.pinned, float(c.s), 1.0)
        self.start = self.target.copy()
        self.wd_target, self.wd_start = np.ones(N), np.ones(N)
        self.last: int | None = None

    def frozen(self, t: int) -> bool:
        c = self.c
        return c.total_steps is not None and c.active_until < 1 and t >= c.active_until * c.total_steps

    def is_update(self, t: int) -> bool:
        return t % self.c.interval == 0 and not self.frozen(t)

    def source(self, t: int) -> str:
        c = self.c
        if c.metric == "grad_norm":
            return "grad"
        return "grad" if c.total_steps is not None and c.grad_phase > 0 and t / c.total_steps <= c.grad_phase else "weight"

    def _ramp(self, a: np.ndarray, b: np.ndarray, t: int) -> np.ndarray:
        r = self.c.ramp_steps
        if r == 0 or self.last is None:
            return b.copy()
        return a + (b - a) * min(1.0, (t - self.last + 1) / r)

    def mult(self, t: int) -> np.ndarray:
        return self._ramp(self.start, self.target, t)

    def wd(self, t: int) -> np.ndarray:
        return self._ramp(self.wd_start, self.wd_target, t)

    def unshuffled_target(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        c = self.c
        out = np.zeros(N, dtype=bool)
        if c.outlier_z is not None and c.metric == "alpha":
            out = outliers_np(values, ~self.pinned, c.outlier_z)
            if out is None:
                return None
        mapped = np.where(out, np.nan, values)
        return map_np(mapped, c.s_min, c.s, c.map, self.pinned, self.target), mapped

    def update(self, t: int, values: np.ndarray, source: str, target: np.ndarray | None = None) -> bool:
        c = self.c
        got = self.unshuffled_target(values)
        if got is None:
            return False
        new, mapped = got
        if target is not None:  # the shuffled control: the caller checked it is a permutation of ``new``
            new = target
        if c.bias_follows_matrix:
            for i, j in BIAS_OF.items():
                new[i] = new[j]
        self.start, self.wd_start = self.mult(t), self.wd(t)
        self.target = new
        if c.wd_range is not None and source == "weight":
            hidden = np.array([k not in ("embedding", "lm_head") for k in KINDS]) & ~self.pinned
            wd = map_np(np.where(hidden, mapped, np.nan), c.wd_range[0], c.wd_range[1], "linear",
                        np.zeros(N, dtype=bool), self.wd_target)
            if c.bias_follows_matrix:
                for i, j in BIAS_OF.items():
                    wd[i] = wd[j]
            self.wd_target = wd
        self.last = t
        return True


def draw_values(rng: np.random.Generator, metric: str) -> np.ndarray:
    """One update's measurements: alphas (or another metric) for the matrices, NaN for vectors; sometimes a layer
    not measurable (NaN) and, for alphas, a planted outlier."""
    if metric == "alpha":
        v = rng.uniform(1.6, 4.5, N)
        if rng.random() < 0.4:
            v[rng.choice(np.flatnonzero(IS_MATRIX))] = 40.0
    else:
        v = rng.uniform(0.5, 20.0, N)
    if rng.random() < 0.4:
        v[rng.choice(np.flatnonzero(IS_MATRIX))] = np.nan
    v[~IS_MATRIX] = np.nan
    return v


def run_against_formula(c: LLRConfig, rng: np.random.Generator, what: str) -> None:
    """Drive the policy through T steps as the optimizer does and compare every step with Algorithm1."""
    pol, ref = c.build(layers()), Algorithm1(c)
    assert pol.pinned.numpy().tolist() == ref.pinned.tolist(), what
    prev = None
    for t in range(T):
        assert pol.is_update_step(t) == ref.is_update(t), (what, t)
        assert pol.source(t) == ref.source(t), (what, t)
        if ref.is_update(t):
            for _ in range(50):  # values the outlier rule decides unambiguously
                values = draw_values(rng, c.metric)
                if ref.unshuffled_target(values) is not None:
                    break
            src = ref.source(t)
            outl = pol.update(t, torch.from_numpy(values), src).numpy()
            want_out = (outliers_np(values, ~ref.pinned, c.outlier_z) if c.outlier_z is not None and c.metric == "alpha"
                        else np.zeros(N, dtype=bool))
            np.testing.assert_array_equal(outl, want_out, err_msg=f"{what} t={t}")
            assert ref.update(t, values, src), (what, t)
        mult, wd = pol.multipliers(t).numpy(), pol.wd_multipliers(t).numpy()
        np.testing.assert_allclose(mult, ref.mult(t), rtol=1e-12, atol=1e-14, err_msg=f"{what} t={t} LR multipliers")
        np.testing.assert_allclose(wd, ref.wd(t), rtol=1e-12, atol=1e-14, err_msg=f"{what} t={t} wd multipliers")
        if prev is not None and not ref.is_update(t) and not (np.array_equal(mult, prev[0]) and np.array_equal(wd, prev[1])):
            assert pol.ramping(t), f"{what} t={t}: multipliers changed without a measurement but ramping() is False"
        prev = (mult, wd)


# ------------------------------------------------------------------------------------------------- LLR tables
MAP_OPTIONS = list(itertools.product(
    [(1.0, 3.0), (0.5, 2.5)],  # (s_min, s)
    [0, 3],  # ramp_steps
    [None, (0.67, 5.0)],  # wd_range
    [(True, False), (False, False), (True, True)],  # (pin_embedding, pin_lm_head)
    [False, True],  # bias_follows_matrix
    [None, 5.0, 1.5],  # outlier_z
))


@pytest.mark.parametrize("kind", ["linear", "step", "sqrt", "log2", "sigmoid"])
def test_llr_map_options_and_their_combinations_follow_the_formulas(kind, seed):
    rng = np.random.default_rng(seed)
    for (s_min, s), ramp, wd, (pe, ph), follow, z in MAP_OPTIONS:
        c = LLRConfig(s=s, s_min=s_min, map=kind, interval=3, total_steps=T, grad_phase=0.1, ramp_steps=ramp,
                      wd_range=wd, pin_embedding=pe, pin_lm_head=ph, bias_follows_matrix=follow, outlier_z=z)
        run_against_formula(c, rng, f"seed {seed} {c}")


SCHEDULES = [
    dict(interval=i, total_steps=tot, grad_phase=p, active_until=au, metric=m, ramp_steps=r)
    for i, tot, p, au, m, r in itertools.product([1, 3, 5], [None, T], [0.0, 0.1, 0.4], [1.0, 0.5, 0.3],
                                               ["alpha", "stable_rank", "grad_norm"], [0, 2])
    if not (au < 1.0 and tot is None)
]


def test_llr_schedule_options_follow_algorithm_1(seed):
    """interval, grad phase (t/T <= p), freeze (t >= active_until T), metric (outlier rule for alphas only,
    grad_norm always from gradients), ramp, each with the others, AlphaDecay's decays from weight phases only."""
    rng = np.random.default_rng(seed)
    for kw in SCHEDULES:
        c = LLRConfig(s=3.0, wd_range=(0.5, 2.0), **kw)
        run_against_formula(c, rng, f"seed {seed} {kw}")


@pytest.mark.parametrize("preset", ["llr", "alphadecay", "llr+alphadecay"])
def test_llr_family_presets_follow_the_formulas(preset, seed):
    base = LLRConfig(s=2.5, interval=2, total_steps=T, grad_phase=0.2, ramp_steps=2)
    c = PRESETS[preset](base).validate()
    want = {"llr": dict(s=2.5, grad_phase=0.2, wd_range=None), "alphadecay": dict(s=1.0, grad_phase=0.0, wd_range=(0.67, 5.0)),
            "llr+alphadecay": dict(s=2.5, grad_phase=0.2, wd_range=(0.67, 5.0))}[preset]
    assert {k: getattr(c, k) for k in want} == want and (c.interval, c.ramp_steps) == (2, 2)
    run_against_formula(c, np.random.default_rng(seed), f"seed {seed} {preset}")


def test_shuffled_control_draws_a_new_permutation_at_every_update(seed):
    """"llr-shuffled": at every update the usable layers' multipliers are those of Eq. 3, dealt out by a fresh
    permutation; unusable and pinned layers keep theirs; the same seed replays the same draws, another seed not."""
    cfg = dict(s=3.0, interval=1, total_steps=T, grad_phase=0.0, outlier_z=None, bias_follows_matrix=True, ramp_steps=2)
    runs = {}
    for shuffle_seed in (seed % 1000, seed % 1000, seed % 1000 + 1):
        c = PRESETS["llr-shuffled"](LLRConfig(seed=shuffle_seed, **cfg)).validate()
        pol, ref = c.build(layers()), Algorithm1(c)
        draws, perms = np.random.default_rng(seed), []
        for t in range(8):
            values = np.where(IS_MATRIX, draws.uniform(1.6, 4.5, N), np.nan)  # the same usable layers every update
            if t == 5:
                values[1] = np.nan  # ... but one: it keeps its multiplier and leaves the deal
            pol.update(t, torch.from_numpy(values), "weight")
            want, _ = ref.unshuffled_target(values)
            got = pol.target.numpy().copy()
            usable = np.isfinite(values) & ~ref.pinned
            np.testing.assert_allclose(np.sort(got[usable]), np.sort(want[usable]), rtol=1e-12, err_msg=f"t={t}")
            fixed = ~usable & ~np.isin(np.arange(N), list(BIAS_OF))
            np.testing.assert_array_equal(got[fixed], want[fixed], err_msg=f"t={t}")
            for i, j in BIAS_OF.items():
                assert got[i] == got[j], t  # a bias follows its matrix's shuffled multiplier
            idx = np.flatnonzero(usable)  # which layer's Eq. 3 multiplier each usable layer was dealt
            perms.append(tuple(int(idx[np.argmin(np.abs(want[idx] - got[i]))]) for i in idx))
            ref.update(t, values, "weight", target=got.copy())
            np.testing.assert_allclose(pol.multipliers(t).numpy(), ref.mult(t), rtol=1e-12, err_msg=f"t={t}")
        runs.setdefault(c.seed, []).append(perms)
        # >= 10 usable layers: two updates dealing the same way has probability 1/10! each
        assert len(set(perms)) == len(perms), f"seed {seed}: a deal repeated across updates: {perms}"
    same = runs[seed % 1000]
    assert same[0] == same[1], "the same shuffle seed must replay the same draws"
    assert runs[seed % 1000 + 1][0] != same[0], "another shuffle seed must draw other permutations"


# -------------------------------------------------------------------------------------- schedules and tables
def rlrs_np(a: float, z: float, u: float, curve: str, f: float) -> float:
    """RLRS: the component's relative LR at training fraction u. "paper": its own cosine from a to f z divided by
    the global cosine from 1 to f (Ludziejewski et al. Sec. 2); "linear"/"cosine": the relative LR interpolated."""
    w = 0.5 * (1 + math.cos(math.pi * u))
    if curve == "linear":
        return a + (z - a) * u
    if curve == "cosine":
        return z + (a - z) * w
    return (f * z + (a - f * z) * w) / (f + (1 - f) * w)


RLRS_TABLES = [
    ({"embedding": 5.0, "head": 0.6, "ffn": 0.3, "experts": 0.3, "router": 0.6},
     {"embedding": 0.6, "head": 0.4, "ffn": 1.125, "experts": 1.125, "router": 1.0}),
    ({"embedding": 5.0, "qk": 2.0}, {}),  # one-sided: start only (end takes start's value)
    ({}, {"ffn": 1.5, "vo": 0.5}),  # one-sided: end only
    ({"embedding": 4.0, "norm": 2.0}, {"ffn": 0.25, "norm": 0.5, "bias": 3.0}),  # each block in one table or both
]


@pytest.mark.parametrize("curve", ["paper", "linear", "cosine"])
@pytest.mark.parametrize("tables", range(len(RLRS_TABLES)))
@pytest.mark.parametrize("final", [0.1, 0.5])
def test_rlrs_curves_and_one_sided_tables(curve, tables, final, seed):
    start, end = RLRS_TABLES[tables]
    total = 5 + seed % 20
    pol = RLRSConfig(dict(start), dict(end), total_steps=total, curve=curve, final_lr_ratio=final).validate().build(layers())
    prev = None
    for t in range(total + 3):
        u = min(1.0, t / total)
        want = [rlrs_np(start.get(b, end.get(b, 1.0)), end.get(b, start.get(b, 1.0)), u, curve, final) for b in BLOCK]
        got = pol.multipliers(t).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"{curve} {start} {end} t={t} T={total}")
        np.testing.assert_array_equal(pol.wd_multipliers(t).numpy(), np.ones(N))
        if prev is not None and not np.allclose(got, prev, rtol=1e-12, atol=0):  # (a == z gives a up to rounding)
            assert pol.ramping(t), f"t={t}: the multipliers moved but ramping() is False (the device keeps stale ones)"
        prev = got
    assert not pol.measures and not pol.is_update_step(0)


@pytest.mark.parametrize("preset,ratios", [
    ("sharpness", {"norm": 1, "vo": 4, "qkv": 4, "ffn": 6, "qk": 8, "embedding": 10, "head": 1}),
    ("sharpness-llr-code", {"norm": 1, "vo": 4, "qkv": 4, "ffn": 6, "qk": 8, "embedding": 10, "head": 10}),
])
def test_blockwise_presets_and_tables(preset, ratios, seed):
    """Wang et al.'s ratios per block (a fused QKV takes VO's, a bias its module's), other blocks 1; a custom
    table with a default for the blocks it leaves out; constant over training."""
    pol = PRESETS[preset](LLRConfig()).validate().build(layers())
    want = [float(ratios.get(b, 1.0)) for b in BLOCK]
    for t in (0, 1, 7, 10**6):
        assert pol.multipliers(t).tolist() == want and not pol.ramping(t), (preset, t)
    rng = np.random.default_rng(seed)
    table = {b: float(rng.uniform(0.2, 5)) for b in rng.choice(["qk", "vo", "ffn", "head", "router", "experts", "bias"], 4, replace=False)}
    default = float(rng.uniform(0.2, 5))
    pol = BlockwiseConfig(table, default=default).validate().build(layers())
    assert pol.multipliers(3).tolist() == [table.get(b, default) for b in BLOCK], (table, default)


def test_uniform_scale(seed):
    scale = float(np.random.default_rng(seed).uniform(0.1, 5))
    pol = UniformConfig(scale).validate().build(layers())
    assert pol.multipliers(0).tolist() == [scale] * N and pol.multipliers(99).tolist() == [scale] * N
    assert PRESETS["uniform-smax"](LLRConfig(s=scale)).validate().build(layers()).multipliers(5).tolist() == [scale] * N


# ------------------------------------------------------------------- layers added later, under every preset
LR = 1e-3


def block_of_name(name: str) -> str:
    for key, block in (("embed", "embedding"), ("lm_head", "head"), ("q_proj", "qk"), ("k_proj", "qk"),
                       ("v_proj", "vo"), ("o_proj", "vo"), ("mlp", "ffn")):
        if key in name:
            return block
    return "norm"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_layers_added_later_follow_their_policy(preset, seed):
    """Built on the embedding and block 0, block 1 / norm / head added at step 2: before the next update an added
    layer has its policy's initial multiplier (1; s if pinned; its block's ratio; its block's RLRS curve), after it
    the map of every layer's measured value (the added ones included), and the new layers are stepped with them."""
    torch.manual_seed(seed)
    model = TinyLlama()
    names = [n for n, _ in model.named_parameters()]
    first = [(n, p) for n, p in model.named_parameters() if "embed" in n or ".layers.0." in n]
    rest = [p for n, p in model.named_parameters() if not ("embed" in n or ".layers.0." in n)]
    s, total = 2.5, 10
    opt = LLRAdamW([{"params": [p for _, p in first]}], model=model, lr=LR, weight_decay=0.1, s=s, interval=4,
                   total_steps=total, grad_phase=0.15, min_eigs=16, outlier_z=None, backend="torch", policy=preset)
    cfg = PRESETS[preset](LLRConfig(s=s, interval=4, total_steps=total, grad_phase=0.15, outlier_z=None)).validate()
    data = batches(8, seed=seed)
    for t, idx in enumerate(data):
        if t == 2:
            opt.add_param_group({"params": rest, "lr": 2 * LR})
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        st = {d["name"]: d for d in opt.layer_stats()}
        for n, d in st.items():
            group_lr = LR if n in dict(first) else 2 * LR
            if isinstance(cfg, LLRConfig):
                if t <= 4 and n not in dict(first):  # added after step 0's update, before step 4's: not measured yet
                    want = s if (d["kind"] == "embedding" and cfg.pin_embedding) else 1.0
                    assert d["status"] == "not_measured" and math.isnan(d["alpha"]), (preset, t, n)
                    assert d["multiplier"] == want and d["wd_multiplier"] == 1.0, (preset, t, n, d)
            elif isinstance(cfg, RLRSConfig):
                b = block_of_name(n)
                a, z = cfg.start.get(b, cfg.end.get(b, 1.0)), cfg.end.get(b, cfg.start.get(b, 1.0))
                assert d["multiplier"] == pytest.approx(rlrs_np(a, z, min(1.0, t / total), cfg.curve, cfg.final_lr_ratio),
                                                        rel=1e-12), (preset, t, n)
            elif isinstance(cfg, BlockwiseConfig):
                assert d["multiplier"] == cfg.ratios.get(block_of_name(n), cfg.default), (preset, t, n)
            else:
                assert d["multiplier"] == cfg.scale, (preset, t, n)
            assert d["lr"] == pytest.approx(group_lr * d["multiplier"], rel=1e-15), (preset, t, n)
        if isinstance(cfg, LLRConfig) and t == 5:  # step 4's update (after the addition) measured every matrix
            mats = [n for n, d in st.items() if d["kind"] not in ("vector",) and d["kind"] != "embedding"]
            alphas = np.array([st[n]["alpha"] for n in mats])
            assert np.isfinite(alphas).all(), (preset, st)
            want = 1 + (alphas - alphas.min()) / (alphas.max() - alphas.min()) * (cfg.s - 1)
            got = np.array([st[n]["multiplier"] for n in mats])
            if cfg.shuffle:  # the control deals the same multipliers out at random
                got, want = np.sort(got), np.sort(want)
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=preset)
            if cfg.wd_range is not None and opt.llr.last_source == "weight":
                hidden = [n for n in mats if st[n]["kind"] != "lm_head"]
                ah = np.array([st[n]["alpha"] for n in hidden])
                lo, hi = cfg.wd_range
                np.testing.assert_allclose([st[n]["wd_multiplier"] for n in hidden],
                                           lo + (ah - ah.min()) / (ah.max() - ah.min()) * (hi - lo), rtol=1e-12)
        model.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()
        if t == 2:
            for n, p in model.named_parameters():
                assert not torch.equal(p, before[n]), f"{preset}: {n} was not stepped after add_param_group"
    assert [l.name for l in opt.layers] == [n for n, _ in first] + [n for n in names if n not in dict(first)]
    assert copy.deepcopy(opt.state_dict())["llr"]["policy"]["target"].numel() == len(names)
