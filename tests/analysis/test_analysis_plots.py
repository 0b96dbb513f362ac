"""The plots' data (llr_kernels/analysis/plots.py): the block x kind grid holds each layer's value in its cell,
kinds in reading order, several matrices of one kind per block on rows of their own; the ESD's fitted tail is
a density whose mass over [xmin, inf) is the tail's share of the spectrum."""
from __future__ import annotations

import math

import numpy as np
import pytest

from llr_kernels.analysis.plots import block_grid, tail_density, tail_fit


def test_grid_cells_hold_each_layers_value(seed):
    rng = np.random.default_rng(seed)
    names = [("model.layers.{}.mlp.down_proj.weight", "ffn_down"), ("model.layers.{}.self_attn.q_proj.weight",
             "attn_q")]
    rows = [{"name": n.format(b), "kind": k, "alpha": float(rng.uniform(1.5, 5))} for b in range(3) for n, k in names]
    rows.append({"name": "model.embed_tokens.weight", "kind": "embedding", "alpha": 3.0})
    rows.append({"name": "lm_head.weight", "kind": "lm_head", "alpha": float("nan")})
    grid, labels, cols = block_grid(rows, "alpha")
    assert labels == ["embedding", "attn_q", "ffn_down", "lm_head"] and cols == ["0", "1", "2", "other"]
    for r in rows:
        b = r["name"].split(".")[2] if "layers" in r["name"] else "other"
        got = grid[labels.index(r["kind"]), cols.index(b)]
        assert (math.isnan(got) and math.isnan(r["alpha"])) or got == r["alpha"]
    assert np.isnan(grid[0, :3]).all() and np.isnan(grid[1:3, 3]).all()


def test_two_matrices_of_one_kind_per_block_get_their_own_rows():
    rows = [{"name": f"encoder.layer.{b}.{s}.dense.weight", "kind": "linear", "alpha": 2.0 + b + (s == "output")}
            for b in range(2) for s in ("intermediate", "output")]
    grid, labels, cols = block_grid(rows, "alpha")
    assert labels == ["linear: intermediate.dense.weight", "linear: output.dense.weight"] and cols == ["0", "1"]
    assert grid.tolist() == [[2.0, 3.0], [3.0, 4.0]]


@pytest.mark.parametrize("alpha, m, n", [(2.5, 40, 200), (4.0, 9, 384)])
def test_fitted_tail_density_has_the_tails_mass(alpha, m, n):
    a, xmin, k = tail_fit({"alpha_fit": alpha, "xmin": 0.7, "num_tail": m})
    assert (a, xmin, k) == (alpha, 0.7, m)
    x = np.logspace(np.log10(xmin), np.log10(xmin) + 14, 200001)  # beyond: (1e14)^(1 - alpha) <= 1e-21 of it
    mass = np.trapezoid(tail_density(x, a, xmin, k, n), x)
    assert mass == pytest.approx(m / n, rel=1e-6)
    assert tail_density(0.5 * xmin, a, xmin, k, n) == 0.0


def test_tail_without_a_fit_is_eq2s():
    e = np.sort(np.random.default_rng(0).pareto(2.0, 101) + 1.0)
    a, xmin, k = tail_fit({"alpha_fit": float("nan"), "alpha": 2.2, "eigenvalues": e})
    assert (a, xmin, k) == (2.2, e[101 - 50 - 1], 50)
