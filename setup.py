"""Build hook for the optional C++/CUDA extension; all metadata lives in pyproject.toml.

The C++/CUDA sources are package data (llr_kernels/csrc/): every wheel and sdist carries them, and by default
nothing is compiled (a pure ``py3-none-any`` wheel): the extension is built just in time on first use
(llr_kernels/ops/extension.py) and cached, so a CPU-only machine or a machine without a compiler installs cleanly. To
compile it ahead of time into ``llr_kernels._C`` (every csrc/*.cpp, plus csrc/*.cu when torch has CUDA and nvcc
is found), against the torch installed in this environment:

    LLR_BUILD_EXT=1 pip install --no-build-isolation .                   # or -e . for a checkout
    LLR_BUILD_EXT=1 pip wheel --no-build-isolation --no-deps . -w dist   # a platform wheel (cp3XX-linux_x86_64)

(--no-build-isolation: build against YOUR torch; such a wheel only fits that torch version and CUDA flavour,
as apex and flash-attn wheels do.) LLR_BUILD_CUDA=0 skips the .cu sources; TORCH_CUDA_ARCH_LIST picks the GPU
architectures (e.g. "9.0"); MAX_JOBS limits parallel compiles. The module records the digest of the sources it
was built from; if csrc/ changes afterwards, llr_kernels/ops/extension.py warns and uses a JIT build instead of the stale
module (rerun the command above to refresh it).
"""
import importlib.util
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
ext_modules, cmdclass = [], {}

if os.environ.get("LLR_BUILD_EXT", "0") == "1":
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    # the flags are shared with the JIT build; load ops/extension.py alone (importing the package needs triton etc.)
    spec = importlib.util.spec_from_file_location("_llr_ext", os.path.join(ROOT, "llr_kernels", "ops", "extension.py"))
    _ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_ext)

    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None and os.environ.get("LLR_BUILD_CUDA", "1") != "0"
    sources = [os.path.relpath(s, ROOT) for s in _ext.sources(with_cuda)]
    if not sources:
        raise RuntimeError(f"LLR_BUILD_EXT=1 but no C++ sources under {_ext._CSRC}")
    flags = _ext.build_flags(with_cuda)
    Extension = CUDAExtension if with_cuda else CppExtension
    ext_modules = [
        Extension(
            "llr_kernels._C",
            sources,
            extra_compile_args={"cxx": flags["extra_cflags"], "nvcc": flags["extra_cuda_cflags"]},
            extra_link_args=flags["extra_ldflags"],
        )
    ]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
