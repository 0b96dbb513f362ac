"""The command line (``python -m llr_kernels.analyze`` / ``llr-analyze``): table, CSV and JSON hold the numbers
of float64 numpy references; --compare, --plots and the progress bar work; bad input exits 2 with one clear line."""
from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import needs, requires
from reference import alpha_np

from llr_kernels.analysis import analyze
from llr_kernels.analyze import main, parse_bytes

try:
    import safetensors.torch as safetensors
except ImportError:  # the test extra installs it
    safetensors = None
pytestmark = requires(None if safetensors else "not installed (pip install safetensors)", "safetensors")
ROOT = Path(__file__).resolve().parents[2]


def _missing(mod: str) -> str | None:
    return None if importlib.util.find_spec(mod) is not None else f"not installed (pip install {mod})"


@pytest.fixture
def ckpt(tmp_path, seed):
    g = torch.Generator().manual_seed(seed)
    sd = {f"model.layers.{i}.self_attn.{p}_proj.weight": torch.randn(64, 64, generator=g) @ torch.diag(
          torch.rand(64, generator=g) ** 3) for i in range(2) for p in ("q", "v")}
    sd["model.layers.0.mlp.up_proj.weight"] = torch.randn(128, 64, generator=g)
    sd["model.norm.weight"] = torch.ones(64)
    path = tmp_path / "model.safetensors"
    safetensors.save_file(sd, str(path))
    return path, sd


def test_table_csv_json(ckpt, tmp_path, capsys):
    path, sd = ckpt
    assert main([str(path), "--csv", str(tmp_path / "a.csv"), "--json", str(tmp_path / "a.json"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.mlp.up_proj.weight" in out and "ffn_up" in out and "alpha_fit" in out
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    doc = json.loads((tmp_path / "a.json").read_text())
    assert len(rows) == len(doc["layers"]) == 5 and doc["settings"]["fit"] == "ks"
    for row, js in zip(rows, doc["layers"]):
        ref = alpha_np(sd[row["name"]].double())
        assert float(row["alpha"]) == pytest.approx(ref, rel=1e-5) and js["alpha"] == pytest.approx(ref, rel=1e-5)
        assert row["shape"] == "x".join(map(str, sd[row["name"]].shape)) and js["shape"] == list(sd[row["name"]].shape)


def test_ww_compatible_flag_and_filter(ckpt, tmp_path):
    path, _ = ckpt
    assert main([str(path), "--ww-compatible", "--layers", "q_proj", "--json", str(tmp_path / "w.json"),
                 "--quiet", "--no-progress", "--metrics", "alpha_fit,entropy"]) == 0
    doc = json.loads((tmp_path / "w.json").read_text())
    assert [r["name"] for r in doc["layers"]] == [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
    assert doc["settings"]["min_tail"] == 2 and doc["settings"]["entropy_rule"] == "ww"
    assert set(doc["layers"][0]) >= {"alpha_fit", "entropy"} and "alpha" not in doc["layers"][0]


def test_compare_prints_and_writes_changes(ckpt, tmp_path, capsys):
    path, sd = ckpt
    other = tmp_path / "other.safetensors"
    safetensors.save_file({k: v * 2.0 + 0.1 * torch.randn_like(v) for k, v in sd.items()}, str(other))
    assert main([str(path), "--compare", str(other), "--csv", str(tmp_path / "a.csv"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "# change" in out and "d_alpha" in out
    rows = list(csv.DictReader(open(tmp_path / "a.compare.csv")))
    b, a = safetensors.load_file(str(path)), safetensors.load_file(str(other))
    for r in rows:
        d = alpha_np(a[r["name"]].double()) - alpha_np(b[r["name"]].double())
        assert float(r["d_alpha"]) == pytest.approx(d, rel=1e-4, abs=1e-5)


@needs(_missing("matplotlib"), "matplotlib")
def test_plots_are_written(ckpt, tmp_path, capsys):
    path, sd = ckpt
    name = "model.layers.1.self_attn.v_proj.weight"
    assert main([str(path), "--plots", str(tmp_path / "p"), "--esd", name, "--compare", str(path), "--quiet",
                 "--no-progress"]) == 0
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert files == ["alpha_change.png", "alpha_heatmap.png", f"esd_{name}.png"]
    for f in files:
        assert (tmp_path / "p" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs(_missing("tqdm"), "tqdm")
def test_progress_bar_shows_rate_and_chunk(ckpt, capsys):
    path, _ = ckpt
    analyze(path, progress=True, metrics=("alpha",))
    err = capsys.readouterr().err
    assert "5/5" in err and "mat/s" in err and "model.safetensors: 4 x 64x64" in err


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "does not exist"),
    (["{ckpt}", "--layers", "lm_head"], "matches none of the 5 weight matrices"),
    (["{bad}"], "unknown checkpoint format"),
    (["{corrupt}"], "not a readable safetensors file"),
    (["{vectors}"], "no floating tensor with >= 2 dimensions"),
    (["{ckpt}", "--metrics", "alpha,gamma"], "unknown or no metrics"),
])
def test_bad_input_exits_2_with_a_message(ckpt, tmp_path, capsys, args, message):
    path, _ = ckpt
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "c.safetensors").write_bytes(path.read_bytes()[:30])
    safetensors.save_file({"n.weight": torch.ones(4)}, str(tmp_path / "v.safetensors"))
    paths = {"missing": tmp_path / "none.safetensors", "ckpt": path, "bad": tmp_path / "m.onnx",
             "corrupt": tmp_path / "c.safetensors", "vectors": tmp_path / "v.safetensors"}
    argv = [a.format(**paths) for a in args] + ["--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llr-analyze: error: ") and message in err and err.count("\n") == 1


def test_memory_budget_parsing():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512M") == 512 << 20 and parse_bytes("1e9") == 10**9
    with pytest.raises(SystemExit):
        main(["x", "--memory-budget", "lots"])


def test_console_script_points_at_main():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python >= 3.11; the package supports 3.10)
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    target = re.search(r'^llr-analyze\s*=\s*"([^"]+)"', section, re.M).group(1)
    mod, fn = target.split(":")
    assert getattr(importlib.import_module(mod), fn) is main


def test_device_auto_and_a_missing_gpu(ckpt, tmp_path, capsys, monkeypatch):
    path, _ = ckpt
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([str(path), "--json", str(tmp_path / "a.json"), "--quiet", "--no-progress"]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["settings"]["device"] == "cpu"
    assert main([str(path), "--device", "cuda", "--no-progress"]) == 2
    assert "torch.cuda.is_available() is False: pass device='cpu'" in capsys.readouterr().err
