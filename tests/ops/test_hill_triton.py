"""The Hill-from-Gauss-nodes kernel when a layer's cells do not fit one lane block (the streamed passes).

On GPU the kernel takes at most 1024 cells per piece (the default 32 probes x 129 cells is 5 pieces); the
interpreter takes a whole layer at once. Forcing small blocks here runs the multi-piece path on CPU too,
against the float64 torch reference (``lanczos.slq_hill_torch``).
"""
import numpy as np
import pytest
import torch

from conftest import needs, triton_launch_missing
from llr_kernels.spectral.rules import hill_params
from llr_kernels.ops.eig.naive import tridiag_eig_torch
from llr_kernels.ops.hill.naive import slq_hill_torch
from llr_kernels.ops.lanczos.naive import lanczos_torch, rademacher_probes

needs_triton = needs(triton_launch_missing(), "Triton launches")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _nodes(seed: int, layers: int, n: int, probes: int, steps: int):
    """Gauss nodes / weights of Grams of random matrices with power-law singular values (heavy tails)."""
    rng = np.random.default_rng(seed)
    grams = []
    for i in range(layers):
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((2 * n, n)))
        s = (1.0 + np.arange(n)) ** -(0.5 + 0.3 * i)
        w = (u * s) @ v.T
        grams.append(w @ w.T)
    g = torch.from_numpy(np.stack(grams)).to(DEV)
    v0 = rademacher_probes(layers, probes, n, device=DEV, dtype=torch.float64,
                           generator=torch.Generator(device=DEV).manual_seed(seed))
    nodes, weights = tridiag_eig_torch(*lanczos_torch(g, v0, steps))
    q = torch.full((layers,), hill_params(n, "paper")[3], dtype=torch.float64, device=DEV)
    floor = nodes.amax((-1, -2)) * n * 1e-15
    return nodes, weights, torch.full((layers,), float(n), dtype=torch.float64, device=DEV), q, floor


@needs_triton
@pytest.mark.parametrize("max_block", [32, 64])  # 168 cells: 6 and 3 pieces
def test_streamed_pieces_match_float64_reference(max_block):
    from llr_kernels.ops.hill.triton import hill_nodes_triton

    nodes, weights, n, q, floor = _nodes(11, layers=2, n=80, probes=8, steps=20)  # 8 x 21 = 168 cells
    ut_r, ls_r, af_r = slq_hill_torch(nodes, weights, n, q, floor, groups=2)
    ut_t, ls_t, af_t = hill_nodes_triton(nodes, weights, n, q, floor, groups=2, max_block=max_block)
    assert ut_t.shape == ut_r.shape == (2, 3)
    np.testing.assert_allclose(ut_t.cpu().numpy(), ut_r.cpu().numpy(), atol=2e-4)
    np.testing.assert_allclose(ls_t.cpu().numpy(), ls_r.cpu().numpy(), rtol=2e-4)
    torch.testing.assert_close(af_t, af_r)


@needs_triton
def test_max_block_is_validated():
    from llr_kernels.ops.hill.triton import hill_nodes_triton

    nodes, weights, n, q, floor = _nodes(12, layers=1, n=40, probes=4, steps=8)
    with pytest.raises(ValueError, match="max_block must be a power of two"):
        hill_nodes_triton(nodes, weights, n, q, floor, groups=2, max_block=48)
    with pytest.raises(ValueError, match="max_block must be a power of two"):
        hill_nodes_triton(nodes, weights, n, q, floor, groups=2, max_block=8)
