// Batched Gauss quadrature of Lanczos tridiagonals on CPU (see spectral.h), and the Python bindings of the
// CUDA version when it is compiled in. Semantics: llr_kernels/spectral/lanczos.py tridiag_eig_torch.
#include "registry.h"
#include "spectral.h"

#include <ATen/Parallel.h>

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
#ifdef LLR_WITH_CUDA
  m.def("tridiag_gauss_cuda", &tridiag_gauss_cuda_py,
        "Gauss nodes/weights of many symmetric tridiagonals, one CUDA thread per matrix", arg("alpha"),
        arg("beta"));
#endif
}

LLR_REGISTER_OPS(register_spectral);

}  // namespace
}  // namespace llr
