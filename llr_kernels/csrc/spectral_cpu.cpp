// Spectral ops on CPU: batched Gauss quadrature of Lanczos tridiagonals (see spectral.h; semantics:
// llr_kernels/ops/eig/naive.py tridiag_eig_torch), Gram eigenvalues with the Grams formed one matrix per thread
// (semantics: llr_kernels/ops/eig/naive.py gram_eigvalsh_torch / eigvalsh_batch_torch), and the Python
// bindings of the CUDA tridiagonal solver when it is compiled in.
#include "registry.h"
#include "spectral.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

namespace llr {
namespace {

void check_inputs(const at::Tensor& alpha, const at::Tensor& beta) {
  TORCH_CHECK(alpha.dim() == 2 && beta.dim() == 2, "tridiag_gauss: alpha must be (N, s) and beta (N, s-1), got ",
              alpha.sizes(), " and ", beta.sizes());
  TORCH_CHECK(beta.size(0) == alpha.size(0) && beta.size(1) == std::max<int64_t>(alpha.size(1) - 1, 0),
              "tridiag_gauss: beta must be (N, s-1) for alpha (N, s), got ", beta.sizes(), " and ", alpha.sizes());
  TORCH_CHECK(alpha.device() == beta.device(), "tridiag_gauss: alpha and beta must be on one device");
}

// (nodes, weights, converged) with nodes ascending and weights = squared first eigenvector components.
std::vector<at::Tensor> tridiag_gauss_cpu(const at::Tensor& alpha_in, const at::Tensor& beta_in) {
  check_inputs(alpha_in, beta_in);
  TORCH_CHECK(alpha_in.device().is_cpu(), "tridiag_gauss_cpu: tensors must be on CPU");
  auto alpha = alpha_in.to(at::kDouble).contiguous();
  auto beta = beta_in.to(at::kDouble).contiguous();
  const int64_t n = alpha.size(0), s = alpha.size(1);
  auto nodes = alpha.clone();
  auto weights = at::empty_like(alpha);
  auto conv = at::ones({n}, alpha.options().dtype(at::kBool));
  double* d_all = nodes.data_ptr<double>();
  double* z_all = weights.data_ptr<double>();
  const double* b_all = beta.data_ptr<double>();
  bool* c_all = conv.data_ptr<bool>();
  at::parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    std::vector<double> e(s > 0 ? s : 1);
    for (int64_t r = lo; r < hi; ++r) {
      for (int64_t i = 0; i + 1 < s; ++i) e[i] = b_all[r * (s - 1) + i];
      c_all[r] = tridiag_gauss(d_all + r * s, e.data(), z_all + r * s, s);
    }
  });
  return {nodes.to(alpha_in.scalar_type()), weights.to(alpha_in.scalar_type()), conv};
}

// Lower triangle of the short-side Gram of w into g (n x n, zero-initialised): X X^T with X = w (n <= m) or w^T,
// in row blocks of about n/6 (at least 128), only the blocks on and below the diagonal: about 60% of a full GEMM's
// flops (measured on one core at n = 768: 8.7 -> 5.6 ms for 768 x 768, 23.2 -> 15.4 ms for 2048 x 768).
// LAPACK's eigensolver (torch.linalg.eigvalsh, UPLO='L') reads only this triangle.
void gram_lower(const at::Tensor& w, at::Tensor& g) {
  const at::Tensor x = w.size(0) <= w.size(1) ? w : w.t();
  const int64_t n = x.size(0);
  const int64_t bs = std::max<int64_t>(128, (n + 5) / 6);
  for (int64_t i = 0; i < n; i += bs) {
    const int64_t hi = std::min(bs, n - i);
    const at::Tensor xi = x.narrow(0, i, hi);
    for (int64_t j = 0; j <= i; j += bs) {
      const int64_t hj = std::min(bs, n - j);
      at::Tensor out = g.narrow(0, i, hi).narrow(1, j, hj);
      at::mm_out(out, xi, x.narrow(0, j, hj).t());
    }
  }
}

// Runs fn(b) for b in [0, count) with one item per thread at a time (an atomic counter hands out the next one:
// items of unequal cost stay balanced). Inside, ATen ops and LAPACK run single-threaded.
template <typename F>
void for_each_item(int64_t count, const F& fn) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(count, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      for (int64_t b = next++; b < count; b = next++) fn(b);
    }
  });
}

void eigvalsh_row(const at::Tensor& g, at::Tensor row) {
  try {
    row.copy_(at::linalg_eigvalsh(g));
  } catch (const std::exception&) {  // LAPACK did not converge: the caller reports a NaN row
    row.fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

// Ascending eigenvalues of the lower-triangle Grams `rows` into the same rows of eigs, one Gram per worker thread
// at a time with LAPACK single-threaded in each: at n = 384-4096 on 2 cores that is 1.4-2x the throughput of one
// Gram after another on LAPACK's own threads (whose reduction to tridiagonal form scales poorly). The workers are
// plain std::threads, never at::parallel_for's OpenMP workers: MKL's eigensolver called concurrently from OpenMP
// workers returned wrong eigenvalues (relative error ~1, or NaN) with 2 threads (torch 2.13 CPU, MKL 2024.2),
// while the same calls from separate non-OpenMP threads, or one at a time, were right.
void eigvalsh_rows(const at::Tensor& grams, at::Tensor& eigs, const std::vector<int64_t>& rows, at::ScalarType dtype) {
  const int saved = at::get_num_threads();
  const int64_t workers = std::min<int64_t>(saved, static_cast<int64_t>(rows.size()));
  if (workers <= 1) {
    for (const int64_t b : rows) eigvalsh_row(grams[b].to(dtype), eigs[b]);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_lock;
  auto work = [&]() {
    try {
      at::set_num_threads(1);  // this thread's OpenMP and MKL pools
      for (size_t k = next++; k < rows.size(); k = next++) eigvalsh_row(grams[rows[k]].to(dtype), eigs[rows[k]]);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (!error) error = std::current_exception();
      next = rows.size();
    }
  };
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < workers; ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  at::set_num_threads(saved);  // set_num_threads also records a process-wide count that new threads start from
  if (error) std::rethrow_exception(error);
}

// {eigenvalues (B, n), Grams (B, n, n) lower triangles or an empty tensor} of the short-side Grams of mats (all
// with min dimension n), computed in `dtype` (float32/float64). The Grams are formed one matrix per thread; each
// matrix is first read once for max|W|: a non-finite one gets a NaN row, an all-zero one a zero row; one whose max
// is outside 2^+-limit (40 for float32, 400 for float64) is scaled by a power of two (exact) so its Gram can
// neither over- nor underflow; alpha is scale-invariant, so eigenvalues are returned as computed. The eigenvalues
// are then computed one Gram per worker thread (``eigvalsh_rows``).
std::vector<at::Tensor> gram_eigvalsh_cpu(const std::vector<at::Tensor>& mats, at::ScalarType dtype,
                                          bool keep_grams) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "gram_eigvalsh_cpu: dtype must be float32 or float64");
  const int64_t nmat = static_cast<int64_t>(mats.size());
  int64_t n = 0;
  for (int64_t b = 0; b < nmat; ++b) {
    const auto& w = mats[b];
    TORCH_CHECK(w.dim() == 2 && w.device().is_cpu() && at::isFloatingType(w.scalar_type()), "gram_eigvalsh_cpu: matrix ",
                b, " must be a 2-D floating CPU tensor, got ", w.scalar_type(), " of shape ", w.sizes(), " on ",
                w.device());
    const int64_t nb = std::min(w.size(0), w.size(1));
    TORCH_CHECK(b == 0 || nb == n, "gram_eigvalsh_cpu: every matrix must have the same min dimension (", n,
                "), matrix ", b, " has ", nb);
    n = nb;
  }
  const auto opts = at::TensorOptions().dtype(dtype);
  auto eigs = at::empty({nmat, n}, opts);
  auto grams = at::zeros({nmat, n, n}, opts);
  std::vector<char> formed(static_cast<size_t>(nmat), 0);
  const int64_t limit = dtype == at::kFloat ? 40 : 400;
  for_each_item(nmat, [&](int64_t b) {
    const at::Tensor& w = mats[b];
    at::Tensor row = eigs[b];
    const auto mm = at::aminmax(w);
    const double lo = std::get<0>(mm).item<double>(), hi = std::get<1>(mm).item<double>();
    if (!std::isfinite(lo) || !std::isfinite(hi)) {  // aminmax propagates NaN
      row.fill_(std::numeric_limits<double>::quiet_NaN());
      return;
    }
    const double amax = std::max(std::fabs(lo), std::fabs(hi));
    if (amax == 0.0) {
      row.zero_();
      return;
    }
    int e = 0;
    std::frexp(amax, &e);
    // scale in the wider of the two dtypes (a float64 matrix near 1e200 must be scaled before it becomes float32)
    const bool wider_input = w.element_size() > at::elementSize(dtype);
    at::Tensor x = wider_input ? w : w.to(dtype);
    if (e > limit || e < -limit) {
      x = x.is_same(w) ? x.clone() : x;
      for (int64_t r = e; r != 0;) {  // w * 2^-e in steps inside fp32's exponent range (powers of two: exact)
        const int64_t step = std::max<int64_t>(-100, std::min<int64_t>(100, r));
        x.mul_(std::ldexp(1.0, static_cast<int>(-step)));
        r -= step;
      }
    }
    x = x.to(dtype);
    at::Tensor g = grams[b];
    gram_lower(x, g);
    formed[static_cast<size_t>(b)] = 1;
  });
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < nmat; ++b)
    if (formed[static_cast<size_t>(b)]) rows.push_back(b);
  eigvalsh_rows(grams, eigs, rows, dtype);
  return {eigs, keep_grams ? grams : at::empty({0}, opts)};
}

// Ascending eigenvalues (B, n) of the lower triangles of grams (B, n, n), computed in `dtype`, one per worker thread.
at::Tensor eigvalsh_cpu(const at::Tensor& grams, at::ScalarType dtype) {
  TORCH_CHECK(grams.dim() == 3 && grams.size(1) == grams.size(2) && grams.device().is_cpu(),
              "eigvalsh_cpu: grams must be (B, n, n) on CPU, got ", grams.sizes(), " on ", grams.device());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "eigvalsh_cpu: dtype must be float32 or float64");
  auto eigs = at::empty({grams.size(0), grams.size(1)}, at::TensorOptions().dtype(dtype));
  std::vector<int64_t> rows(static_cast<size_t>(grams.size(0)));
  for (int64_t b = 0; b < grams.size(0); ++b) rows[static_cast<size_t>(b)] = b;
  eigvalsh_rows(grams, eigs, rows, dtype);
  return eigs;
}

#ifdef LLR_WITH_CUDA
std::vector<at::Tensor> tridiag_gauss_cuda_py(const at::Tensor& alpha_in, const at::Tensor& beta_in) {
  check_inputs(alpha_in, beta_in);
  TORCH_CHECK(alpha_in.is_cuda(), "tridiag_gauss_cuda: tensors must be on a CUDA device");
  auto alpha = alpha_in.to(at::kDouble).contiguous();
  auto beta = beta_in.to(at::kDouble).contiguous();
  auto nodes = at::empty_like(alpha);
  auto weights = at::empty_like(alpha);
  auto scratch = at::empty_like(alpha);
  tridiag_gauss_cuda(alpha, beta, nodes, weights, scratch);
  return {nodes.to(alpha_in.scalar_type()), weights.to(alpha_in.scalar_type())};
}
#endif

void register_spectral(pybind11::module_& m) {
  using pybind11::arg;
  m.def("tridiag_gauss_cpu", &tridiag_gauss_cpu,
        "Gauss nodes/weights of many symmetric tridiagonals (implicit QL, first-row rotations), CPU",
        arg("alpha"), arg("beta"));
  m.def("gram_eigvalsh_cpu", &gram_eigvalsh_cpu,
        "Eigenvalues (and optionally the lower-triangle Grams) of many equal-n short-side Grams, one matrix per "
        "thread, CPU",
        arg("mats"), arg("dtype"), arg("keep_grams"));
  m.def("eigvalsh_cpu", &eigvalsh_cpu, "Eigenvalues of many lower-triangle Grams, one per thread, CPU", arg("grams"),
        arg("dtype"));
#ifdef LLR_WITH_CUDA
  m.def("tridiag_gauss_cuda", &tridiag_gauss_cuda_py,
        "Gauss nodes/weights of many symmetric tridiagonals, one CUDA thread per matrix", arg("alpha"),
        arg("beta"));
  m.def("eigvalsh_batched_cuda", &eigvalsh_batched_cuda,
        "Eigenvalues of many equal-n lower-triangle Grams by one cusolverDnXsyevBatched call, CUDA", arg("grams"),
        arg("dtype"));
  m.def("eigvalsh_batched_cuda_unavailable", &eigvalsh_batched_cuda_unavailable,
        "Empty string when eigvalsh_batched_cuda can run, else the reason");
#endif
}

LLR_REGISTER_OPS(register_spectral);

}  // namespace
}  // namespace llr
