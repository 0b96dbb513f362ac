"""Spectral metrics of weight matrices: PL_Alpha_Hill (``hill_alpha``, the front door), the other HT-SR layer
metrics (``metrics``), power-law fits (``fits``) and the eigenvalues they read (``esd``).

Layout: ``rules`` (the shared rules and the status vocabulary) <- ``esd`` / ``reference`` (the float64 reference)
<- ``cost``, ``exact``, ``slq``, ``target`` (the batched path's cost model and passes) <- ``batched``
(``hill_alpha_fast``) <- ``hill`` (``hill_alpha``). Kernels live in ``llr_kernels.ops``.
"""
from .batched import hill_alpha_fast
from .esd import batched_eigenvalues, esd
from .fits import FIT_METHODS, FitResult, fit_esds, fit_power_law
from .hill import hill_alpha
from .metrics import METRICS, MetricsResult, frobenius, layer_metrics, measure
from .reference import hill_from_eigenvalues
from .rules import (
    DEFAULT_ALPHA_MAX,
    DEFAULT_MIN_EIGS,
    OK_STATUSES,
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_OK_RANK_DEFICIENT,
    STATUS_OUT_OF_RANGE,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    HillResult,
    gram,
    noise_level,
)

__all__ = [
    "FIT_METHODS",
    "METRICS",
    "FitResult",
    "MetricsResult",
    "batched_eigenvalues",
    "fit_esds",
    "fit_power_law",
    "frobenius",
    "layer_metrics",
    "measure",
    "DEFAULT_ALPHA_MAX",
    "DEFAULT_MIN_EIGS",
    "HillResult",
    "OK_STATUSES",
    "STATUS_FLAT",
    "STATUS_NON_FINITE",
    "STATUS_OK",
    "STATUS_OK_RANK_DEFICIENT",
    "STATUS_OUT_OF_RANGE",
    "STATUS_RANK_DEFICIENT",
    "STATUS_TOO_FEW",
    "STATUS_ZERO",
    "esd",
    "gram",
    "hill_alpha",
    "hill_alpha_fast",
    "hill_from_eigenvalues",
    "noise_level",
]
