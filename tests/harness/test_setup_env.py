"""scripts/setup_env.sh installs torch only when the Python has none, pinned, with the pip arguments the user
gives (LLR_TORCH_PIP_ARGS, e.g. PyTorch's CPU index), before the package. Run in a copy of the scripts with a
stand-in Python that records every call: nothing is installed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_PY = """#!/usr/bin/env bash
# a stand-in for python: records its arguments; has no torch until pip installs it
echo "$*" >> "{log}"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p .venv/bin
  cp "$0" .venv/bin/python
  printf 'export PATH="%s/.venv/bin:$PATH"\\n' "$PWD" > .venv/bin/activate
  exit 0
fi
if [ "$1" = "-c" ]; then [ -f "{state}" ]; exit $?; fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then case "$*" in *torch==*) touch "{state}";; esac; exit 0; fi
exit 0
"""


def run_setup(tmp_path: Path, **env: str) -> list[str]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup_env.sh", repo / "scripts")
    for f in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / f, repo / f)
    log, state = tmp_path / "calls.log", tmp_path / "torch_installed"
    py = tmp_path / "fakepython"
    py.write_text(FAKE_PY.format(log=log, state=state))
    py.chmod(0o755)
    full_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": str(py), **env}
    out = subprocess.run(["bash", "-c", f"source {repo}/scripts/setup_env.sh"], check=False, env=full_env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return log.read_text().splitlines()


def pip_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install")]


def test_torch_pinned_with_the_users_pip_arguments_before_the_package(tmp_path):
    calls = run_setup(tmp_path, LLR_TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu")
    installs = pip_installs(calls)
    assert installs[0] == "-m pip install -q --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"
    assert "--no-build-isolation -e .[test,train]" in installs[1] and len(installs) == 2


def test_without_arguments_pip_uses_its_own_settings(tmp_path):
    installs = pip_installs(run_setup(tmp_path))
    assert installs[0] == "-m pip install -q torch==2.13.0"
