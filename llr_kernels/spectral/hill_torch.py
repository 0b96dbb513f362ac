"""Pure-torch reference of the Hill log-ratio reduction from eigenvalues (contract of
``hill_triton.hill_eigs_triton``)."""
from __future__ import annotations

import torch


def hill_eigs_torch(eigs: torch.Tensor, thr_idx: int, top: int) -> torch.Tensor:
    """(B, 3) [threshold, l_max, sum_{j >= top} ln(l_j / threshold)] from ascending eigenvalues (B, n)."""
    e = eigs.clamp_min(0)
    thr = e[:, thr_idx]
    safe = torch.where(thr > 0, thr, torch.ones_like(thr))
    logsum = torch.log(e[:, top:] / safe.unsqueeze(1)).sum(1)
    return torch.stack([thr, e[:, -1], logsum], 1)
