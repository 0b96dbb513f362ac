"""Batched exact eigenvalues on CUDA (csrc/spectral_eig_cuda.cu: one cusolverDnXsyevBatched call for all same-n
Grams) against float64 numpy, and the CUDA exact path of ``hill_alpha_fast`` through it. Needs a CUDA device
(skipped otherwise) and cuSOLVER >= 11.7 (CUDA 12.6u2) for the batched op itself; without it the "cpp" eigvalsh
falls back to torch.linalg.eigvalsh, which the last test checks too."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def batched_reason():
    from llr_kernels.ops.eig.cpp import eigvalsh_batched_cuda_reason

    return eigvalsh_batched_cuda_reason()


def grams(bsz: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(bsz, n, 2 * n + 3, generator=g, dtype=torch.float64)
    w[0] *= torch.linspace(0.1, 3.0, 2 * n + 3, dtype=torch.float64)  # a spread-out spectrum
    return w @ w.transpose(1, 2)


@pytest.mark.parametrize("n", [40, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_cusolver_eigvalsh_matches_numpy(n, dtype):
    why = batched_reason()
    if why is not None:
        pytest.skip(f"batched cuSOLVER op unavailable: {why}")
    from llr_kernels.ops import extension as _ext

    mod = _ext.load_extension()
    g = grams(5, n, seed=n)
    ref = np.linalg.eigvalsh(g.numpy())
    # only the lower triangle is read (the Gram kernels write only it): poison the strict upper one
    gd = g.to("cuda", dtype).tril() + torch.triu(torch.full_like(g, 1e30, dtype=dtype, device="cuda"), 1)
    e = mod.eigvalsh_batched_cuda(gd, dtype)
    assert e.dtype == dtype and e.shape == (5, n) and e.is_cuda
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    scale = ref[:, -1:]
    np.testing.assert_allclose(e.double().cpu().numpy() / scale, ref / scale, atol=tol * n)
    assert torch.equal(gd.tril(), (g.to("cuda", dtype).tril()))  # the input is not overwritten


def test_cuda_exact_alphas_through_dispatch_match_float64():
    """hill_alpha_fast(method="exact") on CUDA (Gram -> "eigvalsh" op: the batched cuSOLVER call where available,
    else torch's per-matrix loop) gives float64 Eq. 2 within 1e-5."""
    from reference import alpha_np, power_law_matrix

    from llr_kernels.spectral.batched import hill_alpha_fast

    mats = [power_law_matrix(256, 688, e, seed=i) for i, e in enumerate((2.5, 3.0, 4.0))]
    mats.append(torch.randn(256, 688, generator=torch.Generator().manual_seed(9)))
    ref = np.array([alpha_np(w) for w in mats])
    r = hill_alpha_fast([w.cuda() for w in mats], method="exact")
    assert r.status == ["ok"] * 4
    np.testing.assert_allclose(r.alpha.numpy(), ref, rtol=1e-5)


def test_batches_past_the_solver_limit_are_split(monkeypatch):
    """cusolverDnXsyevBatched indexes with int32 (n * n * batch < 2^31): a larger batch once came back wrong for
    every matrix at n = 4096. eigvalsh_cpp splits it; shrinking the limit makes a 7-matrix batch take 3 calls."""
    why = batched_reason()
    if why is not None:
        pytest.skip(f"batched cuSOLVER op unavailable: {why}")
    import llr_kernels.ops.eig.cpp as tc

    g = grams(7, 24, seed=5)
    monkeypatch.setattr(tc, "SYEV_BATCHED_MAX_ELEMENTS", 3 * 24 * 24)
    e = tc.eigvalsh_cpp(g.to("cuda", torch.float64).tril(), torch.float64)
    np.testing.assert_allclose(e.cpu().numpy(), np.linalg.eigvalsh(g.numpy()), rtol=0, atol=1e-10 * float(g.abs().max()))


def test_lanczos_on_cuda_matches_the_cpu_run():
    """SLQ on CUDA draws its probes on the host from the same seed (a CUDA generator once broke every lanczos
    and auto call on a GPU): the alphas equal the CPU run's up to float32 rounding."""
    from reference import power_law_matrix

    from llr_kernels.spectral.batched import hill_alpha_fast

    mats = [power_law_matrix(300, 500, e, seed=i) for i, e in enumerate((2.5, 3.5))]
    kw = dict(method="lanczos", probes=8, steps=40, backend="torch", tf32=False)
    cpu = hill_alpha_fast(mats, **kw)
    gpu = hill_alpha_fast([w.cuda() for w in mats], **kw)
    assert gpu.status == cpu.status == ["ok", "ok"]
    np.testing.assert_allclose(gpu.alpha.numpy(), cpu.alpha.numpy(), rtol=1e-3)
