"""Spectral metrics of weight matrices: Gram/ESD helpers and the PL_Alpha_Hill estimator."""
from .hill import (
    DEFAULT_MIN_EIGS,
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    HillResult,
    esd,
    gram,
    hill_alpha,
    hill_from_eigenvalues,
)

__all__ = [
    "DEFAULT_MIN_EIGS",
    "HillResult",
    "STATUS_FLAT",
    "STATUS_NON_FINITE",
    "STATUS_OK",
    "STATUS_RANK_DEFICIENT",
    "STATUS_TOO_FEW",
    "STATUS_ZERO",
    "esd",
    "gram",
    "hill_alpha",
    "hill_from_eigenvalues",
]
