"""``python -m llr_kernels.info`` and ``ops.extension.status()``: which extension the "cpp" backend would use, and why not.

Each state is set up from the outside (environment, an empty or filled cache directory, a missing compiler) and
the status must name it, without building or loading anything.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import backend_missing, needs

import llr_kernels.ops.extension as ext
from llr_kernels import info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fresh_ext(monkeypatch, tmp_path):
    """The extension as if this process had not touched it yet, with an empty JIT cache under tmp_path."""
    monkeypatch.setattr(ext, "_module", None)
    monkeypatch.setattr(ext, "_tried", False)
    monkeypatch.delenv("LLR_DISABLE_EXT", raising=False)
    monkeypatch.setenv("LLR_KERNELS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_status_names_each_state_without_building(fresh_ext, monkeypatch):
    st = ext.status()
    assert st["state"] == "jit_build" and "first use builds" in st["detail"]
    assert st["cache_dir"].startswith(str(fresh_ext)) and not fresh_ext.exists()  # nothing was built or created
    assert st["sources"] == os.path.join(ROOT, "llr_kernels", "csrc") and os.path.isfile(os.path.join(st["sources"], "bindings.cpp"))

    # the documented cache layout: <cache>/<torch-python-flavour tag>/<digest>/llr_kernels_C_<digest>.so
    os.makedirs(st["cache_dir"])
    built = os.path.join(st["cache_dir"], f"llr_kernels_C_{os.path.basename(st['cache_dir'])}.so")
    open(built, "wb").close()
    assert ext.status() == {**st, "state": "jit_cached", "detail": built}

    os.remove(built)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    st2 = ext.status()
    assert st2["state"] == "unavailable" and "no C++ compiler ('/nonexistent/c++' not on PATH; set CXX)" in st2["detail"]

    monkeypatch.setenv("LLR_DISABLE_EXT", "1")
    assert ext.status()["detail"] == "disabled by LLR_DISABLE_EXT=1"

    monkeypatch.setattr(ext, "_module", sys)  # any module: "loaded" reports its file
    assert ext.status()["state"] == "loaded"


def test_status_reports_a_stale_or_current_ahead_of_time_build(fresh_ext, monkeypatch):
    class FakeC:
        __file__ = "/site-packages/llr_kernels/_C.so"
        with_cuda = False
        source_digest = "d0000000000000000"

    monkeypatch.setitem(sys.modules, "llr_kernels._C", FakeC)
    st = ext.status()
    assert st["state"] == "jit_build" and "ahead-of-time build not used: /site-packages/llr_kernels/_C.so was built " \
        "from other sources" in st["detail"]
    FakeC.source_digest = f"d{ext.source_digest(False)}"  # what setup.py compiles in (-DLLR_SOURCE_DIGEST)
    assert ext.status() == {**st, "state": "aot", "detail": "/site-packages/llr_kernels/_C.so (CPU only)"}


def test_info_prints_the_extension_state_and_the_backend_table(tmp_path):
    env = {**os.environ, "LLR_DISABLE_EXT": "1", "LLR_KERNELS_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "llr_kernels.info"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "C++ extension: unavailable (disabled by LLR_DISABLE_EXT=1)" in out.stdout
    assert f"JIT cache: {tmp_path}" in out.stdout
    assert "adamw_step     auto -> torch" in out.stdout and "cpp: the C++ extension is unavailable" in out.stdout
    quick = subprocess.run([sys.executable, "-m", "llr_kernels.info", "--status"], check=False, capture_output=True,
                           text=True, env=env, cwd=ROOT, timeout=300)
    assert quick.returncode == 0 and "C++ extension: unavailable" in quick.stdout and "[cpu]" not in quick.stdout
    failed = subprocess.run([sys.executable, "-m", "llr_kernels.info", "--ext"], check=False, capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=300)
    assert failed.returncode == 1  # --ext promises a loaded extension: it says why there is none
    assert "C++ extension: could not be built or loaded: disabled by LLR_DISABLE_EXT=1" in failed.stdout


def test_help_exits_0_and_bad_options_exit_2(capsys):
    out = subprocess.run([sys.executable, "-m", "llr_kernels.info", "--help"], check=False, capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0 and "usage: python -m llr_kernels.info" in out.stdout
    text = " ".join(out.stdout.split())  # argparse wraps to the terminal width
    assert "--ext build the C++ extension now" in text and "--status versions and the extension's state only; builds " \
        "and loads nothing" in text
    assert info.main(["--bogus"]) == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert info.main(["--ext", "--status"]) == 2  # one mode at a time


def test_status_says_each_thing_once_and_builds_nothing(fresh_ext, monkeypatch, capsys):
    monkeypatch.setattr(ext, "_prebuilt", lambda: None)
    monkeypatch.setattr(ext, "_check_prebuilt", lambda: (None, "no ahead-of-time build (test)"))
    monkeypatch.setattr(ext, "_compiler_missing", lambda: None)
    assert info.main(["--status"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("C++ extension:"))
    assert line.startswith("C++ extension: not built yet (the first use builds the C++")
    assert text.count("first use builds") == 1 and not fresh_ext.exists()


def test_ext_builds_and_loads_when_nothing_is_built(fresh_ext, monkeypatch, capsys):
    """--ext runs the build (here a stand-in that records the call) and reports the module it loaded."""
    calls = []

    class Built:
        __file__ = str(fresh_ext / "llr_kernels_C_test.so")
        with_cuda = False

    def fake_build():
        calls.append(1)
        return Built

    monkeypatch.setattr(ext, "_prebuilt", lambda: None)
    monkeypatch.setattr(ext, "_check_prebuilt", lambda: (None, "no ahead-of-time build (test)"))
    monkeypatch.setattr(ext, "_compiler_missing", lambda: None)
    monkeypatch.setattr(ext, "_jit_build", fake_build)
    assert info.main(["--ext"]) == 0
    text = capsys.readouterr().out
    assert calls == [1]
    assert f"C++ extension: loaded built now in 0 s, CPU kernels only: {Built.__file__}" in text
    assert ext.status()["state"] == "loaded"
    assert info.main(["--ext"]) == 0 and calls == [1]  # a second call loads nothing new
    assert "loaded already loaded in this process" in capsys.readouterr().out


@needs(backend_missing("cpp", torch.device("cpu")), "the C++ extension")
def test_ext_loads_the_real_extension():
    out = subprocess.run([sys.executable, "-m", "llr_kernels.info", "--ext"], check=False, capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("C++ extension:"))
    assert line.startswith("C++ extension: loaded ")
    path = line.rsplit(": ", 1)[1]
    assert os.path.isfile(path) and path.endswith(".so")
