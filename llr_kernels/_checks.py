"""Argument checks shared by the optimizers and the LLR policy, run at construction.

A wrong type raises TypeError, a value out of range ValueError; every message names the argument, says what
it must be and shows what was given, so a typo fails before the first step instead of inside a kernel.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch


def _given(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_real(value: Any) -> bool:
    """A real number that is not a bool (ints, floats, numpy scalars)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_real(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
    tensor_ok: bool = False,
) -> float:
    """``value`` as a float, if it is a finite real number in the given range; ``hint`` ends the message."""
    if tensor_ok and isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(f"{name} must be a number or a 1-element floating-point tensor, got shape {tuple(value.shape)} {value.dtype}")
        v = float(value.detach().cpu())
    elif is_real(value):
        v = float(value)
    else:
        raise TypeError(f"{name} must be a real number{hint}, got {_given(value)}")
    lo_ok = lo is None or (v > lo if lo_open else v >= lo)
    hi_ok = hi is None or (v < hi if hi_open else v <= hi)
    if not (math.isfinite(v) and lo_ok and hi_ok):
        if lo is not None and hi is not None:
            rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            rng = f"{'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            rng = f"{'<' if hi_open else '<='} {hi:g}"
        else:
            rng = "finite"
        raise ValueError(f"{name} must be {rng}{hint}, got {value!r}")
    return v


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, *, hint: str = "") -> int:
    """``value`` as an int, if it is an integer (not a bool, not a float) in [lo, hi]."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer{hint}, got {_given(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ValueError(f"{name} must be {rng}{hint}, got {value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy.bool_ too
        raise TypeError(f"{name} must be True or False, got {_given(value)}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[Any], *, hint: str = "") -> Any:
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}{hint}, got {value!r}")
    return value


def check_betas(name: str, betas: Any) -> tuple[float, float]:
    """A pair (beta1, beta2) of reals in [0, 1)."""
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {_given(betas)}")
    return (
        check_real(f"{name}[0]", betas[0], 0.0, 1.0, hi_open=True, hint=" (first-moment decay)"),
        check_real(f"{name}[1]", betas[1], 0.0, 1.0, hi_open=True, hint=" (second-moment decay)"),
    )
