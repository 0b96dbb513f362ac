// Gauss quadrature from Lanczos tridiagonals (Golub-Welsch): eigenvalues and squared first eigenvector
// components of many small symmetric tridiagonal matrices. Shared by spectral_cpu.cpp (one OpenMP task per
// matrix) and spectral_cuda.cu (one thread per matrix): implicit QL with Wilkinson-type shifts that rotates
// only the first row of the eigenvector matrix, O(s^2) per matrix instead of O(s^3) for a dense eigh.
#pragma once

#include <ATen/ATen.h>

#include <math.h>
#include <stdint.h>

#include <string>

#if defined(__CUDACC__)
#define LLR_HD __host__ __device__
#else
#define LLR_HD
#endif

namespace llr {

// d: diagonal (s), e: off-diagonal (e[i] couples i and i+1, e[s-1] ignored), z: out first-row components.
// On return d holds the eigenvalues and z the first components, both sorted by ascending eigenvalue.
// Returns false if some eigenvalue did not converge in max_iter sweeps (results then approximate).
LLR_HD inline bool tridiag_gauss(double* d, double* e, double* z, int64_t s, int max_iter = 60) {
  bool ok = true;
  for (int64_t i = 0; i < s; ++i) z[i] = (i == 0) ? 1.0 : 0.0;
  if (s > 0) e[s - 1] = 0.0;
  const double eps = 2.220446049250313e-16;
  for (int64_t l = 0; l < s; ++l) {
    int iter = 0;
    int64_t m;
    do {
      for (m = l; m < s - 1; ++m) {  // find a negligible off-diagonal: the block l..m is unreduced
        double dd = fabs(d[m]) + fabs(d[m + 1]);
        if (fabs(e[m]) <= eps * dd) break;
      }
      if (m == l) break;
      if (iter++ == max_iter) {
        ok = false;
        break;
      }
      double g = (d[l + 1] - d[l]) / (2.0 * e[l]);  // shift from the trailing 2x2 of the block's top
      double r = hypot(g, 1.0);
      g = d[m] - d[l] + e[l] / (g + copysign(r, g));
      double sn = 1.0, cs = 1.0, p = 0.0;
      int64_t i;
      bool underflow = false;
      for (i = m - 1; i >= l; --i) {  // chase the bulge upwards with Givens rotations
        double f = sn * e[i];
        double b = cs * e[i];
        r = hypot(f, g);
        e[i + 1] = r;
        if (r == 0.0) {
          d[i + 1] -= p;
          e[m] = 0.0;
          underflow = true;
          break;
        }
        sn = f / r;
        cs = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * sn + 2.0 * cs * b;
        p = sn * r;
        d[i + 1] = g + p;
        g = cs * r - b;
        double zf = z[i + 1];  // the same rotation on the first row of the eigenvector matrix
        z[i + 1] = sn * z[i] + cs * zf;
        z[i] = cs * z[i] - sn * zf;
      }
      if (underflow) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0.0;
    } while (m != l);
  }
  for (int64_t i = 1; i < s; ++i) {  // insertion sort by eigenvalue (s is small), carrying z
    double dv = d[i], zv = z[i];
    int64_t j = i - 1;
    while (j >= 0 && d[j] > dv) {
      d[j + 1] = d[j];
      z[j + 1] = z[j];
      --j;
    }
    d[j + 1] = dv;
    z[j + 1] = zv;
  }
  for (int64_t i = 0; i < s; ++i) z[i] = z[i] * z[i];
  return ok;
}

#ifdef LLR_WITH_CUDA
// nodes/weights (N, s) float64 outputs; alpha (N, s), beta (N, s-1) float64 contiguous; scratch (N, s) float64.
void tridiag_gauss_cuda(const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& nodes,
                        const at::Tensor& weights, const at::Tensor& scratch);
// spectral_eig_cuda.cu: (B, n) ascending eigenvalues of (B, n, n) Grams (lower triangles read) in dtype (float32 /
// float64) by one cusolverDnXsyevBatched call; NaN rows where the solver fails. Raises when unavailable.
at::Tensor eigvalsh_batched_cuda(const at::Tensor& grams, at::ScalarType dtype);
// Empty when eigvalsh_batched_cuda can run here, else why not (CUDA < 12.6 build, cuSOLVER < 11.7).
std::string eigvalsh_batched_cuda_unavailable();
#endif

}  // namespace llr
