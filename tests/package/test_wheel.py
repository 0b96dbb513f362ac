"""Packaging: the sdist and both wheels carry what the C++ backend needs, installed outside the source tree.

One slow test (an ahead-of-time compile, 1-3 minutes on 2 cores, plus a JIT build unless the JIT cache already
holds one of these sources): from a copy of the package files it builds

1. an sdist, which must carry every C++/CUDA source and header (``llr_kernels/csrc``);
2. from that sdist, the default wheel (``pip wheel``): pure ``py3-none-any``, with the sources and without ``_C``;
3. from that sdist, the platform wheel (``LLR_BUILD_EXT=1 pip wheel --no-build-isolation``): ``cpXY-cpXY-<platform>``
   with the compiled ``llr_kernels/_C``;

then installs each wheel (``pip install --no-deps --no-index``) into a fresh virtualenv outside the source tree
(torch and the other dependencies come from this environment through a .pth file), and from a working directory
outside the repository steps ``LLRAdamW(backend="cpp")`` against ``torch.optim.AdamW``: the pure wheel through the
JIT build of its installed sources, the platform wheel through its ``_C``. The JIT cache is this environment's
(``LLR_KERNELS_CACHE`` or ``~/.cache/llr_kernels``): a build of the same sources is reused, whatever their path.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile

import torch

from conftest import require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC_FILES = sorted(os.path.basename(f) for e in ("*.cpp", "*.h", "*.cu") for f in glob.glob(os.path.join(ROOT, "llr_kernels", "csrc", e)))

STEP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import llr_kernels
    from llr_kernels import LLRAdamW
    from llr_kernels.ops import extension as _ext

    before = _ext.status()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(32, 24), torch.nn.Linear(24, 48), torch.nn.Linear(48, 24))
    ref_model = torch.nn.Sequential(torch.nn.Embedding(32, 24), torch.nn.Linear(24, 48), torch.nn.Linear(48, 24))
    ref_model.load_state_dict(model.state_dict())
    opt = LLRAdamW(model, lr=1e-2, weight_decay=0.1, s=1.0, min_eigs=8, backend="cpp")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    init = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), ref_model.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    with torch.no_grad():
        err = max(float(((p - q).abs() / (q.abs() + 1e-3)).max()) for p, q in zip(model.parameters(), ref_model.parameters()))
        moved = min(float((p - p0).abs().max()) for p, p0 in zip(model.parameters(), init))
    print(json.dumps({"file": llr_kernels.__file__, "before": before, "after": _ext.status(), "err": err,
                      "moved": moved, "cwd": os.getcwd()}))
    """
)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def copy_package(dst: str) -> None:
    """The files a release is built from (no build outputs, no caches, no compiled modules)."""
    os.makedirs(dst)
    for f in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(os.path.join(ROOT, f), dst)
    shutil.copytree(os.path.join(ROOT, "llr_kernels"), os.path.join(dst, "llr_kernels"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "build"))


def make_venv(path: str) -> str:
    """A fresh virtualenv that sees this environment's torch (and numpy, triton) through a .pth file, but not
    this checkout's llr_kernels (an editable install's finder lives in a .pth that is not processed there)."""
    run([sys.executable, "-m", "venv", "--without-pip", path])
    py = os.path.join(path, "bin", "python")
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    deps = os.path.dirname(os.path.dirname(torch.__file__))
    with open(os.path.join(site, "_llr_test_deps.pth"), "w") as f:
        f.write(deps + "\n")
    probe = run([py, "-c", "import importlib.util as u; print(u.find_spec('llr_kernels') is None)"], cwd=path)
    assert probe.stdout.strip() == "True", "the fresh venv must not see the checkout's llr_kernels"
    return py


def test_sdist_and_wheels_carry_the_extension_and_step_with_cpp_outside_the_tree(tmp_path):
    from torch.utils.cpp_extension import is_ninja_available

    require(None if shutil.which(os.environ.get("CXX", "c++")) else "no C++ compiler on PATH", "a C++ compiler")
    require(None if is_ninja_available() else "ninja is not installed", "ninja")
    tmp = str(tmp_path)
    src, dist = os.path.join(tmp, "src"), os.path.join(tmp, "dist")
    copy_package(src)
    env = {k: v for k, v in os.environ.items() if k not in ("LLR_BUILD_EXT", "LLR_DISABLE_EXT", "PYTHONPATH")}

    # 1. the sdist carries every source and header
    sdist = run([sys.executable, "-c", f"from setuptools import build_meta as b; print(b.build_sdist({dist!r}))"],
                cwd=src, env=env).stdout.strip().splitlines()[-1]
    with tarfile.open(os.path.join(dist, sdist)) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {f"llr_kernels/csrc/{f}" for f in CSRC_FILES} <= names and "setup.py" in names
    assert not any(n.endswith(".so") for n in names)

    # 2. the default wheel: pure, with the sources, without a compiled module
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", os.path.join(dist, sdist)]
    run(pip + ["-w", os.path.join(tmp, "pure")], env=env)
    (pure,) = glob.glob(os.path.join(tmp, "pure", "*.whl"))
    assert pure.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(pure) as z:
        pure_names = set(z.namelist())
    assert {f"llr_kernels/csrc/{f}" for f in CSRC_FILES} <= pure_names
    assert not any(n.startswith("llr_kernels/_C") for n in pure_names)

    # 3. the platform wheel: the extension compiled ahead of time against this torch
    run(pip + ["-w", os.path.join(tmp, "aot")], env={**env, "LLR_BUILD_EXT": "1"})
    (aot,) = glob.glob(os.path.join(tmp, "aot", "*.whl"))
    tag = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert os.path.basename(aot).endswith(f"-{abi}-{abi}-{tag}.whl"), aot
    with zipfile.ZipFile(aot) as z:
        aot_names = set(z.namelist())
    assert any(n.startswith("llr_kernels/_C") and n.endswith(".so") for n in aot_names)
    assert {f"llr_kernels/csrc/{f}" for f in CSRC_FILES} <= aot_names

    # 4. each wheel in a fresh venv outside the tree, stepping with backend="cpp" from a directory outside the repo
    venv = os.path.join(tmp, "venv")
    py = make_venv(venv)
    work = os.path.join(tmp, "work")
    os.makedirs(work)
    script = os.path.join(work, "step.py")
    with open(script, "w") as f:
        f.write(STEP_SCRIPT)
    cache = os.environ.get("LLR_KERNELS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llr_kernels")
    results = {}
    for kind, wheel in (("pure", pure), ("aot", aot)):
        run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--force-reinstall", wheel],
            env=env)
        out = run([py, script], cwd=work, env={**env, "LLR_KERNELS_CACHE": cache})
        results[kind] = res = json.loads(out.stdout.strip().splitlines()[-1])
        print(kind, json.dumps(res, indent=1), out.stderr[-2000:])
        assert os.path.realpath(res["file"]).startswith(os.path.realpath(venv) + os.sep), res["file"]
        assert not os.path.realpath(res["cwd"]).startswith(ROOT)
        assert os.path.realpath(res["before"]["sources"]).startswith(os.path.realpath(venv) + os.sep)
        assert res["err"] < 1e-4 and res["moved"] > 1e-3  # the same AdamW steps (float32 kernel vs torch)
        assert res["after"]["state"] == "loaded"
    assert results["pure"]["before"]["state"] in ("jit_cached", "jit_build")  # the JIT path of the installed sources
    assert os.path.realpath(results["pure"]["after"]["detail"]).startswith(os.path.realpath(cache) + os.sep)
    assert results["aot"]["before"]["state"] == "aot"
    assert os.path.realpath(results["aot"]["after"]["detail"]).startswith(os.path.realpath(venv) + os.sep)
