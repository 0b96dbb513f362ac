// Batched Gauss quadrature of Lanczos tridiagonals on CUDA: one thread per tridiagonal running the shared
// implicit-QL routine of spectral.h in float64 (the matrices are small, s <= a few hundred, and there are
// layers x probes of them: thousands of independent latency-bound problems, which is what threads are for).
#include "spectral.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace llr {
namespace {

__global__ void tridiag_gauss_kernel(const double* __restrict__ alpha, const double* __restrict__ beta,
                                     double* __restrict__ nodes, double* __restrict__ weights,
                                     double* __restrict__ scratch, int64_t n, int64_t s) {
  int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= n) return;
  double* d = nodes + r * s;
  double* z = weights + r * s;
  double* e = scratch + r * s;
  for (int64_t i = 0; i < s; ++i) {
    d[i] = alpha[r * s + i];
    e[i] = (i + 1 < s) ? beta[r * (s - 1) + i] : 0.0;
  }
  tridiag_gauss(d, e, z, s);
}

}  // namespace

void tridiag_gauss_cuda(const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& nodes,
                        const at::Tensor& weights, const at::Tensor& scratch) {
  const c10::cuda::CUDAGuard guard(alpha.device());
  const int64_t n = alpha.size(0), s = alpha.size(1);
  if (n == 0) return;
  const int threads = 64;
  const int64_t blocks = (n + threads - 1) / threads;
  tridiag_gauss_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      alpha.data_ptr<double>(), beta.data_ptr<double>(), nodes.data_ptr<double>(), weights.data_ptr<double>(),
      scratch.data_ptr<double>(), n, s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace llr
