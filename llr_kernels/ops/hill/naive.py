"""Pure-torch references of the Hill reductions (contracts of ``ops.hill.triton``): Eq. 2's threshold, l_max and
top log-sum from sorted eigenvalues (``hill_eigs``), and from SLQ's Gauss nodes (``hill_nodes``: the threshold
quantile and the top log-sum of the smoothed quadrature, with leave-one-group-out jackknife replicates)."""
from __future__ import annotations

import torch


def hill_eigs_torch(eigs: torch.Tensor, thr_idx: int, top: int) -> torch.Tensor:
    """(B, 3) [threshold, l_max, sum_{j >= top} ln(l_j / threshold)] from ascending eigenvalues (B, n)."""
    e = eigs.clamp_min(0)
    thr = e[:, thr_idx]
    safe = torch.where(thr > 0, thr, torch.ones_like(thr))
    logsum = torch.log(e[:, top:] / safe.unsqueeze(1)).sum(1)
    return torch.stack([thr, e[:, -1], logsum], 1)


def node_cells(nodes: torch.Tensor, weights: torch.Tensor, floor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Log-space cells for every node: (u, h, w), (B, P, s+1), each node's mass spread uniformly on
    [u-h, u+h]; the extra last slot per probe is the point mass of nodes at or below ``floor`` (numerically
    zero eigenvalues of rank-deficient Grams), kept out of everyone's cell widths.

    nodes/weights: (B, P, s); floor: (B,) largest eigenvalue still treated as zero.
    h_j = (gap_left + gap_right) / 4 (half an average gap; capped at the smaller gap so a cell never
    passes a neighbouring node; extreme nodes use their one gap), in ln space. Symmetric cells put the
    smoothed CDF at a node at C_{j-1} + w_j / 2, the midpoint of the Chebyshev-Markov-Stieltjes bracket
    [C_{j-1}, C_j] the true CDF must lie in, and spreading over about a node's spacing turns the pooled
    staircase into a continuous CDF. Interpolating pooled cumulative weights instead puts every probe's CDF at
    one end of that bracket: Ritz nodes of different probes sit at nearly the same places, so that bias is
    shared by all probes and more probes never remove it. Symmetric cells also keep the mean of ln(l) of
    each node, so the tail log-sum away from the threshold is exactly the Gauss rule.
    """
    fl = floor.view(-1, 1, 1)
    zero = nodes <= fl
    sig = (weights > 1e-12) & ~zero  # decoupled (post-breakdown) nodes carry no mass; zeros go to the extra slot
    u = torch.log(torch.maximum(nodes, fl))
    big = torch.finfo(u.dtype).max / 8
    u_key = torch.where(sig, u, torch.full_like(u, big))
    u_sorted, order = torch.sort(u_key, dim=-1)
    live = u_sorted < big
    w_sorted = torch.where(live, torch.gather(weights, -1, order), torch.zeros_like(u_sorted))
    gap = u_sorted.diff(dim=-1)
    pad = torch.zeros_like(u_sorted[..., :1], dtype=torch.bool)
    lf = torch.cat([pad, live[..., :-1]], -1) & live  # has a live left neighbour
    rf = torch.cat([live[..., 1:], pad], -1) & live
    left = torch.cat([torch.zeros_like(u_sorted[..., :1]), gap], -1)
    right = torch.cat([gap, torch.zeros_like(u_sorted[..., :1])], -1)
    left = torch.where(lf, left, torch.zeros_like(left))
    right = torch.where(rf, right, torch.zeros_like(right))
    both = lf & rf
    h = torch.where(both, torch.minimum(0.25 * (left + right), torch.minimum(left, right)), 0.5 * (left + right))
    tiny = 1e-9
    h = torch.where(lf | rf, h.clamp_min(tiny), torch.full_like(h, tiny))  # lone node -> point mass
    u_sorted = torch.where(live, u_sorted, torch.zeros_like(u_sorted))
    zmass = torch.where(zero, weights, torch.zeros_like(weights)).sum(-1, keepdim=True)
    u_all = torch.cat([u_sorted, torch.log(fl).expand_as(zmass)], -1)
    h_all = torch.cat([h, torch.full_like(zmass, tiny)], -1)
    w_all = torch.cat([w_sorted, zmass], -1)
    w_all = w_all / w_all.sum(-1, keepdim=True).clamp_min(1e-300)
    return u_all, h_all, w_all


def slq_hill_torch(
    nodes: torch.Tensor,
    weights: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    floor: torch.Tensor,
    groups: int,
    iters: int = 60,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold and top log-sum from Gauss nodes, for the full probe set and each leave-one-group-out set.

    nodes/weights: (B, P, s); n: (B,) matrix sizes; q: (B,) target CDF level of the threshold eigenvalue
    (e.g. (n - k - 1/2) / n for Eq. 2); floor: (B,); groups: number of jackknife probe groups (divides P).
    Returns (ln_thr (B, 1+G), logsum (B, 1+G), mass_at_floor (B,)), where logsum estimates
    sum over eigenvalues above the threshold of ln(l / thr) (the denominator of Eq. 2) and replicate 0
    uses all probes, replicate g the probes outside group g-1.
    """
    u, h, w = node_cells(nodes, weights, floor)
    bsz, probes, s = u.shape
    pg = probes // groups
    # replicate masks over probes: (R, P)
    gid = torch.arange(probes, device=u.device) // pg
    mask = torch.ones(groups + 1, probes, dtype=u.dtype, device=u.device)
    mask[1:] = (gid.view(1, -1) != torch.arange(groups, device=u.device).view(-1, 1)).to(u.dtype)
    mask = mask / mask.sum(1, keepdim=True)  # average over the replicate's probes
    wm = torch.einsum("rp,bps->brps", mask, w)  # (B, R, P, s)
    lo_c = (u - h).unsqueeze(1)
    width = (2 * h).unsqueeze(1)

    def cdf(x: torch.Tensor) -> torch.Tensor:  # x (B, R) in ln space
        frac = ((x.view(bsz, -1, 1, 1) - lo_c) / width).clamp(0, 1)
        return (wm * frac).sum((-1, -2))

    valid = w > 0
    lo = torch.where(valid, u - h, torch.full_like(u, float("inf"))).amin((-1, -2))
    hi = torch.where(valid, u + h, torch.full_like(u, -float("inf"))).amax((-1, -2))
    lo = lo.view(-1, 1).expand(bsz, groups + 1).clone()
    hi = hi.view(-1, 1).expand(bsz, groups + 1).clone()
    target = q.to(u.dtype).view(-1, 1)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    ut = 0.5 * (lo + hi)  # (B, R)
    # E[(U - ut)_+] for U uniform on [u-h, u+h]
    a = lo_c
    b = a + width
    x = ut.view(bsz, -1, 1, 1)
    part = torch.where(
        x <= a, u.unsqueeze(1) - x, torch.where(x >= b, torch.zeros_like(a), (b - x).square() / (2 * width))
    )
    logsum = (wm * part).sum((-1, -2)) * n.to(u.dtype).view(-1, 1)
    at_floor = (w * (u <= torch.log(floor).view(-1, 1, 1) + 1e-12).to(u.dtype)).sum(-1).mean(-1)
    return ut, logsum, at_floor
