"""Spectral metrics of weight matrices: Gram/ESD helpers, the PL_Alpha_Hill estimator, other layer metrics
(``metrics``) and power-law fits (``fits``)."""
from .hill import (
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
    esd,
    gram,
    hill_alpha,
    hill_from_eigenvalues,
    noise_level,
)
from .esd import batched_eigenvalues
from .fits import FIT_METHODS, FitResult, fit_esds, fit_power_law
from .metrics import METRICS, MetricsResult, frobenius, layer_metrics, measure

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
    "hill_from_eigenvalues",
    "noise_level",
]
