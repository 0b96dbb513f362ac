"""``format_layer_stats`` (a text table a person reads) and ``layer_records`` (flat rows for a DataFrame): every
matrix layer on its own line with values that read back to the optimizer's, norms folded into one line, a header
saying when and from what the alphas were measured, and the same through a framework's wrapper."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import needs
from tiny_models import TinyLlama

from llr_kernels import LLRAdamW, LLRMuon, format_layer_stats, layer_records


def rows_of(table: str) -> dict[str, list[str]]:
    """name -> the other cells of each table row (cells are separated by two or more spaces)."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    out = {}
    for line in lines[start:]:
        if line.startswith("(+"):
            continue
        cells = [c for c in line.split("  ") if c.strip()]
        out[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return out


def step(model, opt, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 96, (4, 16), generator=g)
    model(idx).logsumexp(-1).mean().backward()
    opt.step()
    opt.zero_grad()


def test_table_before_any_measurement_reads_back_the_configured_values():
    lr, wd, s = 2e-3, 0.05, 3.0
    model = TinyLlama()
    opt = LLRAdamW(model, lr=lr, weight_decay=wd, s=s, backend="torch")
    text = format_layer_stats(opt)
    assert text.splitlines()[0] == "LLRAdamW at step 0, policy 'llr': alphas not measured yet"
    rows = rows_of(text)
    matrices = [n for n, p in model.named_parameters() if p.dim() == 2]
    vectors = [n for n, p in model.named_parameters() if p.dim() < 2]
    assert list(rows) == matrices  # one line per matrix, in model order; norms are not listed ...
    assert text.splitlines()[-1] == f"(+ {len(vectors)} norm/bias vectors at multiplier 1; vectors=True lists them)"
    for name, cells in rows.items():
        kind, shape, alpha, mult, lr_cell, wd_cell, status = cells
        p = dict(model.named_parameters())[name]
        assert shape == "x".join(map(str, p.shape)) and alpha == "-" and status == "not_measured"
        m = s if kind == "embedding" else 1.0  # the embedding is pinned at s from the start (Eq. 3's top)
        assert float(mult) == m and float(lr_cell) == pytest.approx(lr * m, rel=1e-3)
        assert float(wd_cell) == pytest.approx(wd, rel=1e-3)
    assert rows["model.embed_tokens.weight"][0] == "embedding" and rows["lm_head.weight"][0] == "lm_head"
    full = rows_of(format_layer_stats(opt, vectors=True))
    assert len(full) == len(matrices) + len(vectors) and full["model.norm.weight"][0] == "vector"  # ... unless asked


@pytest.mark.parametrize("grad_phase,source", [(0.5, "gradients"), (0.0, "weights")])
def test_header_and_values_after_a_measurement(grad_phase, source, seed):
    model = TinyLlama()
    opt = LLRAdamW(model, lr=1e-3, s=3.0, interval=2, total_steps=4, grad_phase=grad_phase, min_eigs=8, backend="torch")
    step(model, opt, seed)
    text = format_layer_stats(opt)
    assert text.splitlines()[0] == f"LLRAdamW at step 1, policy 'llr': alphas measured before step 0 from the {source}"
    rows = rows_of(text)
    stats = {r["name"]: r for r in opt.layer_stats()}
    for name, cells in rows.items():
        st = stats[name]
        assert float(cells[2]) == pytest.approx(st["alpha"], abs=5e-4)  # 3 decimals
        assert float(cells[3]) == pytest.approx(st["multiplier"], abs=5e-4)
        assert float(cells[4]) == pytest.approx(1e-3 * st["multiplier"], rel=1e-3)  # the group LR x the multiplier
        assert cells[-1] == st["status"]
    mults = [float(c[3]) for n, c in rows.items() if c[0] not in ("embedding", "lm_head")]
    assert min(mults) >= 1.0 and max(mults) <= 3.0 and len(set(mults)) > 2  # Eq. 3 spread them over [1, s]


def test_through_a_wrapper_and_from_logged_rows(seed):
    class Wrapper:  # accelerate's AcceleratedOptimizer and Trainer.optimizer hold the optimizer as .optimizer
        def __init__(self, inner):
            self.optimizer = inner

    model = TinyLlama()
    opt = LLRAdamW(model, lr=1e-3, interval=1, min_eigs=8, backend="torch")
    step(model, opt, seed)
    assert format_layer_stats(Wrapper(opt)) == format_layer_stats(opt)
    logged = opt.layer_stats()  # rows kept in a training log: the table without the optimizer's header
    assert format_layer_stats(logged) == "\n".join(format_layer_stats(opt).splitlines()[1:])


def test_llr_muon_table_says_which_step_each_layer_takes():
    model = TinyLlama()
    rows = rows_of(format_layer_stats(LLRMuon(model, backend="torch")))
    kinds_steps = {(c[0], c[1]) for c in rows.values()}
    assert ("embedding", "adamw") in kinds_steps and ("lm_head", "adamw") in kinds_steps
    assert ("attn_q", "muon") in kinds_steps and ("ffn_down", "muon") in kinds_steps


def test_records_are_flat_rows(seed):
    model = TinyLlama()
    opt = LLRMuon(model, lr=1e-2, interval=1, min_eigs=8, backend="torch")
    before = layer_records(opt)
    assert all(math.isnan(r["alpha"]) for r in before)
    step(model, opt, seed)
    recs = layer_records(opt)
    params = dict(model.named_parameters())
    assert sorted(r["name"] for r in recs) == sorted(params)  # LLRMuon lists its Muon groups first
    for r in recs:
        assert set(r) >= {"name", "kind", "shape", "alpha", "multiplier", "lr", "wd_multiplier", "weight_decay",
                          "status", "optimizer", "update_lr"}
        assert all(isinstance(v, (str, float)) for v in r.values()), r
        assert r["shape"] == "x".join(map(str, params[r["name"]].shape))
    assert sorted(r["name"] for r in layer_records(opt, vectors=False)) == sorted(n for n, p in params.items() if p.dim() == 2)


@needs(None if importlib.util.find_spec("pandas") else "pandas not installed", "pandas")
def test_records_make_a_dataframe(seed):
    import pandas as pd

    model = TinyLlama()
    opt = LLRAdamW(model, lr=1e-3, interval=1, min_eigs=8, backend="torch")
    step(model, opt, seed)
    df = pd.DataFrame(layer_records(opt))
    assert len(df) == len(list(model.parameters()))
    assert df["alpha"].dtype == "float64" and df["multiplier"].dtype == "float64"
    emb = df.set_index("name").loc["model.embed_tokens.weight"]
    assert emb["kind"] == "embedding" and emb["multiplier"] == 3.0 and emb["shape"] == "96x64"


def test_readme_example_has_the_printed_layout():
    """The README's example output has the header and rule lines format_layer_stats prints for that model."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("```text\nLLRAdamW at step"):].split("```")[1].splitlines()[1:]
    model = TinyLlama()
    printed = format_layer_stats(LLRAdamW(model, lr=1e-3, backend="torch")).splitlines()
    assert block[1] == printed[1]  # the column header
    assert block[2].rstrip("-") == printed[2].rstrip("-")  # the rule, up to the status column's width
    assert block[-1] == printed[-1]  # the folded norms
