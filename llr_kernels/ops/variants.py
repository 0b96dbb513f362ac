"""What each Triton kernel can be launched with, as data: the tables that scripts/compile_check.py compiles.

Every module that defines ``@triton.jit`` kernels exposes

* ``launch_variants(interpreted: bool = False) -> list[Variant]``: one entry per distinct compilation its
  wrappers can launch (dtypes, constexpr flags, block sizes, num_warps), built from the same module-level
  tables and helper functions the wrappers call, so a new dtype or flag reaches the compile check by itself;
* ``JIT_HELPERS``: the ``@triton.jit`` functions that are only called from kernels (never launched).

The compile check fails on a kernel that no variant covers, on a variant whose arguments do not match the
kernel's, on any compile error, and on a spilling ``default`` variant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One compilation of one kernel, as a wrapper launches it."""

    kernel: Any  # the @triton.jit function (JITFunction, or InterpretedFunction under TRITON_INTERPRET=1)
    signature: dict[str, str]  # every runtime argument -> Triton type: "*fp32", "*i64", "i32", "fp32", ...
    constexprs: dict[str, Any] = field(default_factory=dict)  # every tl.constexpr argument -> value
    num_warps: int = 4
    num_stages: int = 3
    # Reached with the wrappers' default arguments on H100/H200: must not spill registers. Non-default
    # variants (opt-in block sizes) are compiled and reported, and may spill.
    default: bool = True
    note: str = ""  # what else tells this variant apart (e.g. a pointer's element type)

    @property
    def name(self) -> str:
        return getattr(self.kernel, "__name__", repr(self.kernel))

    def label(self) -> str:
        """Short, stable text naming the variant: constexprs in order, num_warps, note."""
        parts = [f"{k}={_short(v)}" for k, v in self.constexprs.items()]
        parts.append(f"warps={self.num_warps}")
        if self.note:
            parts.append(self.note)
        return " ".join(parts)


def _short(v: Any) -> str:
    s = str(v).replace("triton.language.", "")
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64"}.get(s, s)
