"""The harness's claims: the main job compares itself with the published table (the README's), the README shows
that table as published, the loss plot holds every plotted point with the full config in its title, the
heatmaps say which columns hold gradient-phase alphas, and the per-layer table is the library's.
"""
from __future__ import annotations

import copy
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = ROOT / "python"
sys.path.insert(0, str(PY))

import report
import train

CONFIG = dict(model="cpu", data="sample", vocab_size=4096, tokenizer_train_chars=50_000_000, seq_len=128,
              batch_size=32, steps=120, warmup=0.1, min_lr_ratio=0.1, weight_decay=0.1, beta1=0.9, beta2=0.95,
              clip=1.0, s=3.0, muon_s=2.0, interval=20, grad_phase=0.05, active_until=1.0, ramp_steps=0,
              eval_windows=128, tie_embeddings=None, muon_lr_ratio=10.0, seeds=[0, 1, 2], eval_every=20)


def fake_metrics(ppl: dict[str, list[float]], **config) -> dict:
    """Metrics of a finished comparison with these final perplexities per arm and seed; a loss curve per run."""
    runs = []
    for arm, values in ppl.items():
        for seed, p in enumerate(values):
            loss = math.log(p)
            curve = [8.3 - (8.3 - loss) * (1 - math.exp(-t / 15)) for t in range(120)]
            runs.append(dict(arm=arm, lr=4e-3, seed=seed, steps=120, final_val_loss=loss, final_val_ppl=p,
                             tokens_seen=491520, tokens_per_second=1.0, train_loss=curve, status="ok",
                             val=[{"step": 0, "loss": 8.32}, {"step": 60, "loss": loss + 0.3}, {"step": 120, "loss": loss}],
                             llr_overhead=None))
    return {"runs": runs, "config": {**CONFIG, **config}, "model": {"arch": "llama"}, "params": 1.84e6,
            "data": {"source": "sample"}, "started": "2026-12-05T08:00:00", "machine": {"platform": "test box"}}


PUBLISHED = {"uniform": [443.42, 484.72, 504.51], "llr": [368.87, 407.44, 357.43]}


def test_comparison_within_tolerance_reproduces():
    rerun = {"uniform": [443.36, 485.77, 510.61], "llr": [370.1, 409.0, 362.3]}  # the rerun, about
    text = report.compare_to_reference(fake_metrics(rerun), fake_metrics(PUBLISHED), "pub.json")
    mean_u, mean_u2 = sum(PUBLISHED["uniform"]) / 3, sum(rerun["uniform"]) / 3
    assert f"uniform: mean ppl {mean_u:.2f} published, {mean_u2:.2f} here ({100 * (mean_u2 / mean_u - 1):+.2f}%, within " \
           f"±{100 * report.REFERENCE_TOLERANCE:g}%)" in text
    assert "seed 2: 504.51 -> 510.61 (+1.2%)" in text
    assert "llr vs Uniform, seeds [0, 1, 2]: [lower, lower, lower] published, [lower, lower, lower] here: the same" in text
    assert text.splitlines()[-1] == "=> reproduces the published table within its stated tolerance"


def test_comparison_names_what_broke():
    off = {"uniform": [p * 1.08 for p in PUBLISHED["uniform"]], "llr": PUBLISHED["llr"]}
    text = report.compare_to_reference(fake_metrics(off), fake_metrics(PUBLISHED), "pub.json")
    assert "uniform: mean ppl" in text and "(+8.00%, OUTSIDE ±5%)" in text
    assert text.splitlines()[-1] == "=> does NOT reproduce the published table within its stated tolerance"
    flipped = {"uniform": PUBLISHED["uniform"], "llr": [368.87, 407.44, 510.0]}  # seed 2: LLR above Uniform
    text = report.compare_to_reference(fake_metrics(flipped), fake_metrics(PUBLISHED), "pub.json")
    assert "[lower, lower, higher] here: DIFFERENT" in text and "does NOT reproduce" in text
    partial = fake_metrics(PUBLISHED)  # a run stopped after seed 0: compared on the seeds it has
    partial["runs"] = [r for r in partial["runs"] if r["seed"] == 0]
    text = report.compare_to_reference(partial, fake_metrics(PUBLISHED), "pub.json")
    assert "llr vs Uniform, seeds [0]: [lower] published, [lower] here: the same" in text and "=> reproduces" in text
    text = report.compare_to_reference(fake_metrics(PUBLISHED, steps=60), fake_metrics(PUBLISHED), "pub.json")
    assert "not comparable: steps = 60 here, 120 there" in text


def test_readme_shows_the_published_table_and_its_tolerance():
    """The README's Result table is the published run's (benchmarks/results/train_cpu_demo.json, which the main job
    compares itself with), and the README states the tolerance the comparison uses."""
    published = json.loads((ROOT / "benchmarks" / "results" / "train_cpu_demo.json").read_text())
    readme = (ROOT / "README.md").read_text()
    result = readme[readme.index("## Result"):readme.index("\n## ", readme.index("## Result") + 1)]
    assert report.readme_table(published) in result
    assert f"±{100 * report.REFERENCE_TOLERANCE:g}%" in result
    assert "bash scripts/main.sh --threads 2" in result
    assert published["config"]["steps"] == train.RUN_PRESETS["cpu-demo"]["steps"]
    assert train.RUN_PRESETS["cpu-demo"]["reference"] == "benchmarks/results/train_cpu_demo.json"


def test_loss_plot_holds_every_point_and_titles_the_config():
    metrics = fake_metrics(PUBLISHED)
    fig = report.loss_figure(metrics)
    whole, zoom = fig.axes[0], fig.axes[1]
    lo, hi = whole.get_ylim()
    firsts = [r["train_loss"][0] for r in metrics["runs"]] + [8.32]
    lasts = [r["final_val_loss"] for r in metrics["runs"]]
    assert hi >= max(firsts) and lo <= min(lasts)  # the first steps are not clipped
    zlo, zhi = zoom.get_ylim()
    assert zhi < max(firsts) and zlo <= min(lasts) and zoom.get_xlim()[0] == 60  # the zoom shows the second half
    title = fig._suptitle.get_text()
    for part in ("1.84M params", "120 steps x 4,096 tokens", "warmup 12 + cosine to 0.1x", "wd 0.1", "s=3",
                 "interval 20", "gradient alphas for 5%", "seeds 0,1,2"):
        assert part in title, part
    assert whole.get_title() == "lr 0.004: the whole run"


def test_heatmap_columns_say_where_alphas_came_from():
    stats = {"steps": [0, 20, 40], "source": ["grad", "weight", "weight"]}
    assert report.column_labels(stats) == ["0 (grad)", "20", "40"]
    assert report.column_labels({"steps": [0, 20]}) == ["0", "20"]  # older metrics.json without sources


def test_main_job_prints_its_comparison_and_the_librarys_table(tmp_path, capsys):
    """Two identical tiny runs: the second compares itself with the first (published) and reproduces it exactly;
    the per-layer table printed at the end of an LLR run is llr_kernels.format_layer_stats's; gradient-phase
    snapshots are recorded."""
    base = ["--preset", "smoke", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--no-plots",
            "--vocab-size", "300", "--tokenizer-train-chars", "60000"]
    first = train.main(base + ["--out", str(tmp_path / "a"), "--publish", str(tmp_path / "pub")])
    out = capsys.readouterr().out
    assert "Comparison with the published table" not in out  # the smoke preset names no reference
    assert re.search(r"per-layer PL_Alpha_Hill and LR at the end of training\nLLRAdamW at step 3, policy 'llr': alphas "
                     r"measured before step 2 from the weights\nlayer +kind +shape +alpha +mult +lr +wd +status\n", out)
    llr = next(r for r in first["runs"] if r["arm"] == "llr")
    assert llr["layer_stats"]["source"] == ["grad", "weight", "weight"]  # interval 1, grad_phase 5% of 3 steps: step 0
    train.main(base + ["--out", str(tmp_path / "b"), "--reference", str(tmp_path / "pub.json")])
    out = capsys.readouterr().out
    assert f"Comparison with the published table ({tmp_path / 'pub.json'}" in out
    assert f"(+0.00%, within ±{100 * report.REFERENCE_TOLERANCE:g}%)" in out and "=> reproduces the published table within its stated tolerance" in out
    changed = copy.deepcopy(json.loads((tmp_path / "pub.json").read_text()))
    changed["config"]["steps"] = 4
    (tmp_path / "other.json").write_text(json.dumps(changed))
    train.main(base + ["--out", str(tmp_path / "c"), "--reference", str(tmp_path / "other.json")])
    assert "not comparable: steps = 3 here, 4 there" in capsys.readouterr().out


def test_reference_option_reaches_the_config():
    assert train.parse_args(["--preset", "cpu-demo"]).reference == "benchmarks/results/train_cpu_demo.json"
    assert train.parse_args(["--preset", "cpu-demo", "--reference", "none"]).reference == "none"
    assert train.load_reference("none") is None and train.parse_args(["--preset", "smoke"]).reference is None
