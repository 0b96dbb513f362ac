#!/usr/bin/env python3
"""Ahead-of-time GPU compile check, no GPU or driver needed: every Triton kernel and every CUDA source.

1. Discovers every ``@triton.jit`` function in the ``llr_kernels`` package and fails if one is neither the
   kernel of a launch variant nor listed in its module's ``JIT_HELPERS`` (see llr_kernels/ops/variants.py).
2. Compiles every variant from the modules' ``launch_variants()`` (the wrappers' own tables) for sm_90 and
   sm_80 with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` and prints registers,
   spills and shared memory (from the ptxas log Triton produces; fall-backs: ptxas -v on the PTX, then
   cuobjdump on the cubin). Fails on a compile error and on any spill of a ``default`` variant on sm_90
   (what the wrappers launch by default on H100/H200).
3. Compiles llr_kernels/csrc/*.cu to objects with nvcc for sm_90 with the flags torch.utils.cpp_extension would use;
   skips (never fails) where nvcc is absent.

Results are cached under ``$LLR_COMPILE_CHECK_CACHE`` (default ~/.cache/llr_kernels/compile_check), keyed by
a hash of the kernel source (Triton's cache key, which covers the helpers it calls), variant, target and
Triton version, and for nvcc by the sources, headers, flags and compiler version: a warm run takes seconds.
Integer arguments are compiled unspecialised and pointers as 16-byte aligned; the JIT's other
specialisations (an int equal to 1 becomes a constant, multiples of 16 get alignment hints) only simplify
the code.

Usage: python scripts/compile_check.py [--arch 90,80] [--jobs N] [--no-cache] [--skip-nvcc] [--list]
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRICT_ARCH = 90  # default variants must not spill here (H100/H200)


def _prepare_env() -> None:
    """Compile for real (never the interpreter), and keep Triton's GPU default of FMA contraction (3.6 and
    3.9 default to it; 3.9 warns when the variable is unset)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


# ----- discovery -------------------------------------------------------------------------------------
def is_jit_function(obj: Any) -> bool:
    """A @triton.jit function, compiled (JITFunction) or interpreted (TRITON_INTERPRET=1)."""
    from triton.runtime.jit import JITFunction

    if isinstance(obj, JITFunction):
        return True
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported Triton has it
        return False
    return isinstance(obj, InterpretedFunction)


def package_modules(package: str = "llr_kernels") -> list[Any]:
    """Every module of the package, imported (an import error is an error: it could hide kernels)."""
    pkg = importlib.import_module(package)
    mods = [pkg]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        mods.append(importlib.import_module(info.name))
    return mods


@dataclass
class Inventory:
    jit: dict[str, Any]  # "module:name" -> JIT function defined there
    variants: list[tuple[str, Any]]  # (module name, Variant)
    helpers: dict[str, Any]  # "module:name" -> JIT function listed in JIT_HELPERS


def _qualname(fn: Any) -> str:
    inner = getattr(fn, "fn", fn)
    return f"{inner.__module__}:{inner.__name__}"


def inventory(interpreted: bool = False, package: str = "llr_kernels") -> Inventory:
    """Every JIT function of the package, every launch variant, every declared helper."""
    jit, variants, helpers = {}, [], {}
    for mod in package_modules(package):
        for name, obj in vars(mod).items():
            if is_jit_function(obj) and getattr(obj, "fn", obj).__module__ == mod.__name__:
                jit[_qualname(obj)] = obj
        if hasattr(mod, "launch_variants"):
            variants += [(mod.__name__, v) for v in mod.launch_variants(interpreted=interpreted)]
        for h in getattr(mod, "JIT_HELPERS", ()):
            helpers[_qualname(h)] = h
    return Inventory(jit, variants, helpers)


def _source(fn: Any) -> str:
    return getattr(fn, "src", None) or inspect.getsource(getattr(fn, "fn", fn))


def coverage_problems(inv: Inventory) -> list[str]:
    """Kernels no variant covers, helpers no kernel calls, variants whose arguments do not match."""
    problems = []
    launched = {_qualname(v.kernel) for _, v in inv.variants}
    for q in sorted(inv.jit):
        if q not in launched and q not in inv.helpers:
            problems.append(f"{q}: @triton.jit function with no launch variant and not in its module's JIT_HELPERS")
    for q in sorted(set(inv.helpers) - set(inv.jit)):
        problems.append(f"{q}: listed in JIT_HELPERS but not a @triton.jit function of that module")
    # a helper must be reachable from some launched kernel (else it is a kernel in disguise, or dead code)
    reach, todo = set(), [inv.jit[q] for q in launched if q in inv.jit]
    while todo:
        src = _source(todo.pop())
        for q, h in inv.helpers.items():
            if q not in reach and re.search(rf"\b{re.escape(q.split(':')[1])}\s*\(", src):
                reach.add(q)
                todo.append(h)
    for q in sorted(set(inv.helpers) - reach - launched):
        problems.append(f"{q}: listed in JIT_HELPERS but no launched kernel calls it")
    for mod, v in inv.variants:
        names = list(getattr(v.kernel, "arg_names", []))
        const = _constexpr_names(v.kernel)
        given = set(v.signature) | set(v.constexprs)
        if set(names) != given:
            problems.append(f"{v.name} ({mod}): variant arguments {sorted(given ^ set(names))} do not match the "
                            f"kernel's ({names}); update the module's launch table")
        elif const is not None and set(v.constexprs) != const:
            problems.append(f"{v.name} ({mod}): constexprs {sorted(v.constexprs)} but the kernel declares "
                            f"{sorted(const)} as tl.constexpr")
    return problems


def _constexpr_names(kernel: Any) -> set[str] | None:
    params = getattr(kernel, "params", None)
    if params is not None:  # JITFunction
        return {p.name for p in params if p.is_constexpr}
    fn = getattr(kernel, "fn", None)
    if fn is None:
        return None
    return {n for n, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}


# ----- Triton compiles -------------------------------------------------------------------------------
_PROC_VARIANTS: dict[str, list] = {}


def _variant(module: str, index: int) -> Any:
    if module not in _PROC_VARIANTS:
        _PROC_VARIANTS[module] = importlib.import_module(module).launch_variants(interpreted=False)
    return _PROC_VARIANTS[module][index]


def variant_key(v: Any, arch: int) -> str:
    import triton

    blob = json.dumps([triton.__version__, _source_hash(v.kernel), v.signature, {k: str(x) for k, x in v.constexprs.items()},
                       v.num_warps, v.num_stages, arch, os.environ.get("TRITON_DEFAULT_FP_FUSION")])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _source_hash(kernel: Any) -> str:
    return getattr(kernel, "cache_key", None) or hashlib.sha256(_source(kernel).encode()).hexdigest()


_LOG_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_store": re.compile(r"(\d+) bytes spill stores"),
    "spill_load": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def parse_ptxas_log(log: str) -> dict[str, int] | None:
    out = {}
    for k, rx in _LOG_RE.items():
        m = rx.search(log)
        if m is None:
            return None
        out[k] = int(m.group(1))
    return out


def _resources_fallback(ck: Any, arch: int) -> tuple[dict[str, int] | None, str]:
    """ptxas -v on the PTX (Triton's own ptxas), else cuobjdump --dump-resource-usage on the cubin."""
    from triton.backends.nvidia import compiler as nv

    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(ck.asm["ptx"])
        try:
            ptxas = nv.get_ptxas(arch).path if "arch" in inspect.signature(nv.get_ptxas).parameters else nv.get_ptxas().path
            r = subprocess.run([ptxas, "-v", f"--gpu-name={nv.sm_arch_from_capability(arch)}", ptx, "-o",
                                os.path.join(d, "k.o")], capture_output=True, text=True, timeout=300)
            res = parse_ptxas_log(r.stderr)
            if res is not None:
                return res, "ptxas -v"
        except Exception:  # noqa: BLE001 - try the next source
            pass
        tools = [os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")] + glob.glob("/usr/local/cuda*/bin/cuobjdump")
        cubin = os.path.join(d, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(ck.asm["cubin"])
        for tool in tools:
            if not os.path.exists(tool):
                continue
            r = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True, text=True)
            m = re.search(r"REG:(\d+)\s+STACK:(\d+)", r.stdout)
            if m:  # no spill counts here: a stack frame in a Triton kernel means spills
                stack = int(m.group(2))
                return {"regs": int(m.group(1)), "spill_store": stack, "spill_load": stack, "stack": stack}, "cuobjdump"
    return None, "none"


def compile_one(module: str, index: int, arch: int) -> dict:
    """Compile one variant for sm_<arch>; returns its resources or its error (runs in a worker process)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    v = _variant(module, index)
    names = list(v.kernel.arg_names)
    signature = {n: (v.signature[n] if n in v.signature else "constexpr") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in v.signature.items() if t.startswith("*")}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        from triton import knobs

        knobs.nvidia.dump_ptxas_log = True  # Triton already runs ptxas -v; print its log so we can read it
    except (ImportError, AttributeError):
        pass
    try:
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(v.kernel, signature, dict(v.constexprs), attrs),
                                target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": v.num_warps, "num_stages": v.num_stages})
    except Exception as exc:  # noqa: BLE001 - reported as a failure of this variant
        msg = f"{type(exc).__name__}: {exc}".strip()
        return {"ok": False, "error": msg[-3000:], "seconds": time.perf_counter() - t0}
    res, source = parse_ptxas_log(log.getvalue()), "ptxas log"
    if res is None:
        res, source = _resources_fallback(ck, arch)
    meta = ck.metadata
    smem = meta.get("shared", 0) if isinstance(meta, dict) else getattr(meta, "shared", 0)
    out = {"ok": True, "smem": int(smem), "source": source, "seconds": time.perf_counter() - t0,
           "fma_f32": ck.asm["ptx"].count("fma.rn.f32"), "cubin_bytes": len(ck.asm["cubin"])}
    out.update(res or {})
    return out


# ----- nvcc ------------------------------------------------------------------------------------------
def find_cuda_home() -> str | None:
    """CUDA_HOME / CUDA_PATH, else the newest /usr/local/cuda-*, else the parent of the nvcc on PATH."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    cands += sorted(glob.glob("/usr/local/cuda-*"), key=_version_key, reverse=True) + ["/usr/local/cuda"]
    which = shutil.which("nvcc")
    if which:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(which))))
    for c in cands:
        if c and os.path.exists(os.path.join(c, "bin", "nvcc")) and os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


def _version_key(path: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", os.path.basename(path)))


def nvcc_command_template(cuda_home: str, arch: int, tmp: str) -> tuple[list[str], list[str]]:
    """(flags before `-c src -o obj`, flags after) exactly as torch.utils.cpp_extension's ninja build would
    pass them for this extension (llr_kernels/ops/extension.py build_flags(True)), for one sm_<arch>."""
    import torch.utils.cpp_extension as ce

    from llr_kernels.ops import extension as _ext

    flags = _ext.build_flags(True)
    old_home, old_arch = ce.CUDA_HOME, os.environ.get("TORCH_CUDA_ARCH_LIST")
    ce.CUDA_HOME = cuda_home
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{arch // 10}.{arch % 10}"
    try:
        fn = ce._write_ninja_file_to_build_library
        kw = dict(path=os.path.join(tmp, "build.ninja"), name="llr_kernels_C_check", sources=_ext.sources(True),
                  extra_cflags=flags["extra_cflags"], extra_cuda_cflags=flags["extra_cuda_cflags"],
                  extra_sycl_cflags=[], extra_ldflags=flags["extra_ldflags"], extra_include_paths=[],
                  with_cuda=True, with_sycl=False, is_standalone=False)
        params = inspect.signature(fn).parameters
        fn(**{k: v for k, v in kw.items() if k in params})
        ninja = open(kw["path"]).read()
    finally:
        ce.CUDA_HOME = old_home
        if old_arch is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch

    def var(name: str) -> list[str]:
        m = re.search(rf"^{name} = (.*)$", ninja, re.M)
        return shlex.split(m.group(1)) if m else []

    pre, post = var("cuda_cflags"), var("cuda_post_cflags")
    if not pre:
        raise RuntimeError("torch's ninja file has no cuda_cflags line (torch.utils.cpp_extension changed)")
    return pre, post


def cmake_macros_dir(tmp: str) -> list[str]:
    """A CPU torch wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h: provide it (-I dir)."""
    from torch.utils.cpp_extension import include_paths

    if any(os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in include_paths()):
        return []
    d = os.path.join(tmp, "include", "c10", "cuda", "impl")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "cuda_cmake_macros.h"), "w") as f:
        f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return ["-I" + os.path.join(tmp, "include")]


# ----- the check -------------------------------------------------------------------------------------
def _cache_dir(arg: str | None) -> str:
    d = arg or os.environ.get("LLR_COMPILE_CHECK_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "llr_kernels", "compile_check")
    os.makedirs(d, exist_ok=True)
    return d


def _load(cache: str | None, key: str) -> dict | None:
    if cache is None:
        return None
    try:
        with open(os.path.join(cache, key + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _store(cache: str | None, key: str, value: dict) -> None:
    if cache is None or not value.get("ok"):
        return  # failures are never cached: they are retried on every run
    tmp = os.path.join(cache, f".{key}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, os.path.join(cache, key + ".json"))


def _start_nvcc(args, cache: str | None, tmp: str) -> list[dict]:
    """Start one nvcc per csrc/*.cu (or report cached / skipped); returns job records."""
    srcs = sorted(glob.glob(os.path.join(ROOT, "llr_kernels", "csrc", "*.cu")))
    home = find_cuda_home()
    if args.skip_nvcc or not srcs:
        print("nvcc: skipped" + (" (--skip-nvcc)" if args.skip_nvcc else " (no csrc/*.cu)"))
        return []
    if home is None:
        print("nvcc: not found (no CUDA_HOME, /usr/local/cuda*, or nvcc on PATH): skipping the CUDA sources")
        return []
    nvcc = os.path.join(home, "bin", "nvcc")
    try:
        pre, post = nvcc_command_template(home, STRICT_ARCH, tmp)
    except Exception as exc:  # noqa: BLE001 - the flags are torch internals: fail loudly, they matter
        return [{"src": "csrc/*.cu", "error": f"could not get torch's nvcc flags: {type(exc).__name__}: {exc}"}]
    pre = cmake_macros_dir(tmp) + pre
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1:]
    headers = "".join(open(h).read() for h in sorted(glob.glob(os.path.join(ROOT, "llr_kernels", "csrc", "*.h"))))
    import torch

    jobs = []
    for src in srcs:
        flags = [f.replace(tmp, "<tmp>") for f in pre + post]  # the temp include dir changes every run
        blob = json.dumps([version, flags, open(src).read(), headers, torch.__version__])
        key = "nvcc-" + hashlib.sha256(blob.encode()).hexdigest()[:32]
        rel = os.path.relpath(src, ROOT)
        hit = None if args.no_cache else _load(cache, key)
        if hit is not None:
            jobs.append({"src": rel, "key": key, "result": hit, "cached": True})
            continue
        obj = os.path.join(tmp, os.path.basename(src) + ".o")
        cmd = [nvcc] + pre + ["-c", src, "-o", obj] + post
        log = open(os.path.join(tmp, os.path.basename(src) + ".log"), "w+")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        jobs.append({"src": rel, "key": key, "proc": proc, "log": log, "cmd": cmd, "t0": time.perf_counter(),
                     "cached": False})
    print(f"nvcc: {os.path.relpath(nvcc) if nvcc.startswith(ROOT) else nvcc} ({' '.join(version)}), sm_{STRICT_ARCH}, "
          f"{len(jobs)} source(s), {sum(not j['cached'] for j in jobs)} to compile")
    return jobs


def _finish_nvcc(jobs: list[dict], cache: str | None) -> list[str]:
    failures = []
    for j in jobs:
        if "error" in j:
            failures.append(j["error"])
            print(f"  {j['src']}: FAILED: {j['error']}")
            continue
        if not j["cached"]:
            rc = j["proc"].wait()
            j["log"].seek(0)
            out = j["log"].read()
            j["result"] = {"ok": rc == 0, "seconds": time.perf_counter() - j["t0"], "warnings": out.count("warning")}
            if rc != 0:
                failures.append(f"{j['src']}: nvcc exit {rc}")
                print(f"  {j['src']}: FAILED (exit {rc})\n    command: {shlex.join(j['cmd'])}\n{out[-4000:]}")
                continue
            _store(cache, j["key"], j["result"])
        r = j["result"]
        print(f"  {j['src']}: ok ({r['seconds']:.0f} s{', cached' if j['cached'] else ''}"
              f"{', %d warning lines' % r['warnings'] if r.get('warnings') else ''})")
    return failures


def _compact_labels(variants: list[Any]) -> dict[int, str]:
    """Per kernel, only the constexprs that differ between its variants (the rest are printed once)."""
    from llr_kernels.ops.variants import _short

    by_kernel: dict[str, list[int]] = {}
    for i, v in enumerate(variants):
        by_kernel.setdefault(v.name, []).append(i)
    out = {}
    for ids in by_kernel.values():
        keys = [k for k in variants[ids[0]].constexprs if len({str(variants[i].constexprs.get(k)) for i in ids}) > 1]
        for i in ids:
            v = variants[i]
            parts = [f"{k}={_short(v.constexprs[k])}" for k in keys]
            if len({variants[j].num_warps for j in ids}) > 1:
                parts.append(f"warps={v.num_warps}")
            if v.note:
                parts.append(v.note)
            out[i] = " ".join(parts) or "(one variant)"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="90,80", help="comma-separated compute capabilities (default 90,80)")
    ap.add_argument("--jobs", type=int, default=0, help="parallel Triton compiles (default: CPU count)")
    ap.add_argument("--no-cache", action="store_true", help="ignore cached results (still writes them)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--skip-nvcc", action="store_true")
    ap.add_argument("--list", action="store_true", help="discovery and variant list only, no compiles")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    _prepare_env()
    import triton

    archs = [int(a) for a in args.arch.split(",") if a.strip()]
    cache = _cache_dir(args.cache_dir)
    inv = inventory(interpreted=False)
    problems = coverage_problems(inv)
    variants = [v for _, v in inv.variants]
    kernels = sorted({v.name for v in variants})
    print(f"triton {triton.__version__}: {len(inv.jit)} @triton.jit functions in llr_kernels: {len(kernels)} kernels "
          f"({len(variants)} launch variants), {len(inv.helpers)} helpers called from kernels "
          f"({', '.join(sorted(q.split(':')[1] for q in inv.helpers))})")
    for p in problems:
        print(f"COVERAGE: {p}")
    if args.list:
        labels = _compact_labels(variants)
        for i, (mod, v) in enumerate(inv.variants):
            print(f"  {v.name:24s} {labels[i]}{'' if v.default else '  [non-default]'}")
        return 1 if problems else 0

    with tempfile.TemporaryDirectory(prefix="llr_compile_check_") as tmp:
        nvcc_jobs = _start_nvcc(args, cache, tmp)
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(tmp, "triton"))  # ours is the cache that counts
        index_in_module: dict[str, int] = {}
        jobs = []
        for mod, v in inv.variants:
            i = index_in_module.get(mod, 0)
            index_in_module[mod] = i + 1
            for arch in archs:
                key = variant_key(v, arch)
                jobs.append({"mod": mod, "index": i, "variant": v, "arch": arch, "key": key,
                             "result": None if args.no_cache else _load(cache, key)})
        todo = [j for j in jobs if j["result"] is None]
        for j in jobs:
            j["cached"] = j["result"] is not None
        workers = args.jobs or len(os.sched_getaffinity(0))
        t_tr = time.perf_counter()
        if todo:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))),
                                     mp_context=mp.get_context("fork")) as pool:
                futs = [pool.submit(compile_one, j["mod"], j["index"], j["arch"]) for j in todo]
                for j, f in zip(todo, futs):
                    j["result"] = f.result()
                    _store(cache, j["key"], j["result"])
        t_tr = time.perf_counter() - t_tr

        # report
        labels = _compact_labels(variants)
        vid = {id(v): i for i, v in enumerate(variants)}
        failures, spills = [], []
        print(f"\nTriton: {len(jobs)} compiles ({len(todo)} new, {len(jobs) - len(todo)} cached) in {t_tr:.1f} s")
        print(f"{'sm':>3} {'kernel':24s} {'variant':44s} {'regs':>4} {'spill st/ld B':>13} {'smem B':>7}  note")
        for j in sorted(jobs, key=lambda j: (-j["arch"], j["variant"].name, vid[id(j["variant"])])):
            v, r, arch = j["variant"], j["result"], j["arch"]
            label = labels[vid[id(v)]]
            if not r["ok"]:
                failures.append(f"sm_{arch} {v.name} [{label}]: {r['error']}")
                print(f"{arch:>3} {v.name:24s} {label:44s} COMPILE ERROR")
                continue
            st, ld = r.get("spill_store", -1), r.get("spill_load", -1)
            note = "" if v.default else "non-default"
            if st > 0 or ld > 0:
                if v.default and arch == STRICT_ARCH:
                    spills.append(f"sm_{arch} {v.name} [{label}]: {st} B spill stores, {ld} B spill loads")
                    note = "SPILLS (default variant)"
                else:
                    note = (note + ", " if note else "") + "spills"
            print(f"{arch:>3} {v.name:24s} {label:44s} {r.get('regs', -1):>4} {f'{st}/{ld}':>13} {r['smem']:>7}  {note}")
        for f in failures:
            print(f"\nCOMPILE ERROR {f}")
        for s in spills:
            print(f"SPILL {s}")
        nvcc_failures = []
        if nvcc_jobs:
            print("\nCUDA sources (nvcc -c, object only):")
            nvcc_failures = _finish_nvcc(nvcc_jobs, cache)

    bad = len(problems) + len(failures) + len(spills) + len(nvcc_failures)
    print(f"\ncompile check: {'FAILED' if bad else 'ok'}: {len(problems)} coverage problems, {len(failures)} compile "
          f"errors, {len(spills)} spilling default variants on sm_{STRICT_ARCH}, {len(nvcc_failures)} nvcc failures "
          f"({time.perf_counter() - t_start:.1f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
