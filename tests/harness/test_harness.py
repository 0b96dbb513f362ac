"""Fast checks of the training harness in python/: models, rotary, tokenizer, schedule, a tiny end-to-end run.

No network and no ../shared: the text comes from the embedded sample in python/sample_data/.
"""
from __future__ import annotations

import json
import lzma
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PY = Path(__file__).resolve().parents[2] / "python"
sys.path.insert(0, str(PY))

import data as hdata  # noqa: E402
import models  # noqa: E402
import report  # noqa: E402
import train  # noqa: E402


@pytest.fixture(scope="module")
def sample_text() -> str:
    with lzma.open(PY / "sample_data" / "enwiki_sample_train.txt.xz", "rt", encoding="utf-8") as f:
        return f.read(300_000)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, sample_text) -> Path:
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text(sample_text, encoding="utf-8")
    return p


def _tiny(arch: str, tie: bool = False) -> models.LanguageModel:
    cfg = models.model_config("tiny" if arch == "llama" else "gpt-cpu", vocab_size=97, max_seq_len=16,
                              d_model=64, n_layers=2, n_heads=4, d_ff=128, tie_embeddings=tie)
    torch.manual_seed(0)
    return models.build_model(cfg)


@pytest.mark.parametrize("arch,tie", [("llama", False), ("llama", True), ("gpt", True)])
def test_forward_shapes_and_loss(arch, tie):
    m = _tiny(arch, tie)
    x = torch.randint(0, 97, (3, 16))
    logits = m(x)
    assert logits.shape == (3, 16, 97)
    logits2, loss = m(x, torch.randint(0, 97, (3, 16)))
    assert torch.equal(logits, logits2) and loss.dim() == 0 and math.isfinite(loss.item())
    assert abs(loss.item() - math.log(97)) < 0.5  # near-uniform predictions at init
    assert (m.lm_head.weight is m.token_embedding.weight) == tie
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_causal_masking(arch):
    """A token's logits depend only on it and earlier tokens."""
    m = _tiny(arch).eval()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    t = 9
    y[:, t + 1 :] = torch.randint(0, 97, (2, 16 - t - 1))
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_rotary_matches_float64_formula():
    """Rotate pair (i, i + d/2) at position p by p * theta^(-2i/d), computed independently in float64."""
    t, d, theta = 24, 16, 10000.0
    x = torch.randn(2, 3, t, d)
    cos, sin = models.rotary_cos_sin(t, d, theta)
    got = models.apply_rotary(x, cos, sin).double()
    xd = x.double().numpy()
    ref = np.empty_like(xd)
    h = d // 2
    for p in range(t):
        for i in range(h):
            ang = p * theta ** (-2.0 * i / d)
            c, s = math.cos(ang), math.sin(ang)
            ref[..., p, i] = xd[..., p, i] * c - xd[..., p, i + h] * s
            ref[..., p, i + h] = xd[..., p, i] * s + xd[..., p, i + h] * c
    torch.testing.assert_close(got, torch.from_numpy(ref), rtol=0, atol=5e-5)
    # relative-position property: <R_p q, R_k k> depends only on p - k
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    c64, s64 = cos.double(), sin.double()
    rq = models.apply_rotary(q.expand(t, d), c64, s64)
    rk = models.apply_rotary(k.expand(t, d), c64, s64)
    torch.testing.assert_close((rq[5] * rk[2]).sum(), (rq[13] * rk[10]).sum())


def test_tokenizer_round_trip_and_cache(tmp_path, tiny_corpus, sample_text):
    tok = hdata.train_tokenizer([sample_text[:100_000]], vocab_size=400)
    held = sample_text[200_000:203_000] + "\nUnicode: Zürich — naïve café, 東京, emoji 🙂\n"
    ids = hdata.encode(tok, held)
    assert tok.decode(ids.tolist()) == held
    assert ids.max() < tok.get_vocab_size()
    d1 = hdata.load_data(str(tiny_corpus), 400, cache_dir=tmp_path, log=lambda *_: None)
    assert d1.train.dtype == np.uint16 and len(d1.train) > 10 * len(d1.valid) > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    d2 = hdata.load_data(str(tiny_corpus), 400, cache_dir=tmp_path, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # nothing rebuilt
    assert np.array_equal(np.asarray(d1.train), np.asarray(d2.train))
    text = d2.tokenizer.decode(np.asarray(d2.valid[:200]).tolist())
    assert text and text in tiny_corpus.read_text(encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="--data"):
        hdata.resolve_source(str(tmp_path / "missing.txt"))


def test_batches_are_deterministic(tiny_corpus, tmp_path):
    d = hdata.load_data(str(tiny_corpus), 300, cache_dir=tmp_path, log=lambda *_: None)
    a = d.batch(np.random.default_rng(3), 4, 8)
    b = d.batch(np.random.default_rng(3), 4, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][:, 1:], a[1][:, :-1])
    vb = d.valid_batches(4, 8, 10)
    assert sum(x.shape[0] for x, _ in vb) == 10


def test_warmup_cosine_values():
    total, warm, mr = 100, 10, 0.1
    f = lambda t: train.warmup_cosine(t, total, warm, mr)  # noqa: E731
    for t in range(warm):
        assert f(t) == pytest.approx((t + 1) / warm)
    for t in range(warm, total):
        p = (t - warm) / (total - warm)
        assert f(t) == pytest.approx(mr + (1 - mr) * 0.5 * (1 + math.cos(math.pi * p)))
    assert f(warm) == pytest.approx(1.0) and f(55) == pytest.approx(mr + (1 - mr) * 0.5)
    assert f(total) == pytest.approx(mr) and f(10 * total) == pytest.approx(mr)
    # through LambdaLR the t-th optimizer step uses factor f(t)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * f(t) for t in range(total)])


def test_report_verdict_uses_seed_spread():
    def metrics(diffs):
        runs = []
        for seed, dlt in enumerate(diffs):
            for arm, loss in (("uniform", 5.0 + 0.1 * seed), ("llr", 5.0 + 0.1 * seed + dlt)):
                runs.append(dict(arm=arm, lr=1e-3, seed=seed, steps=10, final_val_loss=loss,
                                 final_val_ppl=math.exp(loss), tokens_seen=100, tokens_per_second=1.0,
                                 val=[{"step": 10, "loss": loss}], llr_overhead=None, status="ok"))
        return {"runs": runs}

    rows = {r["arm"]: r for r in report.summarize(metrics([-0.05, -0.051, -0.049]))}
    assert "lower than Uniform" in report.verdict(rows["llr"])
    rows = {r["arm"]: r for r in report.summarize(metrics([-0.05, 0.04, -0.01]))}
    assert "not distinguishable" in report.verdict(rows["llr"])
    rows = {r["arm"]: r for r in report.summarize(metrics([-0.05]))}
    assert "no claim" in report.verdict(rows["llr"])


def test_tiny_training_run_writes_outputs(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--data", str(tiny_corpus), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--no-progress", "--vocab-size", "300", "--arms", "uniform,llr,muon,llr-muon",
            "--publish", str(tmp_path / "pub" / "demo")]
    m = train.main(argv)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["command"].startswith("python python/train.py --preset smoke")
    md = (out / "results.md").read_text()
    assert "| LR | arm |" in md and "Seeds: 0" in md
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert (tmp_path / "pub" / "demo.md").read_text() == md
    runs = {r["arm"]: r for r in saved["runs"]}
    assert "uniform" in runs and len(runs["uniform"]["train_loss"]) == 3
    for r in saved["runs"]:
        assert r["tokens_seen"] == 3 * 4 * 32 and r["val"][0]["step"] == 0 and r["val"][-1]["step"] == 3
        # same seed -> same init and same first batch in every arm
        assert r["val"][0]["loss"] == pytest.approx(runs["uniform"]["val"][0]["loss"], abs=1e-6)
        assert r["train_loss"][0] == pytest.approx(runs["uniform"]["train_loss"][0], abs=1e-6)
    if "llr" in runs:
        assert runs["llr"]["llr_update_seconds"] >= 0 and runs["llr"]["layer_stats"]["alpha"]
        assert (out / "alpha_heatmap.png").exists() and (out / "lr_multiplier_heatmap.png").exists()
    else:
        assert "llr" in m["skipped_arms"]
    if "llr-muon" not in runs:
        assert "llr-muon" in m["skipped_arms"]


def test_cpu_threads_and_cli_errors(tmp_path, capsys):
    assert train.cpu_threads("3") == 3 and train.cpu_threads("auto") >= 1
    with pytest.raises(SystemExit, match=r"--threads must be >= 1 or 'auto', got '0'"):
        train.cpu_threads("0")
    with pytest.raises(SystemExit, match="^2$"):  # argparse's usage-error exit status; its message goes to stderr
        train.parse_args(["--preset", "smoke", "--arms", "uniform,sgd"])
    assert "unknown arm 'sgd'" in capsys.readouterr().err
    a = train.parse_args(["--preset", "cpu-demo", "--lrs", "1e-3,2e-3", "--steps", "7"])
    assert a.lrs == [1e-3, 2e-3] and a.steps == 7 and a.seeds == [0, 1, 2] and a.vocab_size == 4096
