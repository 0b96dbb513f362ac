"""The training harness's command lines reach what they configure: every option of python/train.py lands in the
config under its name (a table, checked to cover every option ``--help`` lists), presets give their values and
the command line overrides them, the config reaches each arm's optimizers (their hyperparameters, the LLR
arguments, the policies, the per-arm LR scales) and the training loop (the warmup + cosine schedule written out
here, the clip threshold, the evaluation steps); python/train_dist.py's options reach its optimizer.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PY = Path(__file__).resolve().parents[2] / "python"
sys.path.insert(0, str(PY))

import models  # noqa: E402
import train  # noqa: E402
import train_dist  # noqa: E402

# flag -> (its value on the command line, config key, the value the config must hold)
OPTIONS = {
    "--preset": ("smoke", "preset", "smoke"),
    "--out": ("/tmp/x", "out", "/tmp/x"),
    "--publish": ("pub/x", "publish", "pub/x"),
    "--reference": ("pub/ref.json", "reference", "pub/ref.json"),
    "--no-progress": (None, "no_progress", True),
    "--no-plots": (None, "no_plots", True),
    "--model": ("gpt-nano", "model", "gpt-nano"),
    "--tie-embeddings": (None, "tie_embeddings", True),
    "--untie-embeddings": (None, "tie_embeddings", False),
    "--data": ("shared", "data", "shared"),
    "--data-dir": ("/d", "data_dir", "/d"),
    "--vocab-size": ("777", "vocab_size", 777),
    "--tokenizer-train-chars": ("12345", "tokenizer_train_chars", 12345),
    "--seq-len": ("33", "seq_len", 33),
    "--cache-dir": ("/c", "cache_dir", "/c"),
    "--arms": ("lars,rlrs,llr-muon", "arms", ["lars", "rlrs", "llr-muon"]),
    "--lrs": ("1e-3,5e-4", "lrs", [1e-3, 5e-4]),
    "--seeds": ("4,5", "seeds", [4, 5]),
    "--steps": ("17", "steps", 17),
    "--batch-size": ("3", "batch_size", 3),
    "--warmup": ("0.25", "warmup", 0.25),
    "--min-lr-ratio": ("0.3", "min_lr_ratio", 0.3),
    "--weight-decay": ("0.07", "weight_decay", 0.07),
    "--beta1": ("0.8", "beta1", 0.8),
    "--beta2": ("0.9", "beta2", 0.9),
    "--clip": ("0.5", "clip", 0.5),
    "--muon-lr-ratio": ("7", "muon_lr_ratio", 7.0),
    "--arm-lr-scale": ("lars=3,lamb=30", "arm_lr_scale", "lars=3,lamb=30"),
    "--s": ("2.5", "s", 2.5),
    "--muon-s": ("1.5", "muon_s", 1.5),
    "--interval": ("9", "interval", 9),
    "--grad-phase": ("0.2", "grad_phase", 0.2),
    "--active-until": ("0.6", "active_until", 0.6),
    "--ramp-steps": ("4", "ramp_steps", 4),
    "--backend": ("torch", "backend", "torch"),
    "--eval-every": ("6", "eval_every", 6),
    "--eval-windows": ("11", "eval_windows", 11),
    "--eval-batch-size": ("5", "eval_batch_size", 5),
    "--device": ("cpu", "device", "cpu"),
    "--dtype": ("fp32", "dtype", "fp32"),
    "--compile": (None, "compile", True),
    "--threads": ("2", "threads", "2"),
}


def flags_in_help(module, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    return set(re.findall(r"^ {2}(?:-\w, )?(--[a-z][a-z0-9-]*)", capsys.readouterr().out, re.M)) - {"--help"}


def test_option_table_covers_every_option(capsys):
    assert flags_in_help(train, capsys) == set(OPTIONS), "add new options to OPTIONS (and their checks)"


@pytest.mark.parametrize("flag", sorted(OPTIONS))
def test_each_option_reaches_its_config_key(flag):
    value, key, want = OPTIONS[flag]
    argv = [flag] if value is None else [flag, value]
    cfg = vars(train.parse_args(argv))
    assert cfg[key] == want, (flag, cfg[key])
    if flag != "--preset":  # (a preset sets many keys: test_all_options_at_once_and_presets)
        base = vars(train.parse_args([]))
        changed = {k for k in cfg if cfg[k] != base[k]}
        assert changed == {key}, f"{flag} changed {sorted(changed)}, not only {key!r}"


def test_all_options_at_once_and_presets():
    argv = [x for flag, (value, _, _) in OPTIONS.items() if flag not in ("--untie-embeddings", "--preset")
            for x in ([flag] if value is None else [flag, value])]
    cfg = vars(train.parse_args(argv))
    for flag, (_, key, want) in OPTIONS.items():
        if flag not in ("--untie-embeddings", "--preset"):
            assert cfg[key] == want, flag
    for name, preset in train.RUN_PRESETS.items():  # a preset's values, and the command line over them
        cfg = vars(train.parse_args(["--preset", name]))
        for k, v in preset.items():
            want = train._csv(v, float if k == "lrs" else int if k == "seeds" else str) if k in ("arms", "lrs", "seeds") else v
            assert cfg[k] == want, (name, k)
        assert vars(train.parse_args(["--preset", name, "--steps", "5"]))["steps"] == 5
    with pytest.raises(SystemExit):
        train.parse_args(["--arms", "uniform,adam"])


# ---------------------------------------------------------------------------------------- into the optimizers
ARGV = ["--lrs", "2e-3", "--steps", "40", "--weight-decay", "0.07", "--beta1", "0.8", "--beta2", "0.9", "--s", "2.5",
        "--muon-s", "1.5", "--interval", "9", "--grad-phase", "0.2", "--active-until", "0.6", "--ramp-steps", "4",
        "--backend", "torch", "--muon-lr-ratio", "7", "--min-lr-ratio", "0.3", "--arm-lr-scale", "lars=3,lamb=30,rlrs=0.5"]
LR = 2e-3


def tiny_model() -> models.LanguageModel:
    return models.build_model(models.model_config("tiny", vocab_size=64, max_seq_len=16))


def llr_config_of(opt) -> dict:
    c = opt.llr.config
    return {k: getattr(c, k, None) for k in ("interval", "total_steps", "grad_phase", "active_until", "ramp_steps")}


@pytest.mark.parametrize("arm", train.ARMS)
def test_config_reaches_each_arms_optimizers(arm):
    a = train.parse_args(ARGV)
    if train.arm_unavailable(arm):
        pytest.skip(train.arm_unavailable(arm))
    opts = train.build_optimizers(arm, tiny_model(), LR, a, cuda=False)
    llr_kw = dict(interval=9, total_steps=40, grad_phase=0.2, active_until=0.6, ramp_steps=4)
    first = opts[0]
    g = first.param_groups[0]
    if arm in ("uniform", "uniform-smax"):
        assert isinstance(first, torch.optim.AdamW)
        assert g["lr"] == LR * (2.5 if arm == "uniform-smax" else 1.0) and g["betas"] == (0.8, 0.9) and g["weight_decay"] == 0.07
    elif arm in ("llr",) + train.POLICY_ARMS:
        scale = {"sharpness": 0.1, "rlrs": 0.5}.get(arm, 1.0)  # Table 1 ratios, --arm-lr-scale over them
        assert type(first).__name__ == "LLRAdamW" and first.backend == "torch"
        assert g["lr"] == pytest.approx(LR * scale) and g["betas"] == (0.8, 0.9) and g["weight_decay"] == 0.07
        if arm == "rlrs":
            c = first.policy.config
            assert first.policy.name == "rlrs" and c.total_steps == 40 and c.final_lr_ratio == 0.3
        elif arm == "sharpness":
            assert first.policy.name == "blockwise" and first.policy.config.ratios["qk"] == 8.0
        else:
            assert llr_config_of(first) == {**llr_kw, **({"grad_phase": 0.0} if arm == "alphadecay" else {})}
            want_s = 1.0 if arm == "alphadecay" else 2.5
            assert first.llr.config.s == want_s
            assert first.policy.name == "llr"
            assert first.llr.config.shuffle == (arm == "llr-shuffled")
            assert (first.llr.config.wd_range is not None) == (arm in ("alphadecay", "llr+alphadecay"))
    elif arm == "lars":
        assert type(first).__name__ == "LARS" and g["lr"] == pytest.approx(LR * 3) and g["momentum"] == 0.9
        assert g["weight_decay"] == train.ARM_WEIGHT_DECAY["lars"]
    elif arm == "lamb":
        assert type(first).__name__ == "LAMB" and g["lr"] == pytest.approx(LR * 30) and g["betas"] == (0.8, 0.9)
        assert g["weight_decay"] == 0.07
    elif arm == "muon":
        muon, adamw = opts
        assert isinstance(muon, torch.optim.Muon) and muon.param_groups[0]["lr"] == pytest.approx(LR * 7)
        assert muon.param_groups[0]["weight_decay"] == 0.07
        assert adamw.param_groups[0]["lr"] == LR and adamw.param_groups[0]["betas"] == (0.8, 0.9)
    elif arm == "llr-muon":
        assert type(first).__name__ == "LLRMuon" and first.llr.config.s == 1.5 and llr_config_of(first) == llr_kw
        by_kind = {gr["use_muon"]: gr for gr in first.param_groups}
        assert by_kind[True]["lr"] == pytest.approx(LR * 7) and by_kind[True]["weight_decay"] == 0.07
        assert by_kind[False]["lr"] == LR and by_kind[False]["betas"] == (0.8, 0.9)
    else:
        raise AssertionError(f"arm {arm!r} has no check here: add one")


# ------------------------------------------------------------------------------------------ into the loop
class RandomTokens:
    """A stand-in for python/data.py's TokenData: random batches of the model's vocabulary."""

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int):
        x = torch.from_numpy(rng.integers(0, 64, (batch_size, seq_len + 1)))
        return x[:, :-1], x[:, 1:]


def schedule(t: int, steps: int, warmup: float, floor: float) -> float:
    """Linear warmup over round(warmup x steps) steps to 1, then a cosine to ``floor`` at the last step."""
    w = int(round(warmup * steps))
    if t < w:
        return (t + 1) / w
    u = min(1.0, (t - w) / max(1, steps - w))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u))


def test_schedule_clip_and_evaluation_reach_the_training_loop(monkeypatch):
    a = train.parse_args(["--steps", "10", "--warmup", "0.3", "--min-lr-ratio", "0.25", "--clip", "0.37",
                          "--eval-every", "4", "--batch-size", "2", "--seq-len", "8", "--lrs", "1e-3", "--dtype", "fp32"])
    seen_lr, seen_clip = [], []
    real_clip, real_step = torch.nn.utils.clip_grad_norm_, torch.optim.AdamW.step

    def clip(params, max_norm, *args, **kwargs):
        seen_clip.append(max_norm)
        return real_clip(params, max_norm, *args, **kwargs)

    def step(self, *args, **kwargs):
        seen_lr.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    mcfg = models.model_config("tiny", vocab_size=64, max_seq_len=8)
    valid = [RandomTokens().batch(np.random.default_rng(0), 2, 8)]
    rec = train.train_one("uniform", 1e-3, 0, a, RandomTokens(), mcfg, torch.device("cpu"), valid, "t", progress=False)
    assert seen_lr == pytest.approx([1e-3 * schedule(t, 10, 0.3, 0.25) for t in range(10)], rel=1e-12)
    assert seen_clip == [0.37] * 10
    assert [v["step"] for v in rec["val"]] == [0, 4, 8, 10] and rec["steps_done"] == 10
    a0 = train.parse_args(["--steps", "3", "--clip", "0", "--batch-size", "2", "--seq-len", "8"])
    seen_clip.clear()
    train.train_one("uniform", 1e-3, 0, a0, RandomTokens(), mcfg, torch.device("cpu"), valid, "t", progress=False)
    assert seen_clip == [], "--clip 0 turns clipping off"


# ------------------------------------------------------------------------------------------- train_dist.py
def test_train_dist_options_reach_the_optimizer(capsys):
    assert flags_in_help(train_dist, capsys) == {
        "--parallel", "--optimizer", "--preset", "--data", "--vocab-size", "--steps", "--stop-after", "--batch", "--seq",
        "--lr", "--s", "--interval", "--seed", "--device", "--ckpt", "--save-every", "--resume"}, "new options need checks"
    a = train_dist.parse_args(["--optimizer", "llr-muon", "--lr", "2e-3", "--s", "1.7", "--interval", "6", "--steps",
                               "30", "--parallel", "fsdp2", "--batch", "6", "--seq", "12", "--seed", "3",
                               "--stop-after", "9", "--save-every", "4", "--ckpt", "/tmp/c", "--resume",
                               "--preset", "tiny", "--data", "sample", "--vocab-size", "300", "--device", "cpu"])
    assert (a.parallel, a.batch, a.seq, a.seed, a.stop_after, a.save_every, a.ckpt, a.resume, a.preset, a.data,
            a.vocab_size, a.device) == ("fsdp2", 6, 12, 3, 9, 4, "/tmp/c", True, "tiny", "sample", 300, "cpu")
    opt = train_dist.make_optimizer(a, tiny_model())
    c = opt.llr.config
    assert type(opt).__name__ == "LLRMuon" and (c.s, c.interval, c.total_steps) == (1.7, 6, 30)
    by_kind = {g["use_muon"]: g for g in opt.param_groups}
    assert by_kind[True]["lr"] == pytest.approx(2e-2) and by_kind[False]["lr"] == 2e-3
    opt = train_dist.make_optimizer(train_dist.parse_args(["--lr", "5e-4"]), tiny_model())
    assert type(opt).__name__ == "LLRAdamW" and opt.llr.config.s == 3.0 and opt.param_groups[0]["lr"] == 5e-4
    with pytest.raises(SystemExit):
        train_dist.parse_args(["--resume"])  # needs --ckpt
